"""PSNR / SSIM against closed forms, the moving-digits set, and the video-prediction task runner."""
import math

import pytest
import torch

from deeprnn_cuda.data.moving_digits import digit_glyph, moving_digits
from deeprnn_cuda.metrics import psnr, ssim
from deeprnn_cuda.training.video_task import _TEST_SEED_OFFSET, run_video_prediction

C1, C2 = 0.01 ** 2, 0.03 ** 2


def _images(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_psnr_of_identical_images_is_infinite():
    x = _images(2, 3, 1, 16, 16)
    assert psnr(x, x).shape == (2, 3) and torch.isinf(psnr(x, x)).all()


@pytest.mark.parametrize("offset, data_range", [(0.1, 1.0), (0.01, 1.0), (25.5, 255.0)])
def test_psnr_of_constant_offset_is_closed_form(offset, data_range):
    x = _images(4, 3, 12, 12) * 0.5 * data_range
    expected = 10 * math.log10(data_range ** 2 / offset ** 2)
    torch.testing.assert_close(psnr(x + offset, x, data_range), torch.full((4,), expected, dtype=torch.float64))


def test_ssim_of_identical_images_is_one():
    x = _images(2, 3, 1, 16, 16)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("a, b", [(0.2, 0.5), (0.9, 0.1), (0.4, 0.4)])
def test_ssim_of_constant_images_is_the_luminance_term(a, b):
    # constant images: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    x, y = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-6)


def test_ssim_is_symmetric_and_drops_with_noise():
    x = _images(1, 1, 24, 24)
    slight = (x + 0.05 * _images(1, 1, 24, 24, seed=1)).clamp(0, 1)
    heavy = (x + 0.5 * _images(1, 1, 24, 24, seed=2)).clamp(0, 1)
    assert ssim(x, slight).item() == pytest.approx(ssim(slight, x).item())
    assert 1 > ssim(x, slight).item() > ssim(x, heavy).item()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: psnr(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5)), "same shape"),
        (lambda: ssim(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8)), "window_size"),
        (lambda: ssim(torch.zeros(1, 16, 16), torch.zeros(1, 16, 16), window_size=4), "window_size"),
        (lambda: psnr(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), data_range=0), "data_range"),
    ],
)
def test_metric_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_moving_digits_is_deterministic_and_in_range():
    a = moving_digits(3, frames=6, size=16, num_digits=2, scale=1, seed=5)
    assert a.shape == (3, 6, 1, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, moving_digits(3, frames=6, size=16, num_digits=2, scale=1, seed=5))
    assert not torch.equal(a, moving_digits(3, frames=6, size=16, num_digits=2, scale=1, seed=6))


def test_moving_digit_stays_whole_in_the_frame_and_moves():
    videos = moving_digits(4, frames=20, size=16, num_digits=1, scale=1, seed=0)
    ink = videos.sum(dim=(2, 3, 4))
    assert (ink == ink[:, :1]).all()  # the glyph is never clipped at an edge (it bounces)
    assert (videos[:, 1:] != videos[:, :-1]).any(dim=(1, 2, 3, 4)).all()  # every digit moves


def test_digit_glyph_scales():
    assert digit_glyph(8, scale=2).shape == (14, 10)
    with pytest.raises(ValueError, match="digit"):
        digit_glyph(10)


def test_video_task_reports_metrics_per_predicted_frame():
    result = run_video_prediction(
        num_layers=2, width=2, observe=3, predict=2, size=12, train_size=4, test_size=2, steps=3,
        teacher_forcing_steps=2, batch_size=2, backend="reference",
    )
    assert len(result.psnr) == len(result.ssim) == 2 and len(result.train_losses) == 3
    assert all(math.isfinite(v) for v in result.psnr + result.ssim + result.train_losses)
    lines = result.table().splitlines()
    assert lines[0].split() == ["Metric", "T1", "T2", "Avg"] and lines[1].startswith("PSNR")
    assert lines[3].startswith("PSNR black") and lines[4].startswith("SSIM black")


def test_video_task_black_baseline_is_the_psnr_of_zeros():
    result = run_video_prediction(
        num_layers=1, width=2, observe=2, predict=2, size=12, train_size=2, test_size=3, steps=1, batch_size=2,
        backend="reference", seed=5,
    )
    future = moving_digits(3, 4, 12, 1, 1, seed=5 + _TEST_SEED_OFFSET)[:, 2:]
    expected = 10 * torch.log10(1 / future.double().pow(2).flatten(2).mean(-1)).mean(0)
    torch.testing.assert_close(torch.tensor(result.black_psnr, dtype=torch.float64), expected)


def test_video_task_rejects_more_teacher_forcing_than_steps():
    with pytest.raises(ValueError, match="teacher_forcing_steps"):
        run_video_prediction(num_layers=1, width=2, size=12, steps=2, teacher_forcing_steps=3)
