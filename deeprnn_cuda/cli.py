"""The ``deeprnn`` command line: ``info``, ``train``, ``compare`` and ``demo``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

from ._checks import BACKENDS
from .data import TASKS
from .models.stack import CELLS
from .training.config import DEVICES, LR_SCHEDULES
from .training.overlap import COHERENCE_SPACES

DEMO = {
    "task": "moving-shapes",
    "cell": "cbm",
    "layers": 15,
    "hidden": 8,
    "frames": 8,
    "image_size": 16,
    "train_size": 1600,
    "test_size": 400,
    "epochs": 10,
    "batch_size": 32,
    "lr": 3e-3,
}
"""``deeprnn demo``'s run: a 15-layer CBM on moving-shapes, sized to finish in minutes on 2 CPU cores."""


VIDEO_TASK = "video-prediction"
"""``deeprnn train --task video-prediction``: a deep video predictor on moving digits (observe 10, predict 20)."""

# Options of ``train`` that only the Moving-MNIST runs take (every other task refuses them).
_MNIST_ONLY = ("budget_minutes", "max_steps", "ssim_weight")

# Options of ``train`` that the video-prediction run does not take (it has no clips, TD schedule or devices).
_VIDEO_UNUSED = ("data_dir", *_MNIST_ONLY, "model",
                 "frames", "clip_min", "clip_max", "overlap", "coherence_lambda", "coherence_on", "handoff", "td_schedule",
                 "kernel_size", "shortcut_every", "lr_schedule", "grad_clip", "device", "resume")


_VIDEO_TEACHER_FORCING = 0.4
"""Fraction of the video-prediction steps trained teacher-forced before the closed-loop steps."""


MNIST_TASKS = ("moving-fmnist", "moving-mnist")
"""``deeprnn train --task moving-fmnist`` (Debian's Fashion-MNIST) or ``moving-mnist --data-dir DIR``: the
Moving-MNIST protocol on real images, a deep CBM or ConvLSTM predictor under a wall-clock budget."""

_MNIST_CELL_DEFAULTS = {"cbm": {"layers": 15, "hidden": 16, "shortcut_every": 2},
                        "convlstm": {"layers": 4, "hidden": 32, "shortcut_every": 0}}
"""Per cell: the paper's 15-layer CBM stack, and OpenSTL's 4-layer ConvLSTM (narrower: 32, not 128, channels)."""

# Options of ``train`` that the Moving-MNIST runs do not take (data drawn on the fly, a time budget, no clips).
_MNIST_UNUSED = ("model", "frames", "image_size", "train_size", "epochs", "clip_min", "clip_max", "overlap", "coherence_lambda",
                 "coherence_on", "handoff", "td_schedule", "lr_schedule", "grad_clip", "device", "resume")


ACTION_TASK = "action"
"""``deeprnn train --task action --data-dir ROOT``: a paper action model on video files or frame folders."""

# Options of ``train`` that the action run does not take.
_ACTION_UNUSED = ("layers", "kernel_size", "shortcut_every", "train_size", "test_size", "lr_schedule", "grad_clip",
                  "clip_min", "clip_max", "overlap", "coherence_lambda", "coherence_on", "handoff", "device", "resume",
                  *_MNIST_ONLY)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _train_options(p: argparse.ArgumentParser, grid: bool = False) -> None:
    """The options of ``train`` (``compare`` takes them too, except the cell and depth it varies)."""
    p.add_argument("--task", choices=TASKS + ((VIDEO_TASK,) + MNIST_TASKS + (ACTION_TASK,) if not grid else ()),
                   help="synthetic task (default moving-shapes)")
    if not grid:
        p.add_argument("--cell", choices=CELLS, help="recurrent cell (default cbm)")
        p.add_argument("--layers", type=int, help="stack depth (default 1)")
    p.add_argument("--seed", type=int, help="seed of data, init and sampling (default 0)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--hidden", type=int, help="channels per layer (default 8; cat-dog 64)")
    p.add_argument("--kernel-size", type=int, help="odd conv kernel (default 3)")
    p.add_argument("--shortcut-every", type=int, help="ResNet-style shortcut every k layers, 0: none (default 2)")
    p.add_argument("--frames", type=int, help="frames per sequence (task default: 8 moving-shapes, 64 cat-dog)")
    p.add_argument("--image-size", type=int, help="frame height = width (task default: 16 moving-shapes, 4 cat-dog)")
    p.add_argument("--train-size", type=int, help="training sequences (default 1200; moving-shapes 1600; cat-dog 1024)")
    p.add_argument("--test-size", type=int, help="test sequences (default 300; moving-shapes 400; cat-dog 64)")
    p.add_argument("--epochs", type=int, help="epochs (default 6; moving-shapes 10; cat-dog 150)")
    p.add_argument("--batch-size", type=int, help="sequences per step and process (default 32; cat-dog 16)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 3e-3; cat-dog 2e-3)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="per-step learning rate schedule (default cosine)")
    p.add_argument("--grad-clip", type=float, help="gradient norm clip, 0: off (default 1.0)")
    p.add_argument("--td-schedule", help="Temporal Dropout rate by epoch, e.g. '1.0,0.8@2,0.5@4' (the default)")
    p.add_argument("--clip-min", type=int, help="overlap training: shortest clip (default 2)")
    p.add_argument("--clip-max", type=int, help="overlap training: longest clip; unset trains on whole sequences")
    p.add_argument("--overlap", type=float, help="overlap training: target overlap rate (default 0.25)")
    p.add_argument("--coherence-lambda", type=float, help="overlap coherence loss weight (default 0.8)")
    p.add_argument("--coherence-on", choices=COHERENCE_SPACES,
                   help="what the coherence MSE compares (default probabilities)")
    p.add_argument("--no-handoff", dest="handoff", action="store_false", default=None,
                   help="ablation: clips start from zero states instead of an earlier clip's state")
    p.add_argument("--backend", choices=BACKENDS, help="CBM backend (default auto)")
    p.add_argument("--device", choices=DEVICES, help="default auto: cuda when available")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    if not grid:
        p.add_argument("--data-dir", help="moving-mnist/moving-fmnist: folder of MNIST-format IDX files "
                                          "(default for moving-fmnist: /usr/share/datasets/fashion-mnist)")
        p.add_argument("--budget-minutes", type=float, help="moving-(f)mnist: training wall-clock budget (default 10)")
        p.add_argument("--max-steps", type=int, help="moving-(f)mnist: stop after this many steps (default: budget only)")
        p.add_argument("--ssim-weight", type=float,
                       help="moving-(f)mnist: weight of the 1 - SSIM loss term beside the cross entropy (default 3, 0: off)")
        p.add_argument("--model", choices=("standalone", "backbone"),
                       help="action: StandaloneDeepCBM or BackboneDeepCBM (default backbone)")


def build_parser() -> argparse.ArgumentParser:
    """The ``deeprnn`` parser with its four subcommands."""
    parser = _Parser(prog="deeprnn", description="Deep RNN Framework (CBM, Overlap Coherence Training) on PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("info", help="versions, device and which CBM backends work here")
    train = sub.add_parser("train", help="train one model on a synthetic task")
    _train_options(train)
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    compare = sub.add_parser("compare", help="train a grid of cells x depths with one budget")
    _train_options(compare, grid=True)
    compare.add_argument("--cells", default="cbm,convlstm", help="comma-separated cells of cbm, convlstm, convgru (default cbm,convlstm)")
    compare.add_argument("--depths", default="1,15", help="comma-separated depths (default 1,15)")
    demo = sub.add_parser("demo", help="train a 15-layer CBM on moving-shapes with the default settings")
    demo.add_argument("--out", type=Path, default=Path("deeprnn-demo"), help="output folder (default ./deeprnn-demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--backend", choices=BACKENDS, default="auto")
    demo.add_argument("--device", choices=DEVICES, default="auto")
    demo.add_argument("--no-progress", dest="progress", action="store_false")
    demo.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    return parser


def _config(args: argparse.Namespace, base: Optional[Dict] = None):
    """A ``TrainConfig`` from ``base`` overridden by every option given on the command line."""
    from .training import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return TrainConfig(**{**(base or {}), **given})


def _native_build_lines() -> List[str]:
    """setup.py's recorded decisions about the compiled extension: the CUDA toolkit, the CPU SIMD flags and
    threading."""
    from . import _native

    info = _native.build_info()
    # Without CUDA kernels the native backend's status line already says why.
    keys = ("cuda", "cpu", "threads") if info.get("cuda_compiled") else ("cpu", "threads")
    return [str(info[key]) for key in keys if key in info]


def cmd_info(_: argparse.Namespace) -> int:
    """Print the package, torch and CUDA versions and each backend's status."""
    import torch

    from . import __version__, autotune
    from .backends import backend_status

    print(f"deeprnn_cuda {__version__}")
    print(f"torch {torch.__version__}")
    if torch.cuda.is_available():
        print(f"CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} GPU(s))")
    else:
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
        print(f"CUDA not available ({built})")
    for backend, status in backend_status().items():
        print(f"backend {backend}: {status}")
    for line in _native_build_lines():
        print(f"build: {line}")
    paths = ", ".join(f"{var}={os.environ.get(var) or '0'}" for var in ("DEEPRNN_CUDA_PERSISTENT", "DEEPRNN_CUDA_GRAPHS"))
    print(f"auto on CUDA: {'measures native vs triton per shape' if autotune.enabled() else 'native first'} "
          f"(DEEPRNN_AUTOTUNE); native CUDA op: {paths}")
    return 0


def _train_video_prediction(args: argparse.Namespace) -> int:
    """Train a DeepVideoPredictor on moving digits; print PSNR/SSIM per predicted frame (the paper's Table 4)."""
    import time

    from .training import ConfigError
    from .training.video_task import run_video_prediction

    for name in _VIDEO_UNUSED:
        if getattr(args, name, None) not in (None, False):
            raise ConfigError(f"--{name.replace('_', '-')}", f"is not an option of --task {VIDEO_TASK}")
    train_size = args.train_size or 256
    batch_size = args.batch_size or 16
    steps = max(1, (args.epochs or 6) * train_size // batch_size)
    options = dict(cell=args.cell or "cbm", num_layers=args.layers or 15, width=args.hidden or 8,
                   size=args.image_size or 32, train_size=train_size, test_size=args.test_size or 64,
                   steps=steps, teacher_forcing_steps=int(steps * _VIDEO_TEACHER_FORCING), batch_size=batch_size,
                   lr=args.lr or 1e-3, backend=args.backend or "auto", seed=args.seed or 0)
    if options["size"] % 4 or options["size"] < 12:
        raise ConfigError("--image-size", f"must be a multiple of 4 and at least 12, got {options['size']}")
    start = time.perf_counter()
    result = run_video_prediction(**options, progress=args.progress)
    seconds = time.perf_counter() - start
    summary = {"task": VIDEO_TASK, "cell": options["cell"], "layers": options["num_layers"], "seconds": seconds,
               "psnr": result.psnr, "ssim": result.ssim, "psnr_avg": result.psnr_avg, "ssim_avg": result.ssim_avg,
               "black_psnr": result.black_psnr, "black_ssim": result.black_ssim, "test_accuracy": None}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({**summary, "options": options, "train_losses": result.train_losses}))
    print(result.table())
    print(json.dumps(summary))
    return 0


def _train_moving_mnist(args: argparse.Namespace) -> int:
    """Train a deep CBM or ConvLSTM predictor on Moving (Fashion-)MNIST; print the per-horizon table."""
    from .data.idx import MissingDataError
    from .training import ConfigError
    from .training.moving_mnist_task import MovingMNISTConfig, run_moving_mnist

    for name in _MNIST_UNUSED:
        if getattr(args, name, None) not in (None, False):
            raise ConfigError(f"--{name.replace('_', '-')}", f"is not an option of --task {args.task}")
    if args.task == "moving-mnist" and args.data_dir is None:
        raise ConfigError("--data-dir", "is required for --task moving-mnist: a folder holding MNIST's IDX files")
    cell = args.cell or "cbm"
    given = {k: getattr(args, k) for k in ("layers", "hidden", "kernel_size", "shortcut_every", "batch_size", "lr",
                                           "test_size", "seed", "backend", "data_dir", "max_steps", "ssim_weight")}
    options = {**_MNIST_CELL_DEFAULTS[cell], **{k: v for k, v in given.items() if v is not None}}
    if args.budget_minutes is not None:
        options["budget_s"] = args.budget_minutes * 60
    cfg = MovingMNISTConfig(task=args.task, cell=cell, **options)
    for option, value, low in (("--layers", cfg.layers, 1), ("--hidden", cfg.hidden, 1), ("--batch-size", cfg.batch_size, 1),
                               ("--test-size", cfg.test_size, 1), ("--max-steps", cfg.max_steps, 0)):
        if value < low:
            raise ConfigError(option, f"must be >= {low}, got {value}")
    if not cfg.budget_s > 0:
        raise ConfigError("--budget-minutes", f"must be > 0, got {args.budget_minutes}")
    if not cfg.lr > 0:
        raise ConfigError("--lr", f"must be > 0, got {cfg.lr}")
    if not cfg.ssim_weight >= 0:
        raise ConfigError("--ssim-weight", f"must be >= 0, got {cfg.ssim_weight}")
    if cfg.kernel_size < 1 or cfg.kernel_size % 2 == 0:
        raise ConfigError("--kernel-size", f"must be an odd number >= 1, got {cfg.kernel_size}")
    try:
        summary = run_moving_mnist(cfg, Path(args.out), progress=args.progress)
    except MissingDataError as e:
        raise ConfigError("--data-dir", str(e)) from None
    print(json.dumps(summary))
    return 0


def _train_action(args: argparse.Namespace) -> int:
    """Train an action model on ``--data-dir ROOT/{train,test}/<class>/<video>``; print the JSON summary."""
    from .training import ConfigError
    from .training.action import ActionConfig, ActionDataError, run_action
    from .training.schedule import TDSchedule

    for name in _ACTION_UNUSED:
        if getattr(args, name, None) not in (None, False):
            raise ConfigError(f"--{name.replace('_', '-')}", f"is not an option of --task {ACTION_TASK}")
    if args.data_dir is None:
        raise ConfigError("--data-dir", "is required for --task action: ROOT holding train/<class>/<video> and test/...")
    fields = ("model", "cell", "hidden", "frames", "image_size", "epochs", "batch_size", "lr", "td_schedule", "seed", "backend")
    cfg = ActionConfig(data_dir=args.data_dir, **{k: getattr(args, k) for k in fields if getattr(args, k) is not None})
    for option, value, low in (("--hidden", cfg.hidden, 1), ("--frames", cfg.frames, 1), ("--image-size", cfg.image_size, 8),
                               ("--epochs", cfg.epochs, 1), ("--batch-size", cfg.batch_size, 1)):
        if value < low:
            raise ConfigError(option, f"must be >= {low}, got {value}")
    if cfg.image_size % 2:
        raise ConfigError("--image-size", f"must be even (the models halve it), got {cfg.image_size}")
    try:
        TDSchedule.parse(cfg.td_schedule)
    except ValueError as e:
        raise ConfigError("--td-schedule", str(e)) from None
    try:
        summary = run_action(cfg, Path(args.out), progress=args.progress)
    except ActionDataError as e:  # missing split, unreadable video, PyAV absent: one line
        raise ConfigError("--data-dir", str(e)) from None
    print(json.dumps(summary))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one model; the last stdout line is the JSON summary."""
    from .training import ConfigError, train

    if args.task == VIDEO_TASK:
        return _train_video_prediction(args)
    if args.task in MNIST_TASKS:
        return _train_moving_mnist(args)
    if args.task == ACTION_TASK:
        return _train_action(args)
    for name in ("data_dir", *_MNIST_ONLY, "model"):
        if getattr(args, name) is not None:
            raise ConfigError(f"--{name.replace('_', '-')}", "is not an option of this task")

    summary = train(_config(args), args.out, resume=args.resume, progress=args.progress)
    if summary:
        print(json.dumps(summary))
    return 0


def _split(option: str, text: str, cast) -> List:
    from .training import ConfigError

    try:
        items = [cast(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(option, f"must be a comma-separated list, got {text!r}") from None
    if not items:
        raise ConfigError(option, "must name at least one value")
    return items


def cmd_compare(args: argparse.Namespace) -> int:
    """Train every cell x depth; print the table, then the JSON summaries as the last line."""
    from .training import ConfigError, train
    from .training.compare import run_grid

    cells, depths = _split("--cells", args.cells, str), _split("--depths", args.depths, int)
    for cell in cells:
        if cell not in CELLS:
            raise ConfigError("--cells", f"must hold only cells of {list(CELLS)}, got {cell!r}")
    progress = args.progress
    summaries = run_grid(_config(args), cells, depths, args.out, lambda cfg, out: train(cfg, out, progress=progress))
    print((Path(args.out) / "compare.md").read_text(), end="")
    print(f"plot: {Path(args.out) / 'compare.png'}")
    print(json.dumps(summaries))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The README's demo: every backend on one deep CBM stack, then a 15-layer CBM trained on moving-shapes."""
    import torch

    from .backend_check import compare_backends
    from .training import train

    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    print(f"Backends on a 15-layer CBM (forward+backward, {device}):")
    reports = compare_backends(device=device)
    for report in reports:
        print("  " + report.line(reports[0].seconds))
    summary = train(_config(args, DEMO), args.out, progress=args.progress)
    print(
        f"15-layer CBM on moving-shapes: test accuracy {summary['test_accuracy']:.1%} in {summary['seconds']:.0f} s "
        f"on {summary['device']}; curves: {summary['curves']}"
    )
    print(json.dumps(summary))
    return 0


COMMANDS = {"info": cmd_info, "train": cmd_train, "compare": cmd_compare, "demo": cmd_demo}


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``deeprnn`` console script; returns the exit code."""
    from .training import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            print(f"deeprnn {args.command}: error: --threads: must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"deeprnn {args.command}: error: {e}", file=sys.stderr)
        return 2
