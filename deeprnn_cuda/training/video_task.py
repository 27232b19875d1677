"""The video-prediction task of section 4.3 on moving digits: train a predictor, report Table-4 metrics.

:func:`run_video_prediction` trains a :class:`DeepVideoPredictor` on :func:`moving_digits` (observe
``observe`` frames, predict ``predict``, Adam) and returns PSNR and SSIM per predicted frame on a held-out
set (``T1`` = first predicted frame), as the paper's Table 4 lists them for KTH, next to those of the
all-black prediction: on sparse digit frames black is a strong trivial baseline under PSNR, and a
predictor that has not learned motion collapses to it.

Training has two phases. First teacher forcing: every frame is predicted from the true frames before it,
all time steps in one batch (:meth:`DeepVideoPredictor.predict_next`), a cheap and dense signal. Then the
closed loop the metrics measure: ``predict`` frames, each fed back as the next input. The loss is the
binary cross entropy between the predicted frame logits and the (``[0, 1]``-valued) true frames: unlike
the MSE of a sigmoid output, its gradient does not vanish when the sigmoid saturates, which is what made
the predictor collapse to black frames under the MSE.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F

from ..data.moving_digits import moving_digits
from ..metrics import psnr, ssim
from ..models.predictor import DeepVideoPredictor
from .progress import step_bar

_TEST_SEED_OFFSET = 1_000_003


@dataclass
class VideoPredictionResult:
    """Per-predicted-frame test metrics (index 0 = ``T1``), the same for all-black frames, training losses."""

    psnr: List[float]
    ssim: List[float]
    black_psnr: List[float]
    black_ssim: List[float]
    train_losses: List[float]

    @property
    def psnr_avg(self) -> float:
        return sum(self.psnr) / len(self.psnr)

    @property
    def ssim_avg(self) -> float:
        return sum(self.ssim) / len(self.ssim)

    def table(self) -> str:
        """Table-4-style text: a header ``T1 .. Tn Avg``, PSNR and SSIM rows, then the all-black rows."""
        n = len(self.psnr)

        def row(name: str, values: List[float], fmt: str) -> str:
            return f"{name:<12}" + " ".join(format(v, fmt) for v in values + [sum(values) / n])

        head = f"{'Metric':<12}" + " ".join(f"{'T' + str(t + 1):>6}" for t in range(n)) + "    Avg"
        return "\n".join([
            head,
            row("PSNR", self.psnr, "6.2f"),
            row("SSIM", self.ssim, "6.3f"),
            row("PSNR black", self.black_psnr, "6.2f"),
            row("SSIM black", self.black_ssim, "6.3f"),
        ])


@torch.no_grad()
def evaluate_predictor(model: DeepVideoPredictor, videos: torch.Tensor, observe: int, batch_size: int,
                       progress: bool = False) -> tuple:
    """Mean PSNR and SSIM ``(predict,)`` per predicted frame of ``videos (N, observe + predict, C, H, W)``;
    ``progress`` shows a bar of the batches on stderr."""
    was_training = model.training
    model.eval()
    predict = videos.shape[1] - observe
    psnr_sum = torch.zeros(predict, dtype=torch.float64)
    ssim_sum = torch.zeros(predict, dtype=torch.float64)
    for batch in step_bar(videos.split(batch_size), "evaluating", progress, unit="batch"):
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
    teacher_forcing_steps: int = 0,
    batch_size: int = 16,
    lr: float = 1e-3,
    td_rate: float = 0.0,
    backend: str = "auto",
    seed: int = 0,
    progress: bool = False,
) -> VideoPredictionResult:
    """Train on moving digits for ``steps`` Adam steps and evaluate per predicted frame.

    The first ``teacher_forcing_steps`` of the ``steps`` are teacher-forced one-step predictions over the
    whole ``observe + predict`` frames; the rest predict ``predict`` frames closed loop. ``size`` must be
    divisible by 4 and at least 11 (SSIM's window); digits are drawn at scale ``size // 16`` (at least 1).
    Train and test videos come from disjoint seeds. ``progress`` shows a tqdm bar on stderr.
    """
    if not 0 <= teacher_forcing_steps <= steps:
        raise ValueError(f"teacher_forcing_steps must be in [0, steps={steps}], got {teacher_forcing_steps}")
    torch.manual_seed(seed)
    scale = max(1, size // 16)
    frames = observe + predict
    train = moving_digits(train_size, frames, size, num_digits, scale, seed=seed)
    test = moving_digits(test_size, frames, size, num_digits, scale, seed=seed + _TEST_SEED_OFFSET)
    model = DeepVideoPredictor(1, width, num_layers, cell, backend, td_rate)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    bar = step_bar(range(steps), "video prediction", progress)
    for step in bar:
        batch = train[torch.randint(train_size, (batch_size,), generator=g)]
        teacher_forced = step < teacher_forcing_steps
        if teacher_forced:
            logits, target = model.predict_next(batch, logits=True), batch[:, 2:]
        else:
            logits, target = model(batch[:, :observe], predict, logits=True), batch[:, observe:]
        loss = F.binary_cross_entropy_with_logits(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(phase="teacher-forced" if teacher_forced else "closed-loop", loss=f"{losses[-1]:.4f}")
    psnr_t, ssim_t = evaluate_predictor(model, test, observe, batch_size, progress)
    future = test[:, observe:]
    black = torch.zeros_like(future)
    return VideoPredictionResult(
        psnr_t.tolist(), ssim_t.tolist(), psnr(black, future).mean(0).tolist(), ssim(black, future).mean(0).tolist(), losses
    )
