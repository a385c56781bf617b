"""How noisy a validation accuracy is, and when two accuracies can be told apart. Torch-free.

A validation accuracy p over n images is a binomial proportion: its standard error is sqrt(p(1-p)/n).
Two accuracies are distinguishable when they differ by at least TIE_SIGMAS combined standard errors,
sqrt(se1^2 + se2^2) (independent errors; on a shared validation set this is conservative).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

TIE_SIGMAS = 2.0
TIE_RULE = "accuracies differ by less than 2 x sqrt(se1^2 + se2^2)"


def binomial_stderr(accuracy: float, images: int) -> float:
    """The standard error of an accuracy measured on `images` images (NaN without images)."""
    return math.sqrt(accuracy * (1 - accuracy) / images) if images else float("nan")


def mean_stderr(stderrs: Sequence[float], *, std: float) -> float:
    """The standard error of a mean accuracy over seeds: the validation sample's (the root mean square of
    the runs' binomial errors: every run sees the same images, so it does not shrink) and the seeds'
    spread (std / sqrt(n)); one run: its own error."""
    runs = len(stderrs)
    sampling = sum(se * se for se in stderrs) / runs if runs else float("nan")
    spread = std * std / runs if runs > 1 and std == std else 0.0
    return math.sqrt(sampling + spread)


def distinguishable(accuracy: float, stderr: float, *, other: float, other_stderr: float) -> bool | None:
    """Whether two accuracies differ by at least TIE_SIGMAS combined standard errors; None when an error is unknown."""
    combined = math.sqrt(stderr * stderr + other_stderr * other_stderr)
    if combined != combined:  # NaN: a trial stored before errors were recorded
        return None
    return abs(accuracy - other) >= TIE_SIGMAS * combined
