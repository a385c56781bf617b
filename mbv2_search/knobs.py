"""The architecture knobs, each declared once: type, default, allowed values, help, searchability.

Validation (`check_knobs`), the study schema (config.py), a space's `vary:` rules (space.py) and the
CLI flags (cli/flags.py) are all derived from the field declarations of `Knobs`. No torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from mbv2_search.conventions import CONVENTIONS

KERNELS = (3, 5, 7)
STRIDES = (1, 2)


class ArchError(ValueError):
    """A knob or table value outside what a MobileNetV2 variant allows."""

    def __init__(self, field_name: str, value: object, allowed: str) -> None:
        self.field_name, self.value, self.allowed = field_name, value, allowed
        super().__init__(f"{field_name}: got {value!r}; allowed: {allowed}")


@dataclass(frozen=True)
class KnobInfo:
    """What a knob accepts. `per_row`: one value for every row, or a comma list of one per row."""

    help: str
    kind: type  # float, int, str or bool: the type of one value
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # (low, ... rather than [low, ...
    high_open: bool = False  # ..., high) rather than ..., high]
    per_row: bool = False
    searchable: bool = False
    optional: bool = False  # None allowed: the table's or the convention's value
    cost: Literal["rises", "falls", "none"] = "rises"  # how MAdds move as the value grows (space.py)
    flag: str = ""  # CLI flag when not --<name-with-dashes>; '/' gives an on/off pair
    since: str = "0.1.0"  # the version that added it: a later knob left at its default leaves the fingerprint alone
    elastic: str = ""  # how a one-shot supernet's sub-networks take it (elastic.py); "": it cannot vary there

    def allowed(self) -> str:
        """What a value may be, in words, for error messages."""
        if self.choices:
            words = [repr(c) if isinstance(c, str) else str(c) for c in self.choices]
            return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
        if self.kind is bool:
            return "true or false"
        noun = "an integer" if self.kind is int else "a number"
        if self.kind is int:
            return (
                f"{noun} {self.low:,}..{self.high:,}"
                if abs(self.high) > 10**6
                else f"{noun} {self.low:g}..{self.high:g}"
            )
        return f"{noun} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def accepts(self, value: object) -> bool:
        """Whether one value (one row's, for a per-row knob) is allowed."""
        if self.choices:
            return isinstance(value, self.kind) and not isinstance(value, bool) and value in self.choices
        if self.kind is bool:
            return isinstance(value, bool)
        ok_type = _is_int(value) if self.kind is int else _is_number(value)
        if not ok_type:
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def knob(default: Any, **info: Any) -> Any:
    """A Knobs field carrying its KnobInfo."""
    return dataclasses.field(default=default, metadata={"knob": KnobInfo(**info)})


PerRow = Any  # one value for every row, or a tuple with one value per row


@dataclass(frozen=True)
class Knobs:
    """The scaling knobs applied to a base table; every field has the paper's default."""

    width: float = knob(
        1.0,
        help="Width multiplier (paper: 0.35..1.4).",
        kind=float,
        low=0,
        high=4,
        low_open=True,
        searchable=True,
        elastic="the first channels of every layer",
    )
    resolution: int = knob(
        224,
        help="Input resolution in pixels (paper: 96..224).",
        kind=int,
        low=1,
        high=2048,
        searchable=True,
        elastic="the input size",
    )
    expansion: PerRow = knob(
        None,
        help="Expansion factor t for rows with t > 1, or one value per row (comma-separated).",
        kind=float,
        low=1,
        high=32,
        per_row=True,
        searchable=True,
        elastic="the first channels of the hidden width",
        optional=True,
    )
    depth: float = knob(
        1.0,
        help="Depth multiplier on each row's repeats n.",
        kind=float,
        low=0,
        high=8,
        low_open=True,
        searchable=True,
        elastic="the first blocks of each row",
    )
    depth_rounding: str = knob(
        "ceil", help="Rounding of scaled repeats.", kind=str, choices=("ceil", "round"), cost="none"
    )
    fix_first_last: bool = knob(
        False,
        help="Depth scaling leaves the first and last rows alone.",
        kind=bool,
        flag="--fix-first-last/--scale-first-last",
        cost="none",
    )
    stem_stride: int | None = knob(
        None,
        help="Stride of the stem conv (1 for CIFAR-size inputs).",
        kind=int,
        choices=STRIDES,
        searchable=True,
        optional=True,
        cost="falls",
    )
    strides: PerRow = knob(
        None,
        help="Stride of each row (1 or 2): one for every row, or one per row, e.g. 1,1,2,2,1,2,1 for CIFAR.",
        kind=int,
        choices=STRIDES,
        per_row=True,
        searchable=True,
        optional=True,
        cost="falls",
    )
    kernels: PerRow = knob(
        None,
        help="Depthwise kernel size (3, 5 or 7): one for every row, or one per row, comma-separated.",
        kind=int,
        choices=KERNELS,
        per_row=True,
        searchable=True,
        elastic="the centre of the largest kernel",
        optional=True,
    )
    row_widths: PerRow = knob(
        None,
        help="Multiplier on each row's channels c (one make_divisible rounding of c x width x it): one for every row, or one per row.",
        kind=float,
        low=0,
        high=4,
        low_open=True,
        per_row=True,
        searchable=True,
        elastic="the first channels of the row's layers",
        optional=True,
        since="0.2.0",
    )
    repeats: PerRow = knob(
        None,
        help="Repeats n of each row, before the depth multiplier: one for every row, or one per row.",
        kind=int,
        low=1,
        high=32,
        per_row=True,
        searchable=True,
        elastic="the first blocks of each row",
        optional=True,
        since="0.2.0",
    )
    se_ratio: float = knob(
        0.0,
        help="Squeeze-excite after each depthwise conv: squeeze width = hidden x ratio (0: none).",
        kind=float,
        low=0,
        high=1,
        searchable=True,
        elastic="the first channels of the squeeze",
        since="0.2.0",
    )
    num_classes: int | None = knob(
        None,
        help="Number of classes (default: the convention's, 1000 or 1001).",
        kind=int,
        low=1,
        high=100_000,
        optional=True,
        flag="--classes",
    )
    convention: str = knob(
        "torchvision", help="Rounding and counting convention.", kind=str, choices=tuple(CONVENTIONS), cost="none"
    )
    head_rule: str = knob(
        "keep",
        help="keep: head 1280 for width < 1 (reference); scale: 1280 x width.",
        kind=str,
        choices=("keep", "scale"),
        searchable=True,
        cost="none",
    )
    fix_stem_head: bool = knob(
        False,
        help="Stem and head channels not scaled by width.",
        kind=bool,
        flag="--fix-stem-head/--scale-stem-head",
        cost="none",
    )
    bottleneck_activation: str = knob(
        "linear",
        help="Paper Fig. 6a ablation: linear (default) or ReLU6 bottleneck.",
        kind=str,
        choices=("linear", "relu6"),
        searchable=True,
        cost="none",
    )
    shortcut: str = knob(
        "bottleneck",
        help="Paper Fig. 6b ablation: shortcut placement.",
        kind=str,
        choices=("bottleneck", "expansion", "none"),
        searchable=True,
        cost="none",
    )
    dropout: float | None = knob(
        None,
        help="Dropout before the classifier (default: the convention's: 0.2, none for tonylins, shicai, neuleaf).",
        kind=float,
        low=0,
        high=1,
        high_open=True,
        optional=True,
        cost="none",
    )

    def as_dict(self) -> dict[str, object]:
        """Plain-type dict (tuples as lists) for YAML, JSON and Optuna attrs."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


KNOBS: dict[str, KnobInfo] = {f.name: f.metadata["knob"] for f in dataclasses.fields(Knobs)}
SEED = KnobInfo(
    help="Training seed, so a study can repeat each variant.", kind=int, low=-(2**63), high=2**63 - 1, cost="none"
)
# What a space's `vary:` may list: the searchable knobs, and the training seed (not an architecture knob).
SEARCHABLE: dict[str, KnobInfo] = {**{n: i for n, i in KNOBS.items() if i.searchable}, "seed": SEED}


def per_row_values(value: Any, n_rows: int) -> tuple | None:
    """A per-row knob as one value per row (None stays None; one value is every row's)."""
    if value is None:
        return None
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n_rows


def check_knobs(knobs: Knobs, n_rows: int) -> None:
    """Raise ArchError for the first knob value its declaration does not allow."""
    for name, info in KNOBS.items():
        value = getattr(knobs, name)
        if value is None and info.optional:
            continue
        if info.per_row and isinstance(value, (tuple, list)):
            if len(value) != n_rows:
                raise ArchError(name, list(value), f"one value for every row, or {n_rows} values, one per row")
            for index, item in enumerate(value):
                if not info.accepts(item):
                    raise ArchError(f"{name}[{index}]", item, info.allowed())
        elif not info.accepts(value):
            raise ArchError(name, value, info.allowed())
