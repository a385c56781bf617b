"""Accuracy of given weights on a dataset split: the model in eval mode, top-1 and top-5, no training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Evaluation:
    """Correct predictions on one split."""

    split: str
    images: int
    correct: int
    correct_top5: int

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy."""
        return self.correct / self.images

    @property
    def top5(self) -> float:
        """Top-5 accuracy (top-1 where there are 5 classes or fewer)."""
        return self.correct_top5 / self.images


@torch.inference_mode()
def evaluate(model: Any, data: Any, *, split: str, device: torch.device, batch_size: int = 256) -> Evaluation:
    """Count correct top-1 and top-5 predictions of a model on a split (the batches training validates on)."""
    model = model.eval().to(device)
    images = correct = correct_top5 = 0
    for batch, labels in data.loader(split, batch_size):
        logits = model(batch.to(device))
        labels = labels.to(device)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct += int((top[:, 0] == labels).sum())
        correct_top5 += int((top == labels[:, None]).any(1).sum())
        images += len(labels)
    return Evaluation(split, images, correct, correct_top5)
