"""The ``deeprnn`` command line: ``info``, ``train``, ``compare``, ``demo``, ``predict`` and ``export``."""
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
from .data.idx import FASHION_MNIST_DIR
from .models.stack import CELLS
from .training.action import ActionConfig
from .training.config import DEVICES, LR_SCHEDULES, TrainConfig
from .training.export import FORMATS
from .training.frames import FRAMES_TASK, FramesConfig
from .training.moving_mnist_task import MovingMNISTConfig
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

VIDEO_DEFAULTS = {"cell": "cbm", "layers": 15, "hidden": 8, "image_size": 32, "train_size": 256, "test_size": 64,
                  "epochs": 6, "batch_size": 16, "lr": 1e-3}
"""``--task video-prediction``'s defaults (an epoch is ``train_size / batch_size`` steps)."""


_VIDEO_TEACHER_FORCING = 0.4
"""Fraction of the video-prediction steps trained teacher-forced before the closed-loop steps."""


MNIST_TASKS = ("moving-fmnist", "moving-mnist")
"""``deeprnn train --task moving-fmnist`` (Debian's Fashion-MNIST) or ``moving-mnist --data-dir DIR``: the
Moving-MNIST protocol on real images, a deep CBM or ConvLSTM predictor under a wall-clock budget."""

_MNIST_CELL_DEFAULTS = {"cbm": {"layers": 15, "hidden": 16, "shortcut_every": 2},
                        "convlstm": {"layers": 4, "hidden": 32, "shortcut_every": 0}}
"""Per cell: the paper's 15-layer CBM stack, and OpenSTL's 4-layer ConvLSTM (narrower: 32, not 128, channels)."""



ACTION_TASK = "action"
"""``deeprnn train --task action --data-dir ROOT``: a paper action model on video files or frame folders."""

_FRAMES_CELL_DEFAULTS = {**_MNIST_CELL_DEFAULTS, "convgru": _MNIST_CELL_DEFAULTS["convlstm"]}
"""``--task frames``: the Moving-MNIST runs' stacks per cell, ConvGRU shaped like the ConvLSTM."""

TRAIN_TASKS = TASKS + (VIDEO_TASK,) + MNIST_TASKS + (ACTION_TASK, FRAMES_TASK)
"""Every ``deeprnn train --task``."""

_SYNTHETIC_OPTIONS = ("cell", "layers", "hidden", "kernel_size", "shortcut_every", "frames", "image_size", "train_size",
                      "test_size", "epochs", "batch_size", "lr", "lr_schedule", "grad_clip", "td_schedule", "clip_min",
                      "clip_max", "overlap", "coherence_lambda", "coherence_on", "handoff", "device", "resume")
TASK_OPTIONS: Dict[str, tuple] = {
    **{task: _SYNTHETIC_OPTIONS for task in TASKS},
    # no clips, TD schedule or devices
    VIDEO_TASK: ("cell", "layers", "hidden", "image_size", "train_size", "test_size", "epochs", "batch_size", "lr"),
    # data drawn on the fly, a time budget, no clips
    **{task: ("cell", "layers", "hidden", "kernel_size", "shortcut_every", "test_size", "batch_size", "lr", "data_dir",
              "budget_minutes", "max_steps", "ssim_weight", "resume") for task in MNIST_TASKS},
    ACTION_TASK: ("model", "cell", "hidden", "frames", "image_size", "epochs", "batch_size", "lr", "td_schedule",
                  "data_dir"),
    # the Moving-MNIST run's options, on windows of the user's sequences
    FRAMES_TASK: ("cell", "layers", "hidden", "kernel_size", "shortcut_every", "patch", "observe", "predict", "stride",
                  "image_size", "test_size", "batch_size", "lr", "data_dir", "budget_minutes", "max_steps",
                  "ssim_weight", "workers", "resume"),
}
"""Per task of ``deeprnn train``: the options it takes besides those every task takes (:data:`COMMON_OPTIONS`);
it refuses the others."""

COMMON_OPTIONS = ("task", "seed", "out", "backend", "progress", "threads")
"""The options of ``deeprnn train`` that every task takes."""


def task_defaults(task: str) -> Dict[str, object]:
    """The default of every option ``task`` takes, by destination name, read from the tables the task runs with;
    a default that depends on the cell is a dict ``{cell: value}``."""
    if task in TASKS:
        return dataclasses.asdict(TrainConfig(task=task))
    if task == VIDEO_TASK:
        return {**VIDEO_DEFAULTS, "seed": 0, "backend": "auto"}
    if task in MNIST_TASKS:
        found = {f.name: f.default for f in dataclasses.fields(MovingMNISTConfig)}
        found["budget_minutes"] = found.pop("budget_s") / 60
        found["data_dir"] = str(FASHION_MNIST_DIR) if task == "moving-fmnist" else None
        for key in _MNIST_CELL_DEFAULTS["cbm"]:
            found[key] = {cell: defaults[key] for cell, defaults in _MNIST_CELL_DEFAULTS.items()}
        return found
    if task == ACTION_TASK:
        # the one field without a default, data_dir, is required
        return {f.name: None if f.default is dataclasses.MISSING else f.default for f in dataclasses.fields(ActionConfig)}
    if task == FRAMES_TASK:
        found = dataclasses.asdict(FramesConfig(data_dir=None))
        found["budget_minutes"] = found.pop("budget_s") / 60
        for key in _FRAMES_CELL_DEFAULTS["cbm"]:
            found[key] = {cell: defaults[key] for cell, defaults in _FRAMES_CELL_DEFAULTS.items()}
        return found
    raise ValueError(f"task must be one of {list(TRAIN_TASKS)}, got {task!r}")


def _format_default(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{cell} {_format_default(v)}" for cell, v in value.items())
    if value is None:
        return "none"
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def _defaults_help(dest: str, tasks: tuple) -> str:
    """``"default: 1 for moving-shapes, cat-dog; cbm 15, convlstm 4 for moving-fmnist"``: the default of option
    ``dest`` for each of ``tasks`` that takes it, tasks with the same default together; only ``"default: X"``
    when every one of ``tasks`` takes it with the same default."""
    by_value: Dict[str, List[str]] = {}
    for task in tasks:
        if dest in COMMON_OPTIONS or dest in TASK_OPTIONS[task]:
            by_value.setdefault(_format_default(task_defaults(task)[dest]), []).append(task)
    if len(by_value) == 1 and len(next(iter(by_value.values()))) == len(tasks):
        return f"default: {next(iter(by_value))}"
    return "default: " + "; ".join(f"{value} for {', '.join(names)}" for value, names in by_value.items())


def _check_task_options(args: argparse.Namespace) -> None:
    """Raise :class:`ConfigError` for the first option given that ``args.task`` does not take, saying which
    tasks take it."""
    from .training import ConfigError

    names = _option_names()
    for dest, value in vars(args).items():
        if dest in COMMON_OPTIONS or dest in TASK_OPTIONS[args.task] or dest not in names or value is None:
            continue
        takers = [task for task in TRAIN_TASKS if dest in TASK_OPTIONS[task]]
        raise ConfigError(names[dest], f"is not an option of --task {args.task}; only of --task {', '.join(takers)}")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _train_options(p: argparse.ArgumentParser, grid: bool = False) -> None:
    """The options of ``train`` (``compare`` takes them too, except the cell and depth it varies and what only
    the tasks it does not run take); every default in the help is read from the tables the tasks use."""
    tasks = TASKS if grid else TRAIN_TASKS

    def add(*flags: str, help: str, defaults: bool = True, **kwargs) -> None:
        """Add the option if one of ``tasks`` takes it; its help ends with its defaults (``defaults=False``: a
        flag, with the tasks that take it)."""
        dest = kwargs.get("dest") or flags[0][2:].replace("-", "_")
        takers = [task for task in tasks if dest in COMMON_OPTIONS or dest in TASK_OPTIONS[task]]
        if not takers:
            return
        if defaults:
            help = f"{help} ({_defaults_help(dest, tasks)})"
        elif len(takers) < len(tasks):
            help = f"{help} (--task {', '.join(takers)})"
        p.add_argument(*flags, help=help, **kwargs)

    p.add_argument("--task", choices=tasks,
                   help=("what to train (default moving-shapes): " if not grid else "(default moving-shapes) ")
                   + "moving-shapes and cat-dog classify synthetic sequences"
                   + ("" if grid else "; video-prediction predicts moving digits; moving-fmnist and moving-mnist "
                      "predict Moving (Fashion-)MNIST from IDX image files; action classifies your own videos; "
                      "frames predicts your own frames (arrays, frame folders, video files)"))
    if not grid:
        add("--cell", choices=CELLS, help="recurrent cell (moving-fmnist, moving-mnist: cbm or convlstm)")
        add("--layers", type=int, help="stack depth")
        add("--model", choices=("standalone", "backbone"),
            help="action model: StandaloneDeepCBM, or BackboneDeepCBM (a small CNN backbone, then the recurrent stack)")
    add("--seed", type=int, help="seed of data, initialization and sampling")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    add("--hidden", type=int, help="channels per recurrent layer")
    add("--kernel-size", type=int, help="odd convolution kernel of the recurrent layers")
    add("--shortcut-every", type=int, help="ResNet-style shortcut every k layers, 0: none")
    add("--frames", type=int, help="frames per sequence (action: per clip)")
    add("--image-size", type=int, help="frame height = width")
    add("--train-size", type=int, help="training sequences")
    add("--test-size", type=int, help="test sequences")
    add("--epochs", type=int, help="passes over the training set")
    add("--batch-size", type=int, help="sequences per step (and process under torchrun)")
    add("--lr", type=float, help="Adam learning rate")
    add("--lr-schedule", choices=LR_SCHEDULES, help="per-step learning rate schedule")
    add("--grad-clip", type=float, help="gradient norm clip, 0: off")
    add("--td-schedule", help="Temporal Dropout rate by epoch, RATE[,RATE@EPOCH...]")
    add("--clip-min", type=int, help="overlap training: shortest clip")
    add("--clip-max", type=int, help="overlap training: longest clip; none trains on whole sequences")
    add("--overlap", type=float, help="overlap training: target overlap rate")
    add("--coherence-lambda", type=float, help="overlap training: coherence loss weight")
    add("--coherence-on", choices=COHERENCE_SPACES, help="overlap training: what the coherence MSE compares")
    add("--no-handoff", dest="handoff", action="store_false", default=None, defaults=False,
        help="overlap training ablation: clips start from zero states instead of an earlier clip's state")
    add("--backend", choices=BACKENDS,
        help="backend of every recurrent cell: reference (pure PyTorch), native (compiled), triton, or auto (the "
             "fastest compiled one here)")
    add("--device", choices=DEVICES, help="auto: cuda when available")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (training and evaluation)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    if not grid:
        add("--data-dir", help="moving-mnist, moving-fmnist: folder of MNIST-format IDX files; action: ROOT holding "
                               "train/<class>/<video> and test/<class>/<video> (video files or frame folders); "
                               "frames: ROOT holding train/ and test/ (or only sequences, the last fifth by name "
                               "tested) of .npy/.npz arrays, frame folders and video files")
        add("--patch", type=int, help="side of the patches stacked as channels (frame sides must divide by it)")
        add("--observe", type=int, help="frames observed before predicting")
        add("--predict", type=int, help="frames predicted, closed loop")
        add("--stride", type=int, help="frames between the starts of consecutive windows")
        add("--workers", type=int, help="data-loader processes decoding frames while the model trains")
        add("--budget-minutes", type=float, help="training wall-clock budget, evaluation excluded")
        add("--max-steps", type=int, help="stop after this many steps, 0: the budget only")
        add("--ssim-weight", type=float, help="weight of the 1 - SSIM loss term beside the cross entropy, 0: off")
        add("--resume", action="store_true", default=None, defaults=False,
            help="continue the run whose checkpoint.pt is in --out")


def build_parser() -> argparse.ArgumentParser:
    """The ``deeprnn`` parser with its subcommands."""
    parser = _Parser(prog="deeprnn", description="Deep RNN Framework (CBM, Overlap Coherence Training) on PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, title="commands",
                                help="what to do (deeprnn COMMAND --help: its options)")
    sub.add_parser("info", help="versions, device and which backends work here",
                   description="Print the package, torch and CUDA versions and each backend's status.")
    train_help = "train one model on one task and write its records, curves and checkpoint in --out"
    train = sub.add_parser("train", help=train_help, description=train_help[0].upper() + train_help[1:] + ".")
    _train_options(train)
    compare_help = "train a grid of cells x depths on a synthetic task with the same settings; table and plot"
    compare = sub.add_parser("compare", help=compare_help, description=compare_help[0].upper() + compare_help[1:] + ".")
    _train_options(compare, grid=True)
    compare.add_argument("--cells", default="cbm,convlstm",
                         help="comma-separated cells of cbm, convlstm, convgru (default cbm,convlstm)")
    compare.add_argument("--depths", default="1,15", help="comma-separated depths (default 1,15)")
    demo_help = "compare the backends on a deep CBM, then train a 15-layer CBM on moving-shapes"
    demo = sub.add_parser("demo", help=demo_help, description=demo_help[0].upper() + demo_help[1:] + ".")
    demo.add_argument("--out", type=Path, default=Path("deeprnn-demo"), help="output folder (default ./deeprnn-demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed of data, initialization and sampling (default 0)")
    demo.add_argument("--backend", choices=BACKENDS, default="auto",
                      help="backend of the trained model's cells (default auto: the fastest compiled one here)")
    demo.add_argument("--device", choices=DEVICES, default="auto", help="default auto: cuda when available")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    demo.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    predict_help = "predict the frames after a video file, frame folder or array with a trained run's model"
    predict = sub.add_parser("predict", help=predict_help, description=predict_help[0].upper() + predict_help[1:]
                             + ": PNGs, a .npy and an animated GIF (predicted frames framed in red).")
    predict.add_argument("--run", type=Path, required=True, help="the --out folder of a deeprnn train run")
    predict.add_argument("--input", type=Path, required=True,
                         help="a video file, a folder of frames or a .npy/.npz array (one sequence)")
    predict.add_argument("--predict", type=int, help="frames to predict (default: the run's --predict)")
    predict.add_argument("--start", type=int, help="first observed frame (default: observe the last frames)")
    predict.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    predict.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    export_help = "export a trained run's predictor as a torch.export program (pt2) or an ONNX graph"
    export = sub.add_parser("export", help=export_help, description=export_help[0].upper() + export_help[1:]
                            + ": observed frames (1, observe, C, H, W) in, the predicted frames out.")
    export.add_argument("--run", type=Path, required=True, help="the --out folder of a deeprnn train run")
    export.add_argument("--format", choices=FORMATS, required=True,
                        help="pt2: keeps the fused ops (load after import deeprnn_cuda); onnx: standard operators")
    export.add_argument("--out", type=Path, required=True, help="the file to write")
    export.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    return parser


def _option_names() -> Dict[str, str]:
    """``destination -> option string`` of every option of ``deeprnn train``."""
    parser = argparse.ArgumentParser(add_help=False)
    _train_options(parser)
    return {a.dest: a.option_strings[0] for a in parser._actions}


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
    from .training.metrics import plot_series, write_metrics
    from .training.video_task import run_video_prediction

    given = {**VIDEO_DEFAULTS, **{k: getattr(args, k) for k in VIDEO_DEFAULTS if getattr(args, k) is not None}}
    steps = max(1, given["epochs"] * given["train_size"] // given["batch_size"])
    options = dict(cell=given["cell"], num_layers=given["layers"], width=given["hidden"], size=given["image_size"],
                   train_size=given["train_size"], test_size=given["test_size"], steps=steps,
                   teacher_forcing_steps=int(steps * _VIDEO_TEACHER_FORCING), batch_size=given["batch_size"],
                   lr=given["lr"], backend=args.backend or "auto", seed=args.seed or 0)
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
    losses = result.train_losses
    records = [{"step": step + 1, "train_loss": losses[step],
                "teacher_forced": step < options["teacher_forcing_steps"]} for step in range(len(losses))]
    records.append({"test": f"{options['num_layers']}-layer {options['cell']}", "psnr": result.psnr, "ssim": result.ssim,
                    "psnr_avg": result.psnr_avg, "ssim_avg": result.ssim_avg})
    write_metrics(out / "metrics.jsonl", records)
    plot_series({"train loss": losses}, list(range(1, len(losses) + 1)), out / "curves.png", "step", "loss",
                f"{VIDEO_TASK}: {options['num_layers']}-layer {options['cell']}")
    summary.update(options=options, out=str(out), curves=str(out / "curves.png"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(result.table())
    print(json.dumps(summary))
    return 0


def _check_predictor_options(cfg, args: argparse.Namespace, minimums) -> None:
    """The checks every frame-prediction task's options share: each (option, value, lowest allowed) of ``minimums``,
    then the budget, learning rate, SSIM weight and kernel size; a ConfigError naming the first bad option."""
    from .training import ConfigError

    for option, value, low in minimums:
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


def _train_moving_mnist(args: argparse.Namespace) -> int:
    """Train a deep CBM or ConvLSTM predictor on Moving (Fashion-)MNIST; print the per-horizon table."""
    from .data.idx import MissingDataError
    from .training import ConfigError
    from .training.moving_mnist_task import run_moving_mnist

    if args.task == "moving-mnist" and args.data_dir is None:
        raise ConfigError("--data-dir", "is required for --task moving-mnist: a folder holding MNIST's IDX files")
    cell = args.cell or MovingMNISTConfig.cell
    if cell not in _MNIST_CELL_DEFAULTS:
        raise ConfigError("--cell", f"must be one of {list(_MNIST_CELL_DEFAULTS)} for --task {args.task}, got {cell!r}")
    given = {k: getattr(args, k) for k in ("layers", "hidden", "kernel_size", "shortcut_every", "batch_size", "lr",
                                           "test_size", "seed", "backend", "data_dir", "max_steps", "ssim_weight")}
    options = {**_MNIST_CELL_DEFAULTS[cell], **{k: v for k, v in given.items() if v is not None}}
    if args.budget_minutes is not None:
        options["budget_s"] = args.budget_minutes * 60
    cfg = MovingMNISTConfig(task=args.task, cell=cell, **options)
    _check_predictor_options(cfg, args, (("--layers", cfg.layers, 1), ("--hidden", cfg.hidden, 1),
                                         ("--batch-size", cfg.batch_size, 1), ("--test-size", cfg.test_size, 1),
                                         ("--max-steps", cfg.max_steps, 0)))
    try:
        summary = run_moving_mnist(cfg, Path(args.out), progress=args.progress, resume=bool(args.resume))
    except MissingDataError as e:
        raise ConfigError("--data-dir", str(e)) from None
    print(json.dumps(summary))
    return 0


def _train_action(args: argparse.Namespace) -> int:
    """Train an action model on ``--data-dir ROOT/{train,test}/<class>/<video>``; print the JSON summary."""
    from .training import ConfigError
    from .training.action import ActionConfig, ActionDataError, run_action
    from .training.schedule import TDSchedule

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


def _train_frames(args: argparse.Namespace) -> int:
    """Train a frame predictor on ``--data-dir``'s sequences; print the per-horizon table and the JSON summary."""
    from .training import ConfigError
    from .training.frames import FramesDataError, run_frames

    if args.data_dir is None:
        raise ConfigError("--data-dir", f"is required for --task {FRAMES_TASK}: ROOT holding train/ and test/ sequences")
    cell = args.cell or FramesConfig.cell
    given = {k: getattr(args, k) for k in ("layers", "hidden", "kernel_size", "shortcut_every", "patch", "observe",
                                           "predict", "stride", "image_size", "test_size", "batch_size", "lr", "seed",
                                           "backend", "max_steps", "ssim_weight", "workers")}
    options = {**_FRAMES_CELL_DEFAULTS[cell], **{k: v for k, v in given.items() if v is not None}}
    if args.budget_minutes is not None:
        options["budget_s"] = args.budget_minutes * 60
    cfg = FramesConfig(data_dir=args.data_dir, cell=cell, **options)
    _check_predictor_options(cfg, args, (("--layers", cfg.layers, 1), ("--hidden", cfg.hidden, 1),
                                         ("--patch", cfg.patch, 1), ("--observe", cfg.observe, 1),
                                         ("--predict", cfg.predict, 1), ("--stride", cfg.stride, 1),
                                         ("--batch-size", cfg.batch_size, 1), ("--test-size", cfg.test_size, 1),
                                         ("--max-steps", cfg.max_steps, 0), ("--workers", cfg.workers, 0)))
    if cfg.image_size is not None and (cfg.image_size < 1 or cfg.image_size % cfg.patch):
        raise ConfigError("--image-size", f"must be a positive multiple of --patch {cfg.patch}, got {cfg.image_size}")
    try:
        summary = run_frames(cfg, Path(args.out), resume=bool(args.resume), progress=args.progress)
    except FramesDataError as e:  # unreadable, too short or inconsistent data: one line naming the file
        raise ConfigError("--data-dir", str(e)) from None
    print(json.dumps(summary))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one model; the last stdout line is the JSON summary."""
    from .training import train

    args.task = args.task or TrainConfig.task
    _check_task_options(args)
    if args.task == VIDEO_TASK:
        return _train_video_prediction(args)
    if args.task in MNIST_TASKS:
        return _train_moving_mnist(args)
    if args.task == ACTION_TASK:
        return _train_action(args)
    if args.task == FRAMES_TASK:
        return _train_frames(args)
    summary = train(_config(args), args.out, resume=bool(args.resume), progress=args.progress)
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


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict frames after ``--input`` with the model of ``--run``; the last stdout line is the JSON record."""
    from .training import ConfigError
    from .training.predict import predict_frames

    try:
        result = predict_frames(args.run, args.input, args.out, predict=args.predict, start=args.start)
    except ValueError as e:  # the message starts with the argument it is about, or names the input file
        option = {"start": "--start", "predict": "--predict", "run": "--run"}.get(str(e).split()[0], "--input")
        raise ConfigError(option, str(e)) from None
    print(json.dumps(result))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export the predictor of ``--run``; the last stdout line is the JSON record."""
    from .training import ConfigError
    from .training.export import export_run

    try:
        result = export_run(args.run, args.format, args.out)
    except ValueError as e:  # a folder without model.pt
        raise ConfigError("--run", str(e)) from None
    print(json.dumps(result))
    return 0


COMMANDS = {"info": cmd_info, "train": cmd_train, "compare": cmd_compare, "demo": cmd_demo, "predict": cmd_predict,
            "export": cmd_export}


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
