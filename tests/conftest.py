"""Shared test helpers."""

from __future__ import annotations

import random
import signal

import pytest

from mbv2_search.conventions import CONVENTIONS
from mbv2_search.knobs import Knobs


def random_knobs(rng: random.Random, **fixed: object) -> Knobs:
    """A random but valid variant at a small resolution (fast to build and count)."""
    strides = [rng.choice([1, 2]) for _ in range(7)]
    stem_stride = rng.choice([1, 2])
    total = stem_stride * 2 ** sum(s == 2 for s in strides)
    values = {
        "width": rng.choice([0.25, 0.35, 0.5, 0.6, 0.75, 1.0, 1.3, 1.4]),
        "resolution": max(total, rng.choice([16, 24, 32, 40, 48, 64])),
        "expansion": rng.choice([None, rng.choice([2, 3, 4, 6]), tuple(rng.choice([1, 3, 6]) for _ in range(7))]),
        "depth": rng.choice([0.5, 0.75, 1.0, 1.25]),
        "depth_rounding": rng.choice(["ceil", "round"]),
        "fix_first_last": rng.random() < 0.5,
        "stem_stride": stem_stride,
        "strides": tuple(strides),
        "kernels": tuple(rng.choice([3, 5, 7]) for _ in range(7)),
        "num_classes": rng.choice([10, 100, 1000]),
        "convention": rng.choice(list(CONVENTIONS)),
        "head_rule": rng.choice(["keep", "scale"]),
        "fix_stem_head": rng.random() < 0.2,
        "row_widths": rng.choice(
            [None, rng.choice([0.5, 1.5]), tuple(rng.choice([0.5, 0.75, 1.0, 1.5]) for _ in range(7))]
        ),
        "repeats": rng.choice([None, rng.choice([1, 2]), tuple(rng.choice([1, 2, 3, 4]) for _ in range(7))]),
        "se_ratio": rng.choice([0.0, 0.0, 0.125, 0.25]),
        "bottleneck_activation": rng.choice(["linear", "relu6"]),
        "shortcut": rng.choice(["bottleneck", "bottleneck", "expansion", "none"]),
    }
    values.update(fixed)
    return Knobs(**values)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1801_04381)


@pytest.fixture
def terminal_sigint():
    """SIGINT as an interactive terminal leaves it: a test runner started in the background inherits it
    ignored, and an ignored SIGINT stays ignored (in our processes as in Python's own)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
