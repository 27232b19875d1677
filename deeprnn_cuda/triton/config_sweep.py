"""Every configuration the Triton autotuner can pick, compiled ahead of time for real GPUs (no GPU needed).

The interpreter never runs Triton's compiler, and :func:`.kernels.compile_check` compiles one configuration
per kernel. :func:`variants` lists every (kernel, configuration) a launch can reach: each single-step kernel
with each entry of :func:`.kernels._step_configs` that its pruning can keep (the cells drop the tiles that
fail :func:`.cell_kernels.fits_cells`), and each multi-step kernel with each entry of
:func:`.kernels._seq_configs` at the smallest and the largest tile its launch plan gives (the plans, not the
configurations, set ``BLOCK_M`` x ``BLOCK_N`` there). :func:`compile_variant` compiles one to a cubin
for ``sm_80`` or ``sm_90``; :func:`fits` checks its shared memory against :data:`SHARED_MEMORY_BYTES`.
``python -m benchmarks.triton_compile --sweep`` runs the whole sweep; ``tests/test_triton_configs.py`` a sample.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple

import triton

from . import cell_kernels, kernels

SHARED_MEMORY_BYTES = kernels.SHARED_MEMORY_BYTES

#: the constexprs a kernel specializes on besides the tiles: the variant with the most accumulators (ConvGRU
#: phase 0: z and r together) or the main loop (not the final dh_0 / dc_0 pass)
_EXTRA: Dict[str, dict] = {"lstm_bwd_step": {"FINAL": False},
                           "gru_fwd_step": {"PHASE": 0}, "gru_bwd_step": {"PHASE": 0}}

#: multi-step tiles (BLOCK_M, BLOCK_N), smallest and largest: BLOCK_M = np2(H*W) clamped to [16, 128] by
#: every plan; BLOCK_N = np2(C) clamped to [16, 64] (CBM, :func:`.kernels._launch_plan`) or to
#: [16, 64 // gates] (cells, :func:`.cell_kernels._plan`: ConvLSTM 16, ConvGRU 32)
_SEQ_TILES = {"fwd_seq": ((16, 16), (128, 64)), "bwd_seq": ((16, 16), (128, 64)),
              "lstm_fwd_seq": ((16, 16), (128, 16)), "lstm_bwd_seq": ((16, 16), (128, 16)),
              "gru_fwd_seq": ((16, 16), (128, 32)), "gru_bwd_seq": ((16, 16), (128, 32))}


class Variant(NamedTuple):
    """One compile: a kernel (the CBM kernels by their :mod:`.kernels` names, the cells by their
    :mod:`.cell_kernels` names) with a configuration carrying every tile size."""

    kernel: str
    config: triton.Config

    @property
    def label(self) -> str:
        k = self.config.kwargs
        return (f"{self.kernel} {k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} "
                f"w{self.config.num_warps} s{self.config.num_stages}")


def _with_tile(config: triton.Config, bm: int, bn: int) -> triton.Config:
    return triton.Config({**config.kwargs, "BLOCK_M": bm, "BLOCK_N": bn}, num_warps=config.num_warps,
                         num_stages=config.num_stages)


def _pipeline_bytes(config: triton.Config) -> int:
    k = config.kwargs
    return (k["BLOCK_M"] + k["BLOCK_N"]) * k["BLOCK_K"] * config.num_stages


def variants() -> List[Variant]:
    """Every (kernel, configuration) the launchers can run on a GPU: single-step kernels first, then the
    multi-step ones, largest tiles first, each group by decreasing pipeline size (tile x stages), so that a
    sweep cut short has compiled the configurations most likely to exceed a device's shared memory."""
    step = sorted(kernels._step_configs(), key=_pipeline_bytes, reverse=True)
    out = [Variant(name, c) for c in step for name in ("fwd_step", "bwd_step")]
    out += [Variant(name, c) for c in step if cell_kernels.fits_cells(c)
            for name in ("lstm_fwd_step", "lstm_bwd_step", "gru_fwd_step", "gru_bwd_step")]
    seq = [(name, _with_tile(c, *tiles[i])) for i in (1, 0) for name, tiles in _SEQ_TILES.items()
           for c in kernels._seq_configs()]
    out += [Variant(name, c) for name, c in sorted(seq, key=lambda v: _pipeline_bytes(v[1]), reverse=True)]
    return out


def compile_variant(variant: Variant, dt: str, prec: str, capability: int):
    """Compile ``variant`` for activations of Triton type ``dt`` with dot precision ``prec`` to a cubin for
    ``sm_<capability>`` (needs ``TRITON_INTERPRET`` unset); returns the compiled kernel."""
    extra = _EXTRA.get(variant.kernel, {})
    if variant.kernel in kernels._KERNELS_BY_NAME:
        return kernels.compile_for(variant.kernel, dt, prec, variant.config, capability=capability)
    return cell_kernels.compile_for(variant.kernel, dt, prec, variant.config, capability=capability, **extra)


def fits(shared_bytes: int, capability: int) -> bool:
    """Whether a block using ``shared_bytes`` of shared memory can launch on ``sm_<capability>``."""
    return shared_bytes <= SHARED_MEMORY_BYTES[capability]
