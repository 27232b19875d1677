"""The frame-folder video dataset on tiny folders of JPEGs written here."""
import pytest
import torch
from PIL import Image

from deeprnn_cuda.data.frame_folder import FrameFolderVideos

H, W = 10, 12


def _frame(value: int, pattern: bool) -> Image.Image:
    """A gray frame of brightness ``value``, or (``pattern``) a horizontal ramp, which flips visibly."""
    img = Image.new("RGB", (W, H), (value, value, value))
    if pattern:
        img.putdata([(20 * x, 10 * y, 100) for y in range(H) for x in range(W)])
    return img


def _make(root, classes=("run", "walk"), videos=2, frames=8, pattern=False, split="train"):
    for c in classes:
        for v in range(videos):
            folder = root / split / c / f"video{v}"
            folder.mkdir(parents=True)
            for i in range(1, frames + 1):
                _frame(20 * i, pattern).save(folder / f"{i}.jpg", quality=95)
    return root


def _brightness(clip):
    return [round(float(f.mean()) * 255 / 20) for f in clip]


def test_classes_labels_and_natural_frame_order(tmp_path):
    ds = FrameFolderVideos(_make(tmp_path, frames=10), "train", num_frames=5, train=False)
    assert ds.classes == ["run", "walk"] and len(ds) == 4
    clip, label = ds[3]
    assert clip.shape == (5, 3, H, W) and clip.dtype == torch.float32 and label == 1
    # frame 2k+1 (0-based) is the middle of segment k of 5; natural order puts 10.jpg last, not after 1.jpg
    assert _brightness(clip) == [2, 4, 6, 8, 10]


def test_overlapping_clips(tmp_path):
    root = _make(tmp_path, frames=8)
    ds = FrameFolderVideos(root, "train", num_frames=4, sampling="clips", clip_overlap=0.25, train=False)
    assert len(ds) == 4 * 2  # starts 0 and 3 (stride 3) in each video
    assert _brightness(ds[0][0]) == [1, 2, 3, 4] and _brightness(ds[1][0]) == [4, 5, 6, 7]


def test_augmentation_is_shared_by_the_clip_and_reproducible(tmp_path):
    ds = FrameFolderVideos(_make(tmp_path, videos=1, pattern=True), "train", num_frames=4, crop_size=6, seed=3)
    clips = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        clip, _ = ds[0]
        assert clip.shape == (4, 3, 6, 6)
        assert all(torch.equal(f, clip[0]) for f in clip)  # one crop, flip and jitter for every frame
        clips.append(clip)
    ds.set_epoch(0)
    assert torch.equal(ds[0][0], clips[0])
    assert any(not torch.equal(c, clips[0]) for c in clips[1:])


def test_test_split_resizes_and_center_crops_without_randomness(tmp_path):
    root = _make(tmp_path, pattern=True, split="test")
    ds = FrameFolderVideos(root, "test", num_frames=2, resize_shorter=5, crop_size=4)
    assert not ds.train
    ds.set_epoch(1)
    first = ds[0][0]
    ds.set_epoch(2)
    assert first.shape == (2, 3, 4, 4) and torch.equal(first, ds[0][0])


def test_batches_through_a_dataloader(tmp_path):
    ds = FrameFolderVideos(_make(tmp_path), "train", num_frames=3)
    clips, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert clips.shape == (4, 3, 3, H, W) and labels.tolist() == [0, 0, 1, 1]


def test_empty_class_is_an_error_naming_it(tmp_path):
    _make(tmp_path)
    (tmp_path / "train" / "jump").mkdir()
    with pytest.raises(ValueError, match="jump"):
        FrameFolderVideos(tmp_path, "train", num_frames=2)


def test_too_few_frames_is_an_error_naming_the_video(tmp_path):
    _make(tmp_path, frames=3)
    with pytest.raises(ValueError, match=r"video0 has 3 frames, fewer than num_frames=4"):
        FrameFolderVideos(tmp_path, "train", num_frames=4)


def test_unreadable_frame_is_an_error_naming_the_file(tmp_path):
    _make(tmp_path, frames=2)
    (tmp_path / "train" / "run" / "video0" / "2.jpg").write_bytes(b"not a jpeg")
    ds = FrameFolderVideos(tmp_path, "train", num_frames=2)
    with pytest.raises(ValueError, match=r"video0.2\.jpg"):
        ds[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "val"}, "val"),
        ({"sampling": "random"}, "sampling"),
        ({"num_frames": 0}, "num_frames"),
        ({"clip_overlap": 1.0}, "clip_overlap"),
        ({"crop_size": 0}, "crop_size"),
    ],
)
def test_bad_arguments_are_errors_naming_them(tmp_path, kwargs, message):
    _make(tmp_path, frames=2)
    with pytest.raises(ValueError, match=message):
        FrameFolderVideos(tmp_path, **{"num_frames": 2, **kwargs})


def test_crop_larger_than_frames_is_an_error_naming_the_video(tmp_path):
    ds = FrameFolderVideos(_make(tmp_path, frames=2), "train", num_frames=2, crop_size=50)
    with pytest.raises(ValueError, match="crop_size=50.*video0"):
        ds[0]
