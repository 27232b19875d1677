"""Helpers for recurrent states that are a tensor (CBM) or a tuple of tensors (ConvLSTM's ``(h, c)``)."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

State = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


def _map(fn, state: State) -> State:
    if isinstance(state, torch.Tensor):
        return fn(state)
    return tuple(fn(s) for s in state)


def index_state(states: State, t: int) -> State:
    """Step ``t`` of a state sequence ``(T, B, ...)``."""
    return _map(lambda s: s[t], states)


def slice_state(state: State, lo: int, hi: int) -> State:
    """Samples ``lo:hi`` of a batched state ``(B, ...)``."""
    return _map(lambda s: s[lo:hi], state)


def detach_state(state: State) -> State:
    """The state without autograd history."""
    return _map(lambda s: s.detach(), state)


def cat_states(states: Sequence[State]) -> State:
    """Concatenate batched states along the batch axis."""
    if isinstance(states[0], torch.Tensor):
        return torch.cat(list(states))
    return tuple(torch.cat([s[k] for s in states]) for k in range(len(states[0])))
