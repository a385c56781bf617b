"""A one-shot space: which varied knobs a weight-sharing supernet can take (each knob declares how, knobs.py),
its largest member (the supernet), its smallest, and random members for the sandwich rule. No torch.

Every elastic knob grows every layer it touches as its value grows (make_divisible is monotone), so the
member with every knob at its largest value contains every other member: its layers have at least as many
channels, blocks and kernel taps (Once-for-All, Cai et al. 2020; BigNAS, Yu et al. 2020).
"""

from __future__ import annotations

import math
import random
from typing import Any

from mbv2_search import space
from mbv2_search.config import ArchFile
from mbv2_search.conventions import CONVENTIONS
from mbv2_search.knobs import SEARCHABLE, Knobs

ELASTIC = tuple(name for name, info in SEARCHABLE.items() if info.elastic)


class NotElastic(ValueError):
    """A space that a weight-sharing supernet cannot contain: the space file's key and why, in one line."""

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


def check_elastic(arch_file: ArchFile) -> None:
    """Raise NotElastic for a varied knob no slice of a supernet gives, or a fixed one it cannot build."""
    for knob in arch_file.vary:
        if not SEARCHABLE[knob].elastic:
            raise NotElastic(
                f"vary.{knob}",
                f"cannot be elastic (a sub-network takes a supernet's first channels, first blocks, "
                f"kernel centres and input size, not another {knob}); allowed with strategy one-shot: {', '.join(ELASTIC)}",
            )
    knobs = arch_file.knobs
    if knobs.shortcut == "expansion":
        raise NotElastic(
            "knobs.shortcut",
            "got 'expansion'; allowed with strategy one-shot: 'bottleneck' or 'none' "
            "(a shortcut between expansions of different widths has no shared weights to slice)",
        )
    if CONVENTIONS[knobs.convention].projection_shortcut:
        raise NotElastic(
            "knobs.convention",
            f"got {knobs.convention!r}; allowed with strategy one-shot: a convention without "
            "projection shortcuts (which blocks have one depends on the widths)",
        )


def corner_knobs(arch_file: ArchFile, *, largest: bool, **fixed: Any) -> Knobs:
    """The member with every varied knob at its largest (the supernet) or smallest value."""
    rows = len(arch_file.table.rows)
    corner = {knob: space.extreme(knob, values, rows, largest=largest) for knob, values in arch_file.vary.items()}
    return arch_file.knobs.to_knobs(**corner, **fixed)


def random_params(arch_file: ArchFile, rng: random.Random) -> dict[str, Any]:
    """A uniformly drawn member, as Optuna parameters: each choice, step or value of each range equally likely."""
    params: dict[str, Any] = {}
    for knob, values in arch_file.vary.items():
        names = [f"{knob}_{i}" for i in range(len(arch_file.table.rows))] if values.per_row else [knob]
        for name in names:
            params[name] = _draw(knob, values, rng)
    return params


def _draw(knob: str, values: Any, rng: random.Random) -> Any:
    points = space.knob_points(knob, values)
    if points is not None:  # choices, or the steps of a range
        return rng.choice(points)
    if values.log:
        return math.exp(rng.uniform(math.log(values.low), math.log(values.high)))
    return rng.uniform(values.low, values.high)
