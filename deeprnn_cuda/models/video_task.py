"""The video-prediction task of section 4.3 on moving digits: train a predictor, report Table-4 metrics.

:func:`run_video_prediction` trains a :class:`DeepVideoPredictor` on :func:`moving_digits` (observe
``observe`` frames, predict ``predict``, MSE loss, Adam) and returns PSNR and SSIM per predicted frame on
a held-out set (``T1`` = first predicted frame), as the paper's Table 4 lists them for KTH.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F

from ..data.moving_digits import moving_digits
from ..metrics import psnr, ssim
from .predictor import DeepVideoPredictor

_TEST_SEED_OFFSET = 1_000_003


@dataclass
class VideoPredictionResult:
    """Per-predicted-frame test metrics (index 0 = ``T1``) and the training loss of every step."""

    psnr: List[float]
    ssim: List[float]
    train_losses: List[float]

    @property
    def psnr_avg(self) -> float:
        return sum(self.psnr) / len(self.psnr)

    @property
    def ssim_avg(self) -> float:
        return sum(self.ssim) / len(self.ssim)

    def table(self) -> str:
        """Table-4-style text: a header ``T1 .. Tn Avg``, then a PSNR and an SSIM row."""
        n = len(self.psnr)
        head = "Metric " + " ".join(f"{'T' + str(t + 1):>6}" for t in range(n)) + "    Avg"
        psnr_row = "PSNR   " + " ".join(f"{v:6.2f}" for v in self.psnr + [self.psnr_avg])
        ssim_row = "SSIM   " + " ".join(f"{v:6.3f}" for v in self.ssim + [self.ssim_avg])
        return "\n".join([head, psnr_row, ssim_row])


@torch.no_grad()
def evaluate_predictor(model: DeepVideoPredictor, videos: torch.Tensor, observe: int, batch_size: int) -> tuple:
    """Mean PSNR and SSIM ``(predict,)`` per predicted frame of ``videos (N, observe + predict, C, H, W)``."""
    was_training = model.training
    model.eval()
    predict = videos.shape[1] - observe
    psnr_sum = torch.zeros(predict, dtype=torch.float64)
    ssim_sum = torch.zeros(predict, dtype=torch.float64)
    for batch in videos.split(batch_size):
        pred = model(batch[:, :observe], predict)
        psnr_sum += psnr(pred, batch[:, observe:]).sum(dim=0)
        ssim_sum += ssim(pred, batch[:, observe:]).sum(dim=0)
    model.train(was_training)
    return psnr_sum / len(videos), ssim_sum / len(videos)


def run_video_prediction(
    cell: str = "cbm",
    num_layers: int = 15,
    width: int = 8,
    observe: int = 10,
    predict: int = 20,
    size: int = 32,
    num_digits: int = 1,
    train_size: int = 256,
    test_size: int = 64,
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 1e-3,
    td_rate: float = 0.0,
    backend: str = "auto",
    seed: int = 0,
) -> VideoPredictionResult:
    """Train on moving digits for ``steps`` Adam steps and evaluate per predicted frame.

    ``size`` must be divisible by 4 and at least 11 (SSIM's window); digits are drawn at scale
    ``size // 16`` (at least 1). Train and test videos come from disjoint seeds.
    """
    torch.manual_seed(seed)
    scale = max(1, size // 16)
    frames = observe + predict
    train = moving_digits(train_size, frames, size, num_digits, scale, seed=seed)
    test = moving_digits(test_size, frames, size, num_digits, scale, seed=seed + _TEST_SEED_OFFSET)
    model = DeepVideoPredictor(1, width, num_layers, cell, backend, td_rate)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        batch = train[torch.randint(train_size, (batch_size,), generator=g)]
        loss = F.mse_loss(model(batch[:, :observe], predict), batch[:, observe:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    psnr_t, ssim_t = evaluate_predictor(model, test, observe, batch_size)
    return VideoPredictionResult(psnr_t.tolist(), ssim_t.tolist(), losses)
