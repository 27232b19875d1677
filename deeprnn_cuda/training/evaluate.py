"""Test-set evaluation: loss, accuracy and per-class (for cat-dog: per-distance) accuracy."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import IGNORE_INDEX, SequenceDataset
from .progress import step_bar


@dataclass
class EvalResult:
    """Mean cross entropy and accuracy over labelled frames, and correct/total counts per target class."""

    loss: float
    accuracy: float
    correct_by_class: List[int]
    count_by_class: List[int]

    def accuracy_by_class(self) -> Dict[int, float]:
        """Accuracy of every class that occurs in the test set."""
        return {k: c / n for k, (c, n) in enumerate(zip(self.correct_by_class, self.count_by_class)) if n}

    def pooled_accuracy(self, classes: range) -> float:
        """Accuracy over all labelled frames whose target is in ``classes``."""
        correct = sum(self.correct_by_class[k] for k in classes if k < len(self.count_by_class))
        count = sum(self.count_by_class[k] for k in classes if k < len(self.count_by_class))
        return correct / count if count else float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, data: SequenceDataset, device: torch.device, batch_size: int = 64,
             progress: bool = False) -> EvalResult:
    """Run ``model`` (eval mode, whole sequences from zero state) over ``data``; ``progress`` shows a bar of the
    batches on stderr."""
    was_training = model.training
    model.eval()
    k = data.num_classes
    correct = torch.zeros(k, dtype=torch.long)
    count = torch.zeros(k, dtype=torch.long)
    loss_sum = 0.0
    for lo in step_bar(range(0, len(data), batch_size), "evaluating", progress, unit="batch"):
        x = data.frames[lo : lo + batch_size].transpose(0, 1).to(device)
        y = data.targets[lo : lo + batch_size].t().to(device)
        logits, _ = model(x)
        labelled = y != IGNORE_INDEX
        logits, y = logits[labelled], y[labelled]
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        hit = (logits.argmax(-1) == y).cpu()
        y = y.cpu()
        count += torch.bincount(y, minlength=k)
        correct += torch.bincount(y[hit], minlength=k)
    model.train(was_training)
    total = int(count.sum())
    return EvalResult(loss_sum / total, int(correct.sum()) / total, correct.tolist(), count.tolist())
