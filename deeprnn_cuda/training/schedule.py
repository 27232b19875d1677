"""Temporal Dropout schedule: the TD rate by epoch, applied to every CBM module of a model."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch.nn as nn


class TDSchedule:
    """Piecewise constant TD rate: ``rates[0]`` from epoch 0, ``rates[i]`` from epoch ``milestones[i-1]``.

    The default is the paper's: 1.0, then 0.8 after 2 epochs, then 0.5 after 2 more.
    """

    def __init__(self, rates: Sequence[float] = (1.0, 0.8, 0.5), milestones: Sequence[int] = (2, 4)) -> None:
        rates, milestones = tuple(float(r) for r in rates), tuple(int(m) for m in milestones)
        if not rates:
            raise ValueError("rates must hold at least one TD rate")
        if any(not 0.0 <= r <= 1.0 for r in rates):
            raise ValueError(f"rates must all be in [0, 1], got {list(rates)}")
        if len(milestones) != len(rates) - 1:
            raise ValueError(
                f"milestones must have len(rates) - 1 = {len(rates) - 1} epochs, got {len(milestones)}: {list(milestones)}"
            )
        if any(m < 1 for m in milestones) or list(milestones) != sorted(set(milestones)):
            raise ValueError(f"milestones must be strictly increasing epochs >= 1, got {list(milestones)}")
        self.rates: Tuple[float, ...] = rates
        self.milestones: Tuple[int, ...] = milestones

    @classmethod
    def parse(cls, spec: str) -> "TDSchedule":
        """Parse ``"1.0,0.8@2,0.5@4"`` (rate, then ``rate@epoch`` for each change); ``"0.5"`` is constant."""
        rates, milestones = [], []
        try:
            for i, part in enumerate(p.strip() for p in spec.split(",")):
                if i == 0:
                    rates.append(float(part))
                else:
                    rate, epoch = part.split("@")
                    rates.append(float(rate))
                    milestones.append(int(epoch))
        except ValueError:
            raise ValueError(f"td schedule must look like '1.0,0.8@2,0.5@4' (rate, then rate@epoch), got {spec!r}") from None
        return cls(rates, milestones)

    def rate(self, epoch: int) -> float:
        """The TD rate during ``epoch`` (0-based)."""
        return self.rates[sum(epoch >= m for m in self.milestones)]

    def apply(self, model: nn.Module, epoch: int) -> float:
        """Set ``td_rate`` on every ``CBM`` module in ``model``; return the rate."""
        from ..modules import CBM

        rate = self.rate(epoch)
        for module in model.modules():
            if isinstance(module, CBM):
                module.td_rate = rate
        return rate

    def __repr__(self) -> str:
        steps = [f"{self.rates[0]}"] + [f"{r}@{m}" for r, m in zip(self.rates[1:], self.milestones)]
        return f"TDSchedule('{','.join(steps)}')"
