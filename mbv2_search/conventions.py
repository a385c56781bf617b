"""Named conventions: where reference implementations of MobileNetV2 differ (../shared/reference/README.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Convention:
    """Where reference implementations differ (../shared/reference/README.md)."""

    name: str
    hidden_width: Literal["round", "divisible"]  # int(round(c_in * t)) or make_divisible(c_in * t)
    num_classes: int
    count_bn_params: bool  # BatchNorm weight and bias in the parameter count


CONVENTIONS: dict[str, Convention] = {
    "torchvision": Convention("torchvision", "round", 1000, count_bn_params=True),
    "tf-slim": Convention("tf-slim", "divisible", 1001, count_bn_params=False),
    "timm": Convention("timm", "divisible", 1000, count_bn_params=True),
}
