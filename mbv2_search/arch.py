"""ArchSpec: the one description of a MobileNetV2 variant, and the knobs that produce it.

Pure data, no torch. The builder (model.py), the cost model (cost.py) and the reports all read the
resolved channel widths here; nothing else re-derives them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

DepthRounding = Literal["ceil", "round"]
HeadRule = Literal["keep", "scale"]
BottleneckActivation = Literal["linear", "relu6"]
Shortcut = Literal["bottleneck", "expansion", "none"]

KERNELS = (3, 5, 7)
STRIDES = (1, 2)


class ArchError(ValueError):
    """A knob or table value outside what a MobileNetV2 variant allows."""

    def __init__(self, field_name: str, value: object, allowed: str) -> None:
        self.field_name, self.value, self.allowed = field_name, value, allowed
        super().__init__(f"{field_name}: got {value!r}; allowed: {allowed}")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round to the nearest multiple of divisor, never below min_value nor 10% below value.

    The helper shared by torchvision, TF-Slim and timm (tf-slim `_make_divisible`).
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # the 10% guard: rounding down may not lose more than 10%
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class Row:
    """One row of the block table (paper Table 2): expansion t, channels c, repeats n, stride s, kernel k."""

    t: float
    c: int
    n: int
    s: int
    k: int = 3


@dataclass(frozen=True)
class Table:
    """A base block table: stem, bottleneck rows and head, before any scaling."""

    rows: tuple[Row, ...]
    stem_channels: int = 32
    stem_stride: int = 2
    head_channels: int = 1280


# Paper Table 2 (Sandler et al. 2018, section 4).
MOBILENET_V2 = Table(
    rows=(
        Row(1, 16, 1, 1),
        Row(6, 24, 2, 2),
        Row(6, 32, 3, 2),
        Row(6, 64, 4, 2),
        Row(6, 96, 3, 1),
        Row(6, 160, 3, 2),
        Row(6, 320, 1, 1),
    )
)


@dataclass(frozen=True)
class Convention:
    """Where reference implementations differ (../shared/reference/README.md)."""

    name: str
    hidden_width: Literal["round", "divisible"]  # int(round(c_in * t)) or make_divisible(c_in * t)
    num_classes: int
    count_bn_params: bool  # BatchNorm weight and bias in the parameter count
    expand_t1: bool = False  # a 1x1 expansion conv even when t == 1


CONVENTIONS: dict[str, Convention] = {
    "torchvision": Convention("torchvision", "round", 1000, count_bn_params=True),
    "tf-slim": Convention("tf-slim", "divisible", 1001, count_bn_params=False),
    "timm": Convention("timm", "divisible", 1000, count_bn_params=True),
}


@dataclass(frozen=True)
class Knobs:
    """The scaling knobs applied to a base table; every field has the paper's default."""

    width: float = 1.0
    resolution: int = 224
    expansion: float | tuple[float, ...] | None = None  # None: the table's t; one value: rows with t > 1
    depth: float = 1.0
    depth_rounding: DepthRounding = "ceil"
    fix_first_last: bool = False  # depth scaling leaves the first and last rows alone (timm)
    stem_stride: int | None = None  # None: the table's
    strides: tuple[int, ...] | None = None  # one per row; None: the table's
    kernels: tuple[int, ...] | None = None  # one per row; None: the table's
    num_classes: int | None = None  # None: the convention's
    convention: str = "torchvision"
    head_rule: HeadRule = "keep"  # keep: 1280 * max(1, width) as torchvision/TF-Slim; scale: 1280 * width
    fix_stem_head: bool = False  # stem and head channels not scaled by width
    bottleneck_activation: BottleneckActivation = "linear"  # paper Fig. 6a ablation
    shortcut: Shortcut = "bottleneck"  # paper Fig. 6b ablation
    dropout: float = 0.2

    def as_dict(self) -> dict[str, object]:
        """Plain-type dict (tuples as lists) for YAML, JSON and Optuna attrs."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Block:
    """One inverted residual block with every width resolved."""

    row: int
    t: float
    in_channels: int
    hidden_channels: int
    out_channels: int
    stride: int
    kernel: int
    in_size: int
    expand: bool  # has the 1x1 expansion conv
    residual: bool  # shortcut between bottlenecks (input + output)
    expansion_residual: bool = False  # shortcut between expansions (paper Fig. 6b)

    @property
    def out_size(self) -> int:
        """Output side length ('SAME' padding: ceil(in / stride))."""
        return -(-self.in_size // self.stride)


@dataclass(frozen=True)
class ArchSpec:
    """A fully resolved MobileNetV2 variant: the single source of truth for builder and costs."""

    resolution: int
    stem_channels: int
    stem_stride: int
    blocks: tuple[Block, ...]
    head_channels: int
    num_classes: int
    convention: str
    bottleneck_activation: BottleneckActivation
    shortcut: Shortcut
    dropout: float
    knobs: Knobs = field(compare=False)
    table: Table = field(compare=False)
    in_channels: int = 3

    @property
    def stem_size(self) -> int:
        """Side length after the stem conv."""
        return -(-self.resolution // self.stem_stride)

    @property
    def final_size(self) -> int:
        """Side length of the head's input."""
        return self.blocks[-1].out_size if self.blocks else self.stem_size

    @property
    def count_bn_params(self) -> bool:
        """Whether this convention counts BatchNorm weight and bias as parameters."""
        return CONVENTIONS[self.convention].count_bn_params


def _check(name: str, value: object, ok: bool, allowed: str) -> None:
    if not ok:
        raise ArchError(name, value, allowed)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_table(table: Table) -> None:
    """Raise ArchError for any table value a MobileNetV2 cannot have."""
    _check("rows", len(table.rows), 1 <= len(table.rows) <= 32, "1 to 32 rows")
    _check(
        "stem.c",
        table.stem_channels,
        _is_int(table.stem_channels) and 1 <= table.stem_channels <= 4096,
        "an integer 1..4096",
    )
    _check("stem.s", table.stem_stride, table.stem_stride in STRIDES, "1 or 2")
    _check(
        "head.c",
        table.head_channels,
        _is_int(table.head_channels) and 1 <= table.head_channels <= 16384,
        "an integer 1..16384",
    )
    for i, row in enumerate(table.rows):
        _check(f"rows[{i}].t", row.t, _is_number(row.t) and 1 <= row.t <= 32, "a number 1..32")
        _check(f"rows[{i}].c", row.c, _is_int(row.c) and 1 <= row.c <= 4096, "an integer 1..4096")
        _check(f"rows[{i}].n", row.n, _is_int(row.n) and 1 <= row.n <= 32, "an integer 1..32")
        _check(f"rows[{i}].s", row.s, row.s in STRIDES, "1 or 2")
        _check(f"rows[{i}].k", row.k, row.k in KERNELS, "3, 5 or 7")


def _per_row(name: str, values: tuple | None, n_rows: int) -> None:
    if values is not None:
        _check(name, list(values), len(values) == n_rows, f"{n_rows} values, one per row")


def _validate_knobs(knobs: Knobs, n_rows: int) -> None:
    _check("width", knobs.width, _is_number(knobs.width) and 0 < knobs.width <= 4, "a number in (0, 4]")
    _check(
        "resolution",
        knobs.resolution,
        _is_int(knobs.resolution) and 1 <= knobs.resolution <= 2048,
        "an integer 1..2048",
    )
    _check("depth", knobs.depth, _is_number(knobs.depth) and 0 < knobs.depth <= 8, "a number in (0, 8]")
    _check("depth_rounding", knobs.depth_rounding, knobs.depth_rounding in ("ceil", "round"), "'ceil' or 'round'")
    _check("convention", knobs.convention, knobs.convention in CONVENTIONS, ", ".join(CONVENTIONS))
    _check("head_rule", knobs.head_rule, knobs.head_rule in ("keep", "scale"), "'keep' or 'scale'")
    _check(
        "bottleneck_activation",
        knobs.bottleneck_activation,
        knobs.bottleneck_activation in ("linear", "relu6"),
        "'linear' or 'relu6'",
    )
    _check(
        "shortcut",
        knobs.shortcut,
        knobs.shortcut in ("bottleneck", "expansion", "none"),
        "'bottleneck', 'expansion' or 'none'",
    )
    _check("dropout", knobs.dropout, _is_number(knobs.dropout) and 0 <= knobs.dropout < 1, "a number in [0, 1)")
    if knobs.num_classes is not None:
        _check(
            "num_classes",
            knobs.num_classes,
            _is_int(knobs.num_classes) and 1 <= knobs.num_classes <= 100_000,
            "an integer 1..100000",
        )
    if knobs.stem_stride is not None:
        _check("stem_stride", knobs.stem_stride, knobs.stem_stride in STRIDES, "1 or 2")
    if isinstance(knobs.expansion, tuple):
        _per_row("expansion", knobs.expansion, n_rows)
        for i, t in enumerate(knobs.expansion):
            _check(f"expansion[{i}]", t, _is_number(t) and 1 <= t <= 32, "a number 1..32")
    elif knobs.expansion is not None:
        _check(
            "expansion", knobs.expansion, _is_number(knobs.expansion) and 1 <= knobs.expansion <= 32, "a number 1..32"
        )
    _per_row("strides", knobs.strides, n_rows)
    for i, s in enumerate(knobs.strides or ()):
        _check(f"strides[{i}]", s, s in STRIDES, "1 or 2")
    _per_row("kernels", knobs.kernels, n_rows)
    for i, k in enumerate(knobs.kernels or ()):
        _check(f"kernels[{i}]", k, k in KERNELS, "3, 5 or 7")


def scaled_repeats(n: int, depth: float, rounding: DepthRounding) -> int:
    """Repeats of a row under a depth multiplier (timm's depth truncation), at least 1."""
    scaled = math.ceil(n * depth) if rounding == "ceil" else round(n * depth)
    return max(1, int(scaled))


def _resolved_rows(table: Table, knobs: Knobs) -> list[Row]:
    """Apply the per-row knobs (expansion, depth, stride, kernel) to the table's rows."""
    rows = []
    last = len(table.rows) - 1
    for i, row in enumerate(table.rows):
        t = row.t
        if isinstance(knobs.expansion, tuple):
            t = knobs.expansion[i]
        elif knobs.expansion is not None and row.t > 1:
            t = knobs.expansion
        fixed = knobs.fix_first_last and i in (0, last)
        n = row.n if fixed else scaled_repeats(row.n, knobs.depth, knobs.depth_rounding)
        s = knobs.strides[i] if knobs.strides else row.s
        k = knobs.kernels[i] if knobs.kernels else row.k
        rows.append(Row(t, row.c, n, s, k))
    return rows


def hidden_width(in_channels: int, t: float, convention: Convention) -> int:
    """Width of a block's expansion under the convention's rounding rule."""
    if convention.hidden_width == "round":
        return int(round(in_channels * t))
    return make_divisible(in_channels * t)


def build_spec(knobs: Knobs | None = None, table: Table = MOBILENET_V2) -> ArchSpec:
    """Resolve knobs on a base table into an ArchSpec, raising ArchError on any bad value.

    Args:
        knobs: scaling knobs; defaults give MobileNetV2 1.0 at 224 under the torchvision convention.
        table: the base block table (paper Table 2 by default).
    """
    knobs = knobs or Knobs()
    validate_table(table)
    _validate_knobs(knobs, len(table.rows))
    convention = CONVENTIONS[knobs.convention]
    width = knobs.width
    stem_stride = knobs.stem_stride or table.stem_stride
    rows = _resolved_rows(table, knobs)

    # every stride-2 layer needs at least a 2x2 input, else it downsamples nothing
    total_stride = stem_stride * math.prod(r.s for r in rows)
    minimum = total_stride // 2 + 1 if total_stride > 1 else 1
    _check(
        "resolution",
        knobs.resolution,
        knobs.resolution >= minimum,
        f">= {minimum} (total stride {total_stride}: each stride-2 layer needs a 2x2 input)",
    )

    stem = table.stem_channels if knobs.fix_stem_head else make_divisible(table.stem_channels * width)
    if knobs.fix_stem_head:
        head = table.head_channels
    else:
        head_scale = max(1.0, width) if knobs.head_rule == "keep" else width
        head = make_divisible(table.head_channels * head_scale)

    blocks: list[Block] = []
    in_channels, size = stem, -(-knobs.resolution // stem_stride)
    for row_index, row in enumerate(rows):
        out_channels = make_divisible(row.c * width)
        for repeat in range(row.n):
            stride = row.s if repeat == 0 else 1
            expand = row.t != 1 or convention.expand_t1
            hidden = hidden_width(in_channels, row.t, convention) if expand else in_channels
            block = Block(
                row=row_index,
                t=row.t,
                in_channels=in_channels,
                hidden_channels=hidden,
                out_channels=out_channels,
                stride=stride,
                kernel=row.k,
                in_size=size,
                expand=expand,
                residual=knobs.shortcut == "bottleneck" and stride == 1 and in_channels == out_channels,
            )
            blocks.append(block)
            in_channels, size = out_channels, block.out_size
    if knobs.shortcut == "expansion":
        blocks = _with_expansion_shortcuts(blocks)

    return ArchSpec(
        resolution=knobs.resolution,
        stem_channels=stem,
        stem_stride=stem_stride,
        blocks=tuple(blocks),
        head_channels=head,
        num_classes=knobs.num_classes or convention.num_classes,
        convention=convention.name,
        bottleneck_activation=knobs.bottleneck_activation,
        shortcut=knobs.shortcut,
        dropout=knobs.dropout,
        knobs=knobs,
        table=table,
    )


def _with_expansion_shortcuts(blocks: list[Block]) -> list[Block]:
    """Mark blocks whose expansion can add the previous block's expansion (same shape; Fig. 6b)."""
    marked = [blocks[0]]
    for previous, block in zip(blocks, blocks[1:]):
        same_shape = (
            previous.expand
            and block.expand
            and previous.stride == 1
            and previous.hidden_channels == block.hidden_channels
        )
        marked.append(replace(block, expansion_residual=same_shape))
    return marked
