"""The native CUDA op's execution paths side by side: ``python -m benchmarks.native_paths [--quick] [--out FILE]``.

One CBM layer (T=16, B=16, the canonical shapes of benchmarks/gpu.py), forward and forward+backward, float32
(TF32 off and on) and bf16, through ``backend="native"`` with each path the op offers: the per-step loop (the
default), ``DEEPRNN_CUDA_GRAPHS=1`` (a CUDA graph of the whole op per shape) and ``DEEPRNN_CUDA_PERSISTENT=1``
(all steps in one cooperative launch per direction). Medians (CUDA events) and each path's speed-up over the
loop; "-" where the persistent kernels cannot run the shape (they fell back to the loop, counted by
``torch.ops.deeprnn.cuda_persistent_launches``). ``--quick`` runs a tiny shape, also on the CPU (where every path
is the CPU op: a check of the script only).
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Dict

import torch

from benchmarks.cases import Shape
from benchmarks.gpu import CANONICAL, QUICK, Table, environment, median_time, split_names
from deeprnn_cuda import cbm_layer

PATHS: Dict[str, Dict[str, str]] = {
    "loop": {},
    "graphs": {"DEEPRNN_CUDA_GRAPHS": "1"},
    "persistent": {"DEEPRNN_CUDA_PERSISTENT": "1"},
}
DTYPES = {"float32": (torch.float32, False), "tf32": (torch.float32, True), "bf16": (torch.bfloat16, False)}


def layer_call(s: Shape, dtype: torch.dtype, device: torch.device, train: bool) -> Callable[[], None]:
    torch.manual_seed(0)

    def param(*shape: int, fan: int) -> torch.Tensor:
        return (torch.randn(*shape, device=device) * fan ** -0.5).to(dtype).requires_grad_(train)

    x = torch.randn(s.T, s.B, s.C_in, s.H, s.W, device=device, dtype=dtype, requires_grad=train)
    w_r, w_t = param(s.C, s.C_in, s.k, s.k, fan=s.C_in * s.k * s.k), param(s.C, s.C_in + s.C, s.k, s.k,
                                                                           fan=(s.C_in + s.C) * s.k * s.k)
    b_r, b_t = param(s.C, fan=1), param(s.C, fan=1)

    def call() -> None:
        with torch.set_grad_enabled(train):
            o, c = cbm_layer(x, w_r, b_r, w_t, b_t, backend="native")
            if train:
                (o.float().sum() + c.float().sum()).backward()
    return call


def launches() -> int:
    return int(torch.ops.deeprnn.cuda_persistent_launches())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny shape, to check the script (CPU works)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", help="also write the markdown table to this file, row by row")
    parser.add_argument("--shapes", default="", help="comma-separated shape labels (default: all of the mode's)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated, of {', '.join(DTYPES)}")
    args = parser.parse_args()
    shapes = QUICK if args.quick else CANONICAL
    labels, dnames = split_names(args.shapes) or list(shapes), split_names(args.dtypes)
    for name, values, known in (("--shapes", labels, shapes), ("--dtypes", dnames, DTYPES)):
        unknown = sorted(set(values) - set(known))
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    table = Table(args.out)
    table.add(f"device: {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}; median of {args.repeats}",
              "", "| shape | dtype | pass | " + " | ".join(f"{p} ms" for p in PATHS) + " | best vs loop |",
              "|---|---|---|" + "---:|" * (len(PATHS) + 1))
    torch.backends.cudnn.benchmark = True
    old_tf32 = torch.backends.cudnn.allow_tf32
    try:
        for label in labels:
            s = shapes[label]
            for dname in dnames:
                dtype, tf32 = DTYPES[dname]
                if device.type == "cpu" and dtype != torch.float32:
                    continue
                torch.backends.cudnn.allow_tf32 = tf32
                for train in (False, True):
                    call = layer_call(s, dtype, device, train)
                    times: Dict[str, str] = {}
                    loop = best = None
                    for path, env in PATHS.items():
                        with environment(env):
                            before = launches()
                            t = median_time(call, device, args.repeats)
                            ran = path != "persistent" or device.type == "cpu" or launches() > before
                        times[path] = f"{t * 1e3:.3f}" if ran else "-"
                        loop = t if path == "loop" else loop
                        best = t if ran and (best is None or t < best) else best
                    table.add(f"| {label} {s} | {dname} | {'fwd+bwd' if train else 'fwd'} | "
                              + " | ".join(times.values()) + f" | {loop / best:.2f}x |")
    finally:
        torch.backends.cudnn.allow_tf32 = old_tf32


if __name__ == "__main__":
    main()
