"""The Triton kernels' index arithmetic at sizes no test machine can allocate (issue 23).

A real launch runs under the interpreter on "tensors" that are address ranges nothing reads or writes: the
interpreter's loads and stores are replaced by a log of the addresses they were given (loads return zeros),
and every address a program touches must lie inside the tensor it belongs to. The ranges sit far apart, so an
offset that wrapped in int32 (negative, or 4 GiB short) lands outside every tensor. Each test also checks, by
hand-computed offsets, that the program reached the far channels it must reach.

The fake tensors are passed by name and every failure is logged, never raised through a frame that holds them:
pytest prints the arguments of every frame of a traceback, and printing a fake tensor reads memory that is not
there.
"""
from __future__ import annotations

import ctypes
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch

pytest.importorskip("triton")
from triton.runtime import interpreter  # noqa: E402

from deeprnn_cuda.triton import cell_kernels, kernels  # noqa: E402

pytestmark = pytest.mark.skipif(not kernels.INTERPRET, reason="needs the Triton interpreter (TRITON_INTERPRET=1)")

#: distance between two fake tensors' addresses: far more than any tensor here spans
SPACING = 1 << 40
BLOCKS = kernels._INTERP_BLOCKS
F32 = 4


class FakeMemory:
    """Tensors at made-up, far-apart addresses, the accesses the interpreter made (``{tensor name: [(lowest byte
    offset, one past the highest)]}``) and what went wrong (``problems``)."""

    def __init__(self, monkeypatch) -> None:
        self.ranges: List[Tuple[int, int, str]] = []
        self.tensors: Dict[str, torch.Tensor] = {}
        self.keep: List[object] = []
        self.accesses: Dict[str, List[Tuple[int, int]]] = {}
        self.problems: List[str] = []
        builder = interpreter.interpreter_builder

        def load(ptrs, mask, other, *args):
            self._log(ptrs, mask)
            return interpreter.TensorHandle(np.zeros(ptrs.data.shape, dtype=self._np_dtype(ptrs)),
                                            ptrs.get_element_ty())

        def store(ptrs, value, mask, *args):
            self._log(ptrs, mask)

        monkeypatch.setattr(builder, "create_masked_load", load)
        monkeypatch.setattr(builder, "create_masked_store", store)

    @staticmethod
    def _np_dtype(ptrs) -> np.dtype:
        return np.dtype(interpreter._get_np_dtype(ptrs.get_element_ty()))

    def _log(self, ptrs, mask) -> None:
        addresses = ptrs.data[mask.data].astype(np.int64)
        if addresses.size == 0:
            return
        low, high = int(addresses.min()), int(addresses.max()) + self._np_dtype(ptrs).itemsize
        slot = low // SPACING - 1
        start, end, name = self.ranges[slot] if 0 <= slot < len(self.ranges) else (0, 0, "no tensor")
        if start <= low and high <= end:
            self.accesses.setdefault(name, []).append((low - start, high - start))
        else:
            self.problems.append(f"an access reaches [{low:#x}, {high:#x}), outside {name} [{start:#x}, {end:#x})")

    def tensor(self, name: str, *shape: int) -> None:
        """Add float32 tensor ``name`` of ``shape``."""
        start = SPACING * (len(self.ranges) + 1)
        nbytes = math.prod(shape) * F32
        buffer = (ctypes.c_char * nbytes).from_address(start)  # no memory behind it: only addresses
        self.keep.append(buffer)
        self.ranges.append((start, start + nbytes, name))
        self.tensors[name] = torch.frombuffer(buffer, dtype=torch.float32).view(shape)

    def call(self, fn, *args, **kwargs) -> Optional[Exception]:
        """``fn(*args, **kwargs)`` with each positional string replaced by the tensor of that name (``"p[:C]"``:
        its first C channels, ``"p[C:]"`` the others); returns what it raised."""
        def value(a):
            if not isinstance(a, str):
                return a
            name, _, part = a.partition("[")
            t = self.tensors[name]
            if part:
                lo, hi = part.rstrip("]").split(":")
                t = t[:, :, int(lo or 0):int(hi) if hi else None]
            return t

        try:
            fn(*[value(a) for a in args], **kwargs)
        except Exception as e:  # noqa: BLE001  (reported by the test, outside the frames holding fake tensors)
            return e
        return None

    def launch(self, kernel, *args, **constexprs) -> None:
        """Run program (0, 0) of ``kernel`` (see :meth:`call`); a failure goes to ``problems``."""
        error = self.call(kernel[(1, 1)], *args, **constexprs)
        if error is not None:
            self.problems.append(f"{type(error).__name__}: {str(error)[:2000]}")

    def highest(self, name: str) -> int:
        """One past the highest byte offset touched in tensor ``name``."""
        return max(high for _, high in self.accesses[name])


# C*H*W = 192 * 2048**2 > 2**29 per image: a 4C-channel image has 3.2e9 elements; T = 2, B = 1
T, B, C, H, W = 2, 1, 192, 2048, 2048
HW, CHW = H * W, C * H * W


def test_lstm_backward_reaches_every_gate_channel(monkeypatch):
    mem = FakeMemory(monkeypatch)
    for name in ("gh", "gc", "c"):
        mem.tensor(name, T, B, C, H, W)
    for name in ("c0", "dc_even", "dc_odd", "dh0"):
        mem.tensor(name, B, C, H, W)
    mem.tensor("gates", T, B, 4 * C, H, W)
    mem.tensor("da", T, B, 4 * C, H, W)
    mem.tensor("wb", 3, 3, 4 * C, C)
    args = (T, B, C, H, W, "gh", "gc", "c", "c0", "gates", "wb", "da", "dc_even", "dc_odd", "dh0")
    common = dict(KS=3, F64=False, PREC="ieee", **BLOCKS)
    # step t = 0 of T = 2: convT of dA_1 (4C channels of image 1) and the four gates of image 0
    mem.launch(cell_kernels._lstm_bwd_step_kernel, 0, *args, FINAL=False, **common)
    assert not mem.problems, mem.problems
    # dA_1's last channel: image 1 starts at 4*C*H*W, channel 4C - 1 at (4C - 1)*H*W in it
    assert mem.highest("da") > (4 * CHW + (4 * C - 1) * HW) * F32
    assert mem.highest("gates") > 3 * CHW * F32  # the g gate of image 0
    mem.launch(cell_kernels._lstm_bwd_step_kernel, 0, *args, FINAL=True, **common)
    assert not mem.problems, mem.problems
    assert mem.highest("dh0") > 0


def test_lstm_forward_reaches_every_gate_channel(monkeypatch):
    mem = FakeMemory(monkeypatch)
    for name in ("h", "c"):
        mem.tensor(name, T, B, C, H, W)
    for name in ("h0", "c0"):
        mem.tensor(name, B, C, H, W)
    mem.tensor("p", T, B, 4 * C, H, W)
    mem.tensor("gates", T, B, 4 * C, H, W)
    mem.tensor("wf", 3, 3, C, 4 * C)
    mem.launch(cell_kernels._lstm_fwd_step_kernel, 1, B, C, H, W, "h0", "c0", "p", "wf", "h", "c", "gates", KS=3,
               F64=False, PREC="ieee", **BLOCKS)
    assert not mem.problems, mem.problems
    assert mem.highest("h") > CHW * F32  # wrote h_1
    # image 1 starts at 4*C*H*W, its g gate 3*C*H*W further
    assert mem.highest("gates") > 7 * CHW * F32 and mem.highest("p") > 7 * CHW * F32


def test_gru_reaches_every_gate_channel(monkeypatch):
    mem = FakeMemory(monkeypatch)
    for name in ("h", "gh"):
        mem.tensor(name, T, B, C, H, W)
    for name in ("h0", "dh0", "dhz", "carry"):
        mem.tensor(name, B, C, H, W)
    mem.tensor("p", T, B, 3 * C, H, W)
    mem.tensor("saved", T, B, 4 * C, H, W)
    mem.tensor("dp", T, B, 3 * C, H, W)
    mem.tensor("wzr_f", 3, 3, C, 2 * C)
    mem.tensor("wn_f", 3, 3, C, C)
    mem.tensor("wzr_b", 3, 3, 2 * C, C)
    mem.tensor("wn_b", 3, 3, C, C)
    common = dict(KS=3, F64=False, PREC="ieee", **BLOCKS)
    for phase in (0, 1):
        mem.launch(cell_kernels._gru_fwd_step_kernel, 1, B, C, H, W, "h0", "p", "wzr_f", "wn_f", "h", "saved",
                   PHASE=phase, **common)
    assert not mem.problems, mem.problems
    # image 1 of saved starts at 4*C*H*W, q = r h_{t-1} is its fourth block; n of P is the third of image 1
    assert mem.highest("saved") > 7 * CHW * F32 and mem.highest("p") > 5 * CHW * F32
    for phase in (0, 1, 2):
        mem.launch(cell_kernels._gru_bwd_step_kernel, 0, T, B, C, H, W, "gh", "h", "h0", "saved", "wzr_b", "wn_b",
                   "dp", "dhz", "carry", "dh0", PHASE=phase, **common)
    assert not mem.problems, mem.problems
    # phase 0 at t = 0 reads dP_zr of image 1: channel 2C - 1 at 3*C*H*W + (2C - 1)*H*W
    assert mem.highest("dp") > (3 * CHW + (2 * C - 1) * HW) * F32
    assert mem.highest("dh0") > 0


# CBM: one C-channel image of C*H*W = 512 * 2048**2 = 2**31 elements
CBM_C = 512


def test_cbm_reaches_every_channel(monkeypatch):
    mem = FakeMemory(monkeypatch)
    C, chw = CBM_C, CBM_C * HW
    for name in ("c", "o", "r", "go", "gc", "dg", "dpr"):
        mem.tensor(name, T, B, C, H, W)
    for name in ("c0", "dc0"):
        mem.tensor(name, B, C, H, W)
    mem.tensor("p", T, B, 2 * C, H, W)  # P_r and P_x: an image stride of 2*C*H*W
    mem.tensor("wf", 3, 3, C, C)
    mem.tensor("wb", 3, 3, C, C)
    common = dict(KS=3, ACT_R=2, ACT_T=0, MERGE=0, PREC="ieee", **BLOCKS)
    mem.launch(kernels._fwd_step_kernel, 1, B, C, H, W, "c0", f"p[:{C}]", f"p[{C}:]", 2 * chw, 2 * chw, "wf", "c",
               "o", "r", **common)
    assert not mem.problems, mem.problems
    assert mem.highest("c") > chw * F32 and mem.highest("p") > 3 * chw * F32  # wrote c_1; P_x of image 1
    for final in (False, True):
        mem.launch(kernels._bwd_step_kernel, 0, T, B, C, H, W, "go", "gc", "c", "r", "wb", "dg", "dpr", "dc0",
                   FINAL=final, **common)
    assert not mem.problems, mem.problems
    assert mem.highest("dg") > (chw + (C - 1) * HW) * F32 and mem.highest("dc0") > 0


# ----------------------------------------------------------------------------------------------------------------
# rows of a step: int32 in the kernels, so every launcher refuses B*H*W >= 2**31 before it allocates or launches
# ----------------------------------------------------------------------------------------------------------------

ROW_SHAPE = dict(T=1, B=2, C=1, H=2**15, W=2**15)  # B*H*W = 2**31
_W = {4: torch.zeros(4, 1, 3, 3), 3: torch.zeros(3, 1, 3, 3), 1: torch.zeros(1, 1, 3, 3)}  # real: launchers copy them
LAUNCHES = {
    "cbm_forward": (kernels.forward_recurrence, ("pr", "px", 2**30, 2**30, _W[1], "c0", "c", "o", "r", 2, 0, 0)),
    "cbm_backward": (kernels.backward_recurrence, ("go", "gc", "c", "r", _W[1], "dg", "dpr", "dc0", 2, 0, 0)),
    "lstm_forward": (cell_kernels.lstm_forward, ("p4", _W[4], "h0", "c0", "h", "c", "gates4")),
    "lstm_backward": (cell_kernels.lstm_backward, ("gh", "gc", "c", "c0", "gates4", _W[4], "da4", "dh0", "dc0")),
    "gru_forward": (cell_kernels.gru_forward, ("p3", _W[3], "h0", "h", "saved4")),
    "gru_backward": (cell_kernels.gru_backward, ("gh", "h", "h0", "saved4", _W[3], "dp3", "dh0")),
}


@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_launchers_refuse_steps_of_2_31_pixels(launch, monkeypatch):
    mem = FakeMemory(monkeypatch)
    T, B, C, H, W = ROW_SHAPE.values()
    fn, args = LAUNCHES[launch]
    for name in (a for a in args if isinstance(a, str)):
        channels = int(name[-1]) if name[-1] in "34" else 1  # "gates4": 4C channels
        mem.tensor(name, *(() if name in ("c0", "h0", "dh0", "dc0") else (T,)), B, channels * C, H, W)
    error = mem.call(fn, *args)
    assert isinstance(error, ValueError) and "x: " in str(error) and f"B*H*W), got B={B}, H={H}, W={W}" in str(error)
    assert mem.accesses == {} and not mem.problems


def test_launchers_take_steps_just_under_2_31_pixels():
    kernels.check_rows(1, 2**31 - 1, 1)  # the last row index int32 holds
    with pytest.raises(ValueError, match="B=1, H=2147483648, W=1"):
        kernels.check_rows(1, 2**31, 1)
