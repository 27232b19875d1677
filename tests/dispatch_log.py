"""A record of the ``deeprnn::`` ops a piece of code dispatches (tests/test_autotune.py, tests/test_cell_autotune.py)."""
from typing import List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class DeeprnnOps(TorchDispatchMode):
    """Records every ``deeprnn::`` op dispatched inside it in ``ops``: its name, its non-tensor arguments
    (activation codes, ``all_states``) and the shapes of its outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: List[Tuple[str, tuple, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace == "deeprnn":
            outs = out if isinstance(out, (tuple, list)) else (out,)
            self.ops.append((str(func), tuple(a for a in args if not isinstance(a, torch.Tensor)),
                             tuple(tuple(o.shape) for o in outs)))
        return out
