"""Image-quality metrics of video prediction (the paper's Table 4, OpenSTL's benchmarks): per image.

:func:`psnr` and :func:`ssim` take ``pred`` and ``target`` of the same shape ``(..., C, H, W)`` with values
in ``[0, data_range]`` and return one value per image, shape ``(...)`` (e.g. ``(B, T)`` for a batch of
predicted clips). :func:`openstl_frame_metrics` gives MSE, MAE, SSIM and PSNR per frame exactly as
OpenSTL's ``metric()`` computes them, so that averages over frames and sequences match its tables.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F


def _check_pair(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.dim() < 3:
        raise ValueError(f"pred must have shape (..., C, H, W), got {tuple(pred.shape)}")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB per image (``inf`` when equal), float64."""
    _check_pair(pred, target, data_range)
    mse = (pred.double() - target.double()).pow(2).flatten(-3).mean(dim=-1)
    return 10.0 * torch.log10(data_range ** 2 / mse)


SSIM_WINDOWS = ("gaussian", "uniform")

OPENSTL_SSIM = {"window": "uniform", "window_size": 7, "sample_covariance": True, "data_range": 2.0}
"""The SSIM behind OpenSTL's tables: its ``metric()`` calls scikit-image's ``structural_similarity`` with no
options, i.e. a 7x7 box window with sample covariance, and no ``data_range``, which scikit-image before
0.20 took from the float dtype's nominal range ``[-1, 1]``: 2 (0.20 and later refuse float images without
it). On ``[0, 1]`` frames that weakens the constants ``C1``, ``C2`` 4x against ``data_range=1``."""


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The normalized 1-D Gaussian ``(size,)``."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    window: str = "gaussian",
    sample_covariance: bool = False,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004) per image, averaged over channels and valid windows.

    Local statistics use an ``window_size`` Gaussian window with std ``sigma`` (``window="gaussian"``, the
    paper's) or a flat ``window_size x window_size`` box (``"uniform"``, scikit-image's default), with no
    padding (only windows inside the image count), ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` with
    ``L = data_range``: the standard constants. ``sample_covariance`` scales the local (co)variances by
    ``n / (n - 1)`` for a window of ``n`` pixels, as scikit-image does by default. Images must be at least
    ``window_size`` pixels on each side. Computed and returned in ``dtype``: float64 (the default) matches
    scikit-image to 1e-10; float32 is the cheap, differentiable one a training loss wants.
    """
    _check_pair(pred, target, data_range)
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be an odd positive int, got {window_size!r}")
    if window not in SSIM_WINDOWS:
        raise ValueError(f"window must be one of {list(SSIM_WINDOWS)}, got {window!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    H, W = pred.shape[-2:]
    if H < window_size or W < window_size:
        raise ValueError(f"pred must be at least window_size={window_size} pixels on each side, got {H}x{W}")
    lead, C = pred.shape[:-3], pred.shape[-3]
    x = pred.to(dtype).reshape(-1, 1, H, W)
    y = target.to(dtype).reshape(-1, 1, H, W)
    scale = window_size ** 2 / (window_size ** 2 - 1) if sample_covariance and window_size > 1 else 1.0
    # Separable filters (a box is a pooling): on the CPU several times cheaper than one 2-D convolution.
    if window == "gaussian":
        g = _gaussian_window(window_size, sigma, x.dtype, x.device)

        def blur(z: torch.Tensor) -> torch.Tensor:
            return F.conv2d(F.conv2d(z, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    else:
        def blur(z: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(z, window_size, stride=1)

    mu_x, mu_y = blur(x), blur(y)
    var_x = scale * (blur(x * x) - mu_x ** 2)
    var_y = scale * (blur(y * y) - mu_y ** 2)
    cov = scale * (blur(x * y) - mu_x * mu_y)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1).view(*lead, C).mean(dim=-1)


def openstl_frame_metrics(pred: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
    """MSE, MAE, SSIM and PSNR of every frame, as OpenSTL's ``metric()`` defines them, shape ``(...)`` each.

    ``pred`` and ``target`` are ``(..., C, H, W)`` frames in ``[0, 1]``. ``mse`` and ``mae`` are the squared
    and absolute errors summed over the pixels (and channels) of a frame, computed before clipping;
    ``ssim`` (:data:`OPENSTL_SSIM`) and ``psnr`` (``-10 log10`` of the per-pixel MSE, ``inf`` when equal) are
    computed on ``pred`` clipped to ``[0, 1]``. OpenSTL reports each averaged over frames and sequences;
    averaging over the batch only gives the per-horizon values.
    """
    _check_pair(pred, target, 1.0)
    err = pred.double() - target.double()
    clipped = pred.clamp(0.0, 1.0)
    return {
        "mse": err.pow(2).flatten(-3).sum(dim=-1),
        "mae": err.abs().flatten(-3).sum(dim=-1),
        "ssim": ssim(clipped, target, **OPENSTL_SSIM),
        "psnr": psnr(clipped, target, data_range=1.0),
    }
