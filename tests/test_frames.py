"""Your own frames (issue 25, parts 1 and 2): sequences from arrays, frame folders and video files, windows,
``deeprnn train --task frames`` with resume, and ``deeprnn predict``.

Every test frame is flat: its value encodes which sequence and which frame it is, so a wrong window, a
missing or repeated frame or a wrong layout shows as a wrong value.
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeprnn_cuda.data.frame_sequences import FrameWindows, read_sequence, scan_sequence, split_sequences
from deeprnn_cuda.training.frames import FramesConfig, FramesDataError, run_frames
from deeprnn_cuda.training.predict import MARKER, predict_frames

H, W = 8, 12


def _values(seq: int, T: int) -> np.ndarray:
    """The flat value of frame ``t`` of sequence ``seq``: distinct for every (seq, t) up to 8 x 24, in [0, 255]."""
    return (seq * 31 + 10 * np.arange(T)) % 256


def _frames(seq: int, T: int, C: int = 1) -> np.ndarray:
    """``(T, H, W, C)`` uint8 flat frames (RGB channels offset, so a channel mix-up shows too)."""
    v = _values(seq, T)[:, None, None, None] + np.array([0, 3, 6][:C])
    return np.broadcast_to(v % 256, (T, H, W, C)).astype(np.uint8)


def _write_folder(path: Path, frames: np.ndarray) -> None:
    path.mkdir(parents=True)
    for t, frame in enumerate(frames):  # names sort as numbers: 2 before 10
        Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(path / f"{t}.png")


def test_every_array_layout_and_a_frame_folder_read_as_the_same_frames(tmp_path):
    gray, rgb = _frames(1, 12), _frames(2, 12, 3)
    np.save(tmp_path / "thw.npy", gray[..., 0])
    np.save(tmp_path / "thwc.npy", gray)
    np.save(tmp_path / "tchw.npy", gray.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    np.savez(tmp_path / "both.npz", a=rgb, b=rgb.transpose(0, 3, 1, 2))
    _write_folder(tmp_path / "gray", gray)
    _write_folder(tmp_path / "rgb", rgb)
    expected_gray = torch.from_numpy(gray).permute(0, 3, 1, 2).float()[2:7] / 255
    expected_rgb = torch.from_numpy(rgb).permute(0, 3, 1, 2).float()[2:7] / 255
    for name in ("thw.npy", "thwc.npy", "tchw.npy", "gray"):
        (seq,) = scan_sequence(tmp_path / name)
        assert (seq.length, seq.channels, seq.height, seq.width) == (12, 1, H, W), name
        torch.testing.assert_close(read_sequence(seq, 2, 5), expected_gray, msg=name)
    for seq in scan_sequence(tmp_path / "both.npz") + scan_sequence(tmp_path / "rgb"):
        assert seq.channels == 3
        torch.testing.assert_close(read_sequence(seq, 2, 5), expected_rgb, msg=seq.name)


def test_a_video_file_reads_every_frame_in_order(tmp_path):
    av = pytest.importorskip("av")
    frames = _big_rgb(10)
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv444p"
        stream.options = {"crf": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    (seq,) = scan_sequence(path)
    assert (seq.kind, seq.length, seq.channels, seq.height, seq.width) == ("video", 10, 3, 16, 16)
    got = read_sequence(seq, 3, 4) * 255
    expected = torch.from_numpy(frames[3:7]).permute(0, 3, 1, 2).float()
    assert (got - expected).abs().max() < 3  # lossless H.264 up to the RGB <-> YUV rounding


def _big_rgb(T: int) -> np.ndarray:
    """``(T, 16, 16, 3)`` flat frames 20 gray levels apart."""
    return np.broadcast_to((20 * np.arange(T) + 30)[:, None, None, None], (T, 16, 16, 3)).astype(np.uint8).copy()


def test_windows_cut_with_the_stride_and_resize(tmp_path):
    for seq in range(2):
        np.save(tmp_path / f"s{seq}.npy", _frames(seq, 9 + seq)[..., 0])
    sequences = scan_sequence(tmp_path / "s0.npy") + scan_sequence(tmp_path / "s1.npy")
    windows = FrameWindows(sequences, 4, 3, None)
    # s0 (9 frames): starts 0, 3; s1 (10 frames): 0, 3, 6
    assert [windows.describe(i)["start"] for i in range(len(windows))] == [0, 3, 0, 3, 6]
    for i in range(len(windows)):
        where = windows.describe(i)
        seq = int(Path(where["source"]).stem[1])
        expected = _values(seq, 10)[where["start"]:where["start"] + 4] / 255
        torch.testing.assert_close(windows[i][:, 0, 0, 0].double(), torch.from_numpy(expected), msg=str(where))
    resized = FrameWindows(sequences, 4, 3, 16)[4]
    assert resized.shape == (4, 1, 16, 16)
    torch.testing.assert_close(resized[:, 0, 5, 5].double(), torch.from_numpy(_values(1, 10)[6:10] / 255))


def test_one_folder_is_split_by_name(tmp_path):
    for seq in range(6):
        np.save(tmp_path / f"{seq}.npy", _frames(seq, 6)[..., 0])
    train, test = split_sequences(tmp_path)
    assert [s.path.name for s in train] == ["0.npy", "1.npy", "2.npy", "3.npy", "4.npy"]
    assert [s.path.name for s in test] == ["5.npy"]


def _broken_folder(path: Path) -> None:
    """A frame folder whose fourth frame is not an image."""
    _write_folder(path, _frames(0, 9))
    (path / "3.png").write_bytes(b"not an image")


@pytest.mark.parametrize("make, message", [
    (lambda d: np.save(d / "train" / "short.npy", _frames(0, 4)[..., 0]), r"short\.npy has 4 frames, fewer than"),
    (lambda d: np.save(d / "train" / "rgb.npy", _frames(0, 9, 3)), r"rgb\.npy has 3 channel\(s\)"),
    (lambda d: np.save(d / "train" / "wide.npy", np.zeros((9, H, 2 * W), np.uint8)), r"wide\.npy is 8x24.*--image-size"),
    (lambda d: (d / "train" / "bad.npy").write_bytes(b"not an array"), r"cannot read array file .*bad\.npy"),
    (lambda d: np.save(d / "train" / "hot.npy", np.full((9, H, W), 2.0)), r"hot\.npy holds float values outside"),
    (lambda d: (d / "train" / "empty").mkdir(), r"frame folder .*empty holds no image frames"),
    (lambda d: _broken_folder(d / "train" / "broken"), r"cannot read frame .*broken/3\.png"),
    (lambda d: (d / "test" / "broken.mp4").write_bytes(b"not a video"), r"cannot read video file .*broken\.mp4"),
])
def test_bad_data_is_one_error_naming_the_file_and_nothing_is_written(tmp_path, make, message):
    root = tmp_path / "data"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        np.save(root / split / "ok.npy", _frames(0, 9)[..., 0])
    make(root)
    out = tmp_path / "run"
    with pytest.raises(FramesDataError, match=message):
        run_frames(FramesConfig(data_dir=str(root), observe=3, predict=2, layers=1, hidden=2, patch=2, max_steps=1), out)
    assert not out.exists()


def _dataset(root: Path) -> Path:
    """Train: two arrays and a frame folder; test: an array and a frame folder; all 8x12 gray."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    np.save(root / "train" / "a.npy", _frames(0, 9)[..., 0])
    np.save(root / "train" / "b.npy", _frames(1, 7)[..., 0].astype(np.float32) / 255)
    _write_folder(root / "train" / "c", _frames(2, 8))
    np.save(root / "test" / "d.npy", _frames(3, 8)[..., 0])
    _write_folder(root / "test" / "e", _frames(4, 7))
    return root


def _config(root: Path, **kw) -> FramesConfig:
    options = dict(cell="convlstm", layers=2, hidden=4, patch=2, shortcut_every=0, observe=3, predict=2, stride=2,
                   batch_size=3, teacher_forcing=0.0, workers=0)
    return FramesConfig(data_dir=str(root), **{**options, **kw})


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    root = _dataset(tmp_path / "data")
    whole = run_frames(_config(root, max_steps=4), tmp_path / "whole")
    run_frames(_config(root, max_steps=2), tmp_path / "split")
    resumed = run_frames(_config(root, max_steps=4), tmp_path / "split", resume=True)
    assert whole["steps"] == resumed["steps"] == 4
    a = torch.load(tmp_path / "whole" / "model.pt")["model"]
    b = torch.load(tmp_path / "split" / "model.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert resumed["mse_avg"] == whole["mse_avg"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny run on :func:`_dataset` with two data-loader workers."""
    base = tmp_path_factory.mktemp("frames")
    root = _dataset(base / "data")
    summary = run_frames(_config(root, max_steps=3, workers=2), base / "run")
    return root, base / "run", summary


def test_a_run_writes_its_records_and_evaluates_every_test_window(trained_run):
    root, run, summary = trained_run
    for name in ("metrics.jsonl", "curves.png", "results.md", "predictions.png", "predictions.npy", "model.pt",
                 "checkpoint.pt", "summary.json"):
        assert (run / name).is_file(), name
    # test windows of 5 frames, stride 2: d (8 frames) starts 0, 2; e (7 frames) 0, 2
    assert summary["test_windows"] == 4 and summary["train_windows"] == 3 + 2 + 2
    assert summary["shown"] == [{"source": str(root / "test" / "d.npy"), "start": 0},
                                {"source": str(root / "test" / "d.npy"), "start": 2},
                                {"source": str(root / "test" / "e"), "start": 0},
                                {"source": str(root / "test" / "e"), "start": 2}]
    tests = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "test" in r]
    assert [r["test"] for r in tests] == ["2-layer convlstm", "copy last frame", "all black"]
    assert all(len(r["mse"]) == 2 for r in tests)
    # flat frames 10 levels apart: copying the last observed frame is off by 10 and 20 levels per pixel
    copy = tests[1]
    assert copy["mae"] == pytest.approx([10 / 255 * H * W, 20 / 255 * H * W], rel=1e-5)
    assert summary["baselines"]["copy last frame"]["mae_avg"] == pytest.approx(15 / 255 * H * W, rel=1e-5)


def test_predicting_a_test_sequence_gives_the_frames_the_evaluation_gave(trained_run, tmp_path):
    root, run, summary = trained_run
    evaluated = np.load(run / "predictions.npy")
    for k, shown in enumerate(summary["shown"]):
        out = tmp_path / f"p{k}"
        result = predict_frames(run, Path(shown["source"]), out, start=shown["start"])
        assert result["start"] == shown["start"]
        np.testing.assert_allclose(np.load(out / "predicted.npy"), evaluated[k], rtol=1e-5, atol=1e-6)
    # the default start observes the last frames: e has 7, so frames 4, 5, 6
    result = predict_frames(run, root / "test" / "e", tmp_path / "last", predict=4)
    assert result["start"] == 4
    assert np.load(tmp_path / "last" / "predicted.npy").shape == (4, 1, H, W)
    assert sorted(p.name for p in (tmp_path / "last").glob("predicted_*.png")) == [f"predicted_0{k}.png" for k in range(4)]
    with Image.open(tmp_path / "last" / "prediction.gif") as gif:
        assert gif.n_frames == 3 + 4
        corners = []
        for t in range(gif.n_frames):
            gif.seek(t)
            corners.append(gif.convert("RGB").getpixel((0, 0)))
    assert corners == [(0, 0, 0)] * 3 + [MARKER] * 4


def test_predict_errors_name_the_argument_or_file(trained_run, tmp_path):
    root, run, _ = trained_run
    with pytest.raises(ValueError, match=r"start must be an int in \[0, 4\]"):
        predict_frames(run, root / "test" / "e", tmp_path / "x", start=5)
    np.save(tmp_path / "rgb.npy", _frames(0, 9, 3))
    with pytest.raises(ValueError, match=r"rgb\.npy has 3 channel\(s\), the run's model takes 1"):
        predict_frames(run, tmp_path / "rgb.npy", tmp_path / "x")
    with pytest.raises(ValueError, match="has no model.pt"):
        predict_frames(tmp_path, root / "test" / "e", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _rgb_dataset(root: Path) -> Path:
    """RGB sequences of three kinds and two sizes: an .npz and a frame folder (8x12) and an H.264 file (16x16)."""
    av = pytest.importorskip("av")
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    np.savez(root / "train" / "arrays.npz", first=_frames(0, 9, 3), second=_frames(1, 8, 3).transpose(0, 3, 1, 2))
    _write_folder(root / "train" / "folder", _frames(2, 8, 3))
    with av.open(str(root / "test" / "clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv444p"
        stream.options = {"crf": "0"}
        for frame in _big_rgb(8):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return root


TRAIN = ["train", "--task", "frames", "--cell", "cbm", "--layers", "2", "--hidden", "4", "--patch", "2", "--observe",
         "3", "--predict", "2", "--stride", "2", "--batch-size", "2", "--no-progress"]


def test_deeprnn_train_frames_resume_predict_and_export(tmp_path, capsys):
    from deeprnn_cuda.cli import main

    root = _rgb_dataset(tmp_path / "data")
    run = tmp_path / "run"
    base = TRAIN + ["--data-dir", str(root), "--out", str(run), "--image-size", "8"]
    assert main(base + ["--max-steps", "2", "--workers", "2"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["steps"], first["channels"], first["frame_size"]) == (2, 3, [8, 8])
    assert main(base + ["--max-steps", "3", "--workers", "0", "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["steps"] == 3
    with Image.open(run / "predictions.png") as picture:
        assert picture.mode in ("RGB", "RGBA")

    assert main(["predict", "--run", str(run), "--input", str(root / "test" / "clip.mp4"), "--out",
                 str(tmp_path / "pred")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["start"] == 8 - 3
    assert np.load(tmp_path / "pred" / "predicted.npy").shape == (2, 3, 8, 8)

    assert main(["export", "--run", str(run), "--format", "pt2", "--out", str(tmp_path / "model.pt2")]) == 0
    from deeprnn_cuda.training.export import example_input
    from deeprnn_cuda.training.predict import load_run

    model, config = load_run(run)
    x = example_input(config)
    program = torch.export.load(tmp_path / "model.pt2").module()
    torch.testing.assert_close(program(x), model(x, 2))


@pytest.mark.parametrize("args, message", [
    (["--image-size", "8", "--observe", "7"], r"arrays\.npz:second has 8 frames, fewer than observe \+ predict = 9"),
    ([], r"arrays\.npz:first is 8x12, but .*16x16|clip\.mp4 is 16x16, but .*8x12.*--image-size"),
    (["--image-size", "7"], r"--image-size: must be a positive multiple of --patch 2"),
])
def test_deeprnn_train_frames_errors_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, message):
    from deeprnn_cuda.cli import main

    root = _rgb_dataset(tmp_path / "data")
    assert main(TRAIN + ["--data-dir", str(root), "--out", str(tmp_path / "run"), "--max-steps", "1"] + args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_deeprnn_export_onnx_of_a_trained_run_matches_onnxruntime(trained_run, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    from deeprnn_cuda.cli import main
    from deeprnn_cuda.training.export import example_input
    from deeprnn_cuda.training.predict import load_run

    _, run, _ = trained_run
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(tmp_path / "model.onnx")]) == 0
    model, config = load_run(run)
    x = example_input(config)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"observed": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), model(x, config["predict"]), rtol=1e-4, atol=1e-5)


def test_a_moving_mnist_run_predicts_from_an_array(tmp_path):
    """``deeprnn train --task moving-fmnist`` runs save the same model.pt (config without frame sizes: 64x64 gray)."""
    from dataclasses import asdict

    from deeprnn_cuda.models.patch_predictor import PatchRecurrentPredictor
    from deeprnn_cuda.training.moving_mnist_task import MovingMNISTConfig

    cfg = MovingMNISTConfig(layers=2, hidden=4, observe=3, predict=2)
    torch.manual_seed(0)
    model = PatchRecurrentPredictor(1, cfg.hidden, cfg.layers, cfg.cell, cfg.patch, cfg.kernel_size, cfg.shortcut_every)
    (tmp_path / "run").mkdir()
    torch.save({"model": model.state_dict(), "config": asdict(cfg)}, tmp_path / "run" / "model.pt")
    video = np.random.default_rng(0).random((6, 64, 64), dtype=np.float32)
    np.save(tmp_path / "clip.npy", video)
    predict_frames(tmp_path / "run", tmp_path / "clip.npy", tmp_path / "out", start=1)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(video[1:4]).view(1, 3, 1, 64, 64), 2)[0]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "predicted.npy"), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_deeprnn_predict_and_export_errors_exit_2_naming_the_option(trained_run, tmp_path, capsys):
    from deeprnn_cuda.cli import main

    root, run, _ = trained_run
    cases = [
        (["predict", "--run", str(tmp_path), "--input", str(root / "test" / "e"), "--out", str(tmp_path / "p")],
         "--run: run folder"),
        (["predict", "--run", str(run), "--input", str(root / "test" / "e"), "--start", "9", "--out", str(tmp_path / "p")],
         r"--start: start must be an int in \[0, 4\]"),
        (["predict", "--run", str(run), "--input", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "p")],
         "--input: input .*missing.npy does not exist"),
        (["export", "--run", str(tmp_path), "--format", "pt2", "--out", str(tmp_path / "m.pt2")], "--run: run folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "p").exists() and not (tmp_path / "m.pt2").exists()
