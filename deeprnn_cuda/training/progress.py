"""Progress bars on stderr that say how far a run is and how long it has left, in steps (or batches), never in
the seconds-per-second of a bar counted in seconds."""
from __future__ import annotations

import sys
from typing import Iterable, Optional

from tqdm import tqdm


def step_bar(iterable: Optional[Iterable] = None, desc: str = "", show: bool = True, total: Optional[int] = None,
             unit: str = "step") -> tqdm:
    """A bar over ``iterable`` (or ``total`` steps, updated by hand): ``n/total [elapsed<left, rate unit/s]``."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not show, leave=False, file=sys.stderr,
                dynamic_ncols=True)


def budget_bar(budget_s: float, desc: str = "", show: bool = True) -> tqdm:
    """A bar of a wall-clock training budget: its ``n`` is the seconds trained (``update`` them), its postfix says
    the step (``set_postfix_str``); it shows the share of the budget spent, then ``[elapsed<left]``."""
    return tqdm(total=budget_s, desc=desc, disable=not show, leave=False, file=sys.stderr, dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}% of the budget|{bar}| {postfix} [{elapsed}<{remaining}]")
