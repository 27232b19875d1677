"""Real data (issue 14): IDX files, the Moving-MNIST protocol, OpenSTL's metrics, the patch predictor and
``deeprnn train --task moving-fmnist / moving-mnist``."""
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from deeprnn_cuda.cli import main
from deeprnn_cuda.data.idx import FASHION_MNIST_DIR, MissingDataError, find_images, read_idx
from deeprnn_cuda.data.moving_mnist import MovingMNIST
from deeprnn_cuda.metrics import openstl_frame_metrics, psnr, ssim
from deeprnn_cuda.models.patch_predictor import PatchRecurrentPredictor
from deeprnn_cuda.training.moving_mnist_task import prediction_loss

FASHION = FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz"
needs_fashion = pytest.mark.skipif(
    not FASHION.is_file(),
    reason=f"real Fashion-MNIST images not installed ({FASHION} missing): apt-get install dataset-fashion-mnist",
)


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file written by hand from the format's definition (uint8 data)."""
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def _write_mnist_dir(folder: Path, n_train: int = 40, n_test: int = 12) -> None:
    rng = np.random.default_rng(0)
    for name, n in (("train-images-idx3-ubyte.gz", n_train), ("t10k-images-idx3-ubyte", n_test)):
        images = (rng.random((n, 28, 28)) > 0.7).astype(np.uint8) * 255
        raw = _idx_bytes(images)
        (folder / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_returns_the_stored_array(tmp_path, compress):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    raw = _idx_bytes(array)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    got = read_idx(path)
    assert got.dtype == torch.uint8 and torch.equal(got, torch.from_numpy(array))


def test_read_idx_of_big_endian_int32(tmp_path):
    values = np.array([1, -2, 70000], dtype=">i4")
    path = tmp_path / "labels"
    path.write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + values.tobytes())
    assert read_idx(path).tolist() == [1, -2, 70000]


@pytest.mark.parametrize("raw, message", [(b"\x01\x02\x08\x01", "not an IDX file"), (b"\x00\x00\x08\x02\x00\x00", "header"),
                                          (bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"abc", "needs 13 bytes")])
def test_read_idx_rejects_malformed_files_naming_the_path(tmp_path, raw, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_missing_images_name_the_debian_package_and_option(tmp_path):
    with pytest.raises(MissingDataError, match="dataset-fashion-mnist.*--data-dir"):
        find_images("train", tmp_path)


def _one_square(value: int = 255) -> torch.Tensor:
    return torch.full((1, 28, 28), value, dtype=torch.uint8)


def test_moving_mnist_follows_the_protocol():
    # one all-white 28x28 object: its position in every frame can be read off the frame
    videos = MovingMNIST(_one_square(), num_objects=1).fixed(6, seed=3)
    assert videos.shape == (6, 20, 1, 64, 64) and videos.dtype == torch.float32
    assert ((videos == 0) | (videos == 1)).all()
    assert (videos.sum(dim=(2, 3, 4)) == 28 * 28).all()  # never clipped: it bounces inside 64x64
    rows = videos[:, :, 0].amax(dim=3).argmax(dim=2).double()  # first row with ink = top
    cols = videos[:, :, 0].amax(dim=2).argmax(dim=2).double()
    dy, dx = rows.diff(dim=1).abs(), cols.diff(dim=1).abs()
    # 0.1 of the free range (36 px) per frame; truncation to whole pixels moves each axis by < 1 more, and a
    # bounce only shortens the displacement
    assert (dy <= 3.6 + 1).all() and (dx <= 3.6 + 1).all()
    speeds = (dy ** 2 + dx ** 2).sqrt()
    assert speeds.max() > 3.0 and speeds.median() > 2.0


def test_moving_mnist_objects_combine_by_maximum_and_sets_are_seeded():
    images = torch.stack([torch.full((28, 28), 100, dtype=torch.uint8), torch.full((28, 28), 200, dtype=torch.uint8)])
    data = MovingMNIST(images)
    a = data.fixed(4, seed=1)
    assert torch.equal(a, data.fixed(4, seed=1)) and not torch.equal(a, data.fixed(4, seed=2))
    assert set(torch.unique((a * 255).round()).tolist()) == {0.0, 100.0, 200.0}  # overlaps keep the brighter value
    # a 200-object is always whole (with overwriting, a 100-object drawn later would cover part of it)
    bright = ((a * 255).round() == 200).sum(dim=(2, 3, 4))
    assert ((bright == 0) | (bright >= 28 * 28)).all() and (bright > 0).any()


@pytest.mark.parametrize("kwargs, message", [({"images": torch.zeros(3, 28)}, "images"), ({"size": 28}, "size"),
                                             ({"frames": 0}, "frames"), ({"num_objects": 0}, "num_objects")])
def test_moving_mnist_errors_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MovingMNIST(**{"images": _one_square(), **kwargs})


# --- metrics against scikit-image (an independent implementation) and numpy ---

def _pair(seed=0, shape=(2, 3, 1, 64, 64)):
    g = torch.Generator().manual_seed(seed)
    true = (torch.rand(shape, generator=g) > 0.8).double() * torch.rand(shape, generator=g, dtype=torch.float64)
    pred = true + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)  # leaves [0, 1]: tests the clipping
    return pred, true


def test_openstl_metrics_match_scikit_image_and_numpy():
    skm = pytest.importorskip("skimage.metrics", reason="scikit-image (a test dependency) is not installed")
    pred, true = _pair()
    got = openstl_frame_metrics(pred, true)
    p, t = pred.numpy(), true.numpy()
    clipped = np.clip(p, 0, 1)
    for b in range(2):
        for f in range(3):
            err = p[b, f] - t[b, f]
            assert got["mse"][b, f].item() == pytest.approx((err ** 2).sum(), rel=1e-12)
            assert got["mae"][b, f].item() == pytest.approx(np.abs(err).sum(), rel=1e-12)
            # OpenSTL: structural_similarity with its defaults; data_range 2 is what skimage < 0.20 took for floats
            want = skm.structural_similarity(clipped[b, f, 0], t[b, f, 0], data_range=2.0)
            assert got["ssim"][b, f].item() == pytest.approx(want, abs=1e-10)
            assert got["psnr"][b, f].item() == pytest.approx(
                skm.peak_signal_noise_ratio(t[b, f], clipped[b, f], data_range=1.0), rel=1e-10)


@pytest.mark.parametrize("window", ["uniform", "gaussian"])
def test_float32_ssim_matches_float64_and_has_gradients(window):
    pred, true = _pair(seed=3)
    pred = pred.clamp(0, 1)
    want = ssim(pred, true, window=window)
    x = pred.float().requires_grad_()
    got = ssim(x, true.float(), window=window, dtype=torch.float32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    got.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_ssim_rejects_other_dtypes():
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        ssim(torch.zeros(1, 16, 16), torch.zeros(1, 16, 16), dtype=torch.float16)


@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_prediction_loss_is_cross_entropy_plus_weighted_one_minus_ssim_of_predicted_frames(weight):
    skm = pytest.importorskip("skimage.metrics", reason="scikit-image (a test dependency) is not installed")
    g = torch.Generator().manual_seed(4)
    video = (torch.rand(2, 5, 1, 16, 16, generator=g) > 0.6).float()
    logits = 3 * torch.randn(2, 4, 1, 16, 16, generator=g)
    observe = 3
    got = prediction_loss(logits, video, observe, weight).item()
    # Independent side: the cross entropy written out, scikit-image's SSIM per predicted frame (frames 3, 4).
    p = torch.sigmoid(logits.double())
    t = video[:, 1:].double()
    bce = -(t * torch.log(p) + (1 - t) * torch.log1p(-p)).mean().item()
    frames = [skm.structural_similarity(p[b, f, 0].numpy(), t[b, f, 0].numpy(), data_range=2.0)
              for b in range(2) for f in range(observe - 1, 4)]
    assert got == pytest.approx(bce + weight * (1 - float(np.mean(frames))), abs=1e-5)


def test_gaussian_ssim_matches_scikit_image_in_wangs_setting():
    skm = pytest.importorskip("skimage.metrics", reason="scikit-image (a test dependency) is not installed")
    pred, true = _pair(seed=1, shape=(2, 1, 32, 40))
    pred = pred.clamp(0, 1)
    got = ssim(pred, true)
    for b in range(2):
        want = skm.structural_similarity(pred[b, 0].numpy(), true[b, 0].numpy(), data_range=1.0,
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert got[b].item() == pytest.approx(want, abs=1e-10)
    assert psnr(pred, true)[0].item() == pytest.approx(
        skm.peak_signal_noise_ratio(true[0].numpy(), pred[0].numpy(), data_range=1.0), rel=1e-10)


def test_ssim_window_must_be_known():
    with pytest.raises(ValueError, match="window"):
        ssim(torch.zeros(1, 16, 16), torch.zeros(1, 16, 16), window="box")


# --- the predictor ---

def _tiny_predictor(cell="cbm"):
    torch.manual_seed(0)
    return PatchRecurrentPredictor(1, hidden=3, num_layers=2, cell=cell, patch=4, backend="reference").double()


@pytest.mark.parametrize("cell", ["cbm", "convlstm"])
def test_closed_loop_feeds_each_prediction_back(cell):
    model = _tiny_predictor(cell)
    video = torch.rand(2, 6, 1, 8, 8, dtype=torch.float64)
    observe = 3
    with torch.no_grad():
        got = model.rollout(video, observe)
        # step by step by hand: true frames 0..2, then each predicted frame
        state, outs, x = None, [], video[:, 0]
        for t in range(5):
            logits, state = model._run(x.unsqueeze(0), state)
            outs.append(logits[0])
            x = video[:, t + 1] if t + 1 < observe else torch.sigmoid(logits[0])
        forced = model.rollout(video, observe, teacher_forced=True)
        future = model(video[:, :observe], num_future=3)
    torch.testing.assert_close(got, torch.stack(outs, dim=1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(forced[:, :observe], got[:, :observe], rtol=1e-10, atol=1e-12)  # same inputs there
    assert not torch.allclose(forced[:, observe:], got[:, observe:])
    torch.testing.assert_close(future, torch.sigmoid(got[:, observe - 1:]), rtol=1e-10, atol=1e-12)


def test_predictor_rejects_bad_shapes():
    model = _tiny_predictor()
    with pytest.raises(ValueError, match="divisible by patch=4"):
        model(torch.rand(1, 3, 1, 10, 8))
    with pytest.raises(ValueError, match="observe"):
        model.rollout(torch.rand(1, 3, 1, 8, 8), observe=3)


# --- the command line ---

def _run_cli(capsys, *args):
    code = main(["train", *args, "--no-progress", "--threads", "1"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


TINY = ["--layers", "2", "--hidden", "4", "--batch-size", "2", "--test-size", "3", "--max-steps", "2"]


def test_moving_mnist_task_on_user_idx_files(tmp_path, capsys):
    data = tmp_path / "mnist"
    data.mkdir()
    _write_mnist_dir(data)
    code, out, _ = _run_cli(capsys, "--task", "moving-mnist", "--data-dir", str(data), *TINY, "--out", str(tmp_path / "run"))
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["test_size"] == 3 and summary["layers"] == 2
    for name in ("metrics.jsonl", "results.md", "predictions.png", "model.pt", "summary.json"):
        assert (tmp_path / "run" / name).is_file(), name
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| copy last frame | SSIM |" in table and "| all black | MSE |" in table and "T10" in table
    tests = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    black = next(r for r in tests if r.get("test") == "all black")
    assert len(black["mse"]) == 10 and black["mse_avg"] > 0


@needs_fashion
def test_moving_fmnist_trains_a_few_steps_on_the_real_images(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = _run_cli(capsys, "--task", "moving-fmnist", "--cell", "convlstm", *TINY, "--out", str(out))
    assert code == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["cell"] == "convlstm" and summary["steps"] == 2
    assert 0 < summary["baselines"]["all black"]["mse_avg"] < 64 * 64


@pytest.mark.parametrize("args, message", [
    (["--task", "moving-mnist"], "--data-dir: is required"),
    (["--task", "moving-mnist", "--data-dir", "/nonexistent-idx"], "--data-dir: no train-images-idx3-ubyte.*dataset-fashion-mnist"),
    (["--task", "moving-fmnist", "--epochs", "3"], "--epochs: is not an option of --task moving-fmnist"),
    (["--task", "moving-fmnist", "--budget-minutes", "0"], "--budget-minutes: must be > 0"),
    (["--task", "moving-shapes", "--budget-minutes", "1"], "--budget-minutes: is not an option of --task moving-shapes; only of --task moving-fmnist, moving-mnist"),
    (["--task", "moving-fmnist", "--ssim-weight", "-1"], "--ssim-weight: must be >= 0"),
    (["--task", "moving-shapes", "--ssim-weight", "1"], "--ssim-weight: is not an option of --task moving-shapes; only of --task moving-fmnist, moving-mnist"),
    (["--task", "video-prediction", "--ssim-weight", "1"], "--ssim-weight: is not an option of"),
])
def test_moving_mnist_cli_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    code, _, err = _run_cli(capsys, *args, "--out", str(tmp_path / "x"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err
