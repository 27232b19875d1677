"""Overlap Coherence Training (paper section 3.2), usable from any training loop.

A sequence of length ``l`` is covered by clips of random length in ``[n_min, n_max]``, each overlapping the
one before. Clips run in *waves*: a clip is ready once the state just before its first frame is known
(the sequence start, or a frame an earlier wave computed), and all ready clips run together as one
batch. Each clip starts from the detached state, in every layer, that an earlier clip had at that time
stamp; its outputs on frames an earlier clip already produced are pulled towards those (detached)
outputs by the overlap coherence loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .states import State, cat_states, detach_state, index_state, slice_state


class Clip(NamedTuple):
    """Frames ``[start, stop)`` of a sequence."""

    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def check_clip_lengths(length: int, n_min: int, n_max: int) -> None:
    """Raise ``ValueError`` naming ``n_min``/``n_max`` unless ``2 <= n_min <= n_max <= length`` holds.

    A sequence of one frame is the exception: its only clip is itself.
    """
    if n_min > n_max:
        raise ValueError(f"n_min must be <= n_max, got n_min={n_min} > n_max={n_max}")
    if n_max > length:
        raise ValueError(f"n_max must be <= the sequence length {length}, got {n_max}")
    if n_min < 2 and length > 1:
        raise ValueError(f"n_min must be >= 2 (a clip overlaps the one before and still moves on), got {n_min}")


def sample_clips(
    length: int, n_min: int, n_max: int, overlap: float = 0.25, generator: Optional[torch.Generator] = None
) -> List[Clip]:
    """Cover ``[0, length)`` with clips of random length in ``[n_min, n_max]``, sorted by start.

    The first clip starts at 0; each next one overlaps the one before by about ``overlap`` of its own
    length (uniformly jittered by +-50%, at least one frame) and starts strictly later. A clip that would
    run past the end is cut at ``length``, or moved back to end there if cutting leaves fewer than
    ``n_min`` frames. Deterministic under ``generator``.
    """
    check_clip_lengths(length, n_min, n_max)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")

    def randint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=generator))

    clips = [Clip(0, randint(n_min, n_max))]
    while clips[-1].stop < length:
        prev = clips[-1]
        n = randint(n_min, n_max)
        jitter = 0.5 + float(torch.rand((), generator=generator))
        frames_shared = min(max(round(overlap * n * jitter), 1), min(n, len(prev)) - 1)
        start = prev.stop - frames_shared
        stop = min(start + n, length)
        if stop - start < n_min:
            start, stop = length - n_min, length
        clips.append(Clip(start, stop))
    return clips


def schedule_waves(clips: Sequence[Clip]) -> List[List[int]]:
    """Group clip indices into waves: a clip joins the first wave after the one computing frame ``start - 1``.

    Raises ``ValueError`` naming ``clips`` if some clip's initial state is never computed.
    """
    covered = set()
    remaining = list(range(len(clips)))
    waves: List[List[int]] = []
    while remaining:
        ready = [i for i in remaining if clips[i].start == 0 or clips[i].start - 1 in covered]
        if not ready:
            raise ValueError(f"clips must each start at 0 or right after a frame another clip covers, got {list(clips)}")
        waves.append(ready)
        for i in ready:
            covered.update(range(clips[i].start, clips[i].stop))
        remaining = [i for i in remaining if i not in ready]
    return waves


def overlap_coherence_loss(outputs: torch.Tensor, earlier: torch.Tensor, lam: float = 0.8) -> torch.Tensor:
    """``lam * MSE(outputs, earlier)`` on the frames two clips share; the earlier clip's side is detached."""
    if outputs.shape != earlier.shape:
        raise ValueError(f"earlier must have the shape of outputs {tuple(outputs.shape)}, got {tuple(earlier.shape)}")
    return lam * F.mse_loss(outputs, earlier.detach())


@dataclass
class ClipOutput:
    """What one clip of a wave produced.

    Attributes:
        index: the clip's position in the clip list. clip: its frames.
        outputs: ``(len(clip), B, ...)`` model outputs (with autograd history).
        overlap: ``(frames, earlier)``: local indices (into ``outputs``) of the frames an earlier wave
            already produced, and those detached earlier outputs; None where there are none.
    """

    index: int
    clip: Clip
    outputs: torch.Tensor
    overlap: Optional[Tuple[torch.Tensor, torch.Tensor]]


Model = Callable[..., Tuple[torch.Tensor, List[State]]]
"""``model(x, states0, return_states=True) -> (outputs (T, B, ...), per-layer state sequences)``."""


class OverlapRunner:
    """Run a model over the clips of a batch of sequences, wave by wave, handing states on.

    Args:
        model: see :data:`Model`; ``states0`` is a per-layer list of states or None (zeros).
        clips: the clips, e.g. from :func:`sample_clips`.
        handoff: start each clip from the earlier clip's state (True) or from zeros (ablation).
    """

    def __init__(self, model: Model, clips: Sequence[Clip], handoff: bool = True) -> None:
        self.model = model
        self.clips = list(clips)
        self.waves = schedule_waves(self.clips)
        self.handoff = handoff
        self._needed = {c.start - 1 for c in self.clips if c.start > 0}

    def run(self, x: torch.Tensor) -> Iterator[List[ClipOutput]]:
        """Yield the :class:`ClipOutput` of every clip of each wave, in wave order.

        ``x`` is ``(T, B, ...)``. Do the backward pass of a wave before asking for the next one if you
        want memory of the order of a clip; the runner only keeps detached tensors between waves.
        """
        batch = x.shape[1]
        states_at: Dict[int, List[State]] = {}
        outputs_at: Dict[int, torch.Tensor] = {}
        for wave in self.waves:
            clips = [self.clips[i] for i in wave]
            width = max(len(c) for c in clips)
            xs = torch.cat([_pad_time(x[c.start : c.stop], width) for c in clips], dim=1)
            states0 = None
            if self.handoff and clips[0].start > 0:  # a wave's clips all start at 0, or none does
                per_clip = [states_at[c.start - 1] for c in clips]
                states0 = [cat_states([s[layer] for s in per_clip]) for layer in range(len(per_clip[0]))]
            outputs, states = self.model(xs, states0, return_states=True)
            items = []
            for j, (i, clip) in enumerate(zip(wave, clips)):
                mine = outputs[: len(clip), j * batch : (j + 1) * batch]
                seen = [f for f in range(clip.start, clip.stop) if f in outputs_at]
                overlap = None
                if seen:
                    local = torch.tensor([f - clip.start for f in seen], device=x.device)
                    overlap = (local, torch.stack([outputs_at[f] for f in seen]))
                items.append(ClipOutput(i, clip, mine, overlap))
            yield items
            for j, item in enumerate(items):
                for f in range(item.clip.start, item.clip.stop):
                    outputs_at[f] = item.outputs[f - item.clip.start].detach()
                    if f in self._needed:
                        states_at[f] = [
                            detach_state(slice_state(index_state(s, f - item.clip.start), j * batch, (j + 1) * batch))
                            for s in states
                        ]


def _pad_time(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad ``x`` at the end of the time axis to ``width`` steps (causal models ignore the padding)."""
    if x.shape[0] == width:
        return x
    return torch.cat([x, x.new_zeros((width - x.shape[0],) + tuple(x.shape[1:]))])


COHERENCE_SPACES = ("probabilities", "logits")
"""What the coherence MSE of :func:`overlap_training_step` compares: softmax outputs or raw logits."""


def overlap_training_step(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    clips: Sequence[Clip],
    lam: float = 0.8,
    handoff: bool = True,
    step: Optional[Callable[[], None]] = None,
    coherence_on: str = "probabilities",
) -> Dict[str, float]:
    """Train on one batch of sequences with Overlap Coherence Training.

    ``x``: ``(T, B, ...)``; ``targets``: ``(T, B)`` class indices (``-100`` = unlabelled); the model outputs
    ``(T, B, num_classes)`` logits. A clip's loss is the cross entropy on its labelled frames plus
    ``lam`` * the coherence MSE on the frames it shares with earlier clips, between the class
    probabilities (``coherence_on="probabilities"``, bounded) or the raw logits (``"logits"``, whose
    scale grows with the model's confidence; on the cat-dog toy it destabilised one of two seeds).

    With ``step`` (the paper's scheme) every wave is one training iteration: its loss is the mean over its
    clips, and ``step()`` runs after its backward pass (clip gradients, step the optimizer, zero the
    gradients), so later clips start from states and meet outputs that earlier weights produced. Without
    ``step`` the loss is the mean over all clips and gradients accumulate for the caller to apply; then,
    with the hand-off, overlapping outputs agree exactly and the coherence term is zero.

    Returns ``loss`` (the mean clip loss), ``correct`` and ``count`` (labelled frames, over all clips).
    """
    if coherence_on not in COHERENCE_SPACES:
        raise ValueError(f"coherence_on must be one of {list(COHERENCE_SPACES)}, got {coherence_on!r}")
    space = (lambda z: z.softmax(-1)) if coherence_on == "probabilities" else (lambda z: z)
    runner = OverlapRunner(model, clips, handoff=handoff)
    total, correct, count = 0.0, 0, 0
    for wave in runner.run(x):
        loss = x.new_zeros(())
        for item in wave:
            logits = item.outputs
            tgt = targets[item.clip.start : item.clip.stop]
            labelled = tgt != -100
            clip_loss = x.new_zeros(())
            if labelled.any():
                clip_loss = F.cross_entropy(logits[labelled], tgt[labelled])
                correct += int((logits[labelled].argmax(-1) == tgt[labelled]).sum())
                count += int(labelled.sum())
            if item.overlap is not None and lam > 0:
                frames, earlier = item.overlap
                clip_loss = clip_loss + overlap_coherence_loss(space(logits[frames]), space(earlier), lam)
            loss = loss + clip_loss / (len(wave) if step is not None else len(runner.clips))
            total += float(clip_loss.detach())
        if loss.requires_grad:
            loss.backward()
            if step is not None:
                step()
    return {"loss": total / len(runner.clips), "correct": correct, "count": count}
