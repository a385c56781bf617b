"""ArchSpec: the one description of a MobileNetV2 variant, and the knobs that produce it.

Pure data, no torch. The builder (model.py), the cost model (cost.py) and the reports all read the
resolved channel widths here; nothing else re-derives them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any

from mbv2_search.conventions import CONVENTIONS, Convention, make_divisible
from mbv2_search.knobs import KNOBS, ArchError, KnobInfo, Knobs, check_knobs, per_row_values


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
    projection: bool = False  # a 1x1 conv carries the input to the output (neuleaf's ex_dim)
    se_channels: int = 0  # squeeze width of a squeeze-excite after the depthwise conv; 0: none

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
    bottleneck_activation: str
    shortcut: str
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
    def rules(self) -> Convention:
        """The convention's rules (activation, classifier, padding)."""
        return CONVENTIONS[self.convention]

    @property
    def count_bn_params(self) -> bool:
        """Whether this convention counts BatchNorm weight and bias as parameters."""
        return self.rules.count_bn_params


def _check(name: str, value: object, ok: bool, allowed: str) -> None:
    if not ok:
        raise ArchError(name, value, allowed)


# A table's t, n, s and k obey the knobs that replace them (expansion, repeats, strides, kernels).
_ROW_RULES = {"t": KNOBS["expansion"], "n": KNOBS["repeats"], "s": KNOBS["strides"], "k": KNOBS["kernels"]}
_CHANNELS = KnobInfo(help="", kind=int, low=1, high=4096)


@functools.lru_cache(maxsize=64)  # a search checks the same few tables thousands of times
def validate_table(table: Table) -> None:
    """Raise ArchError for any table value a MobileNetV2 cannot have."""
    _check("rows", len(table.rows), 1 <= len(table.rows) <= 32, "1 to 32 rows")
    checks = [("stem.c", table.stem_channels, _CHANNELS), ("stem.s", table.stem_stride, KNOBS["stem_stride"])]
    checks.append(("head.c", table.head_channels, replace(_CHANNELS, high=16384)))
    for i, row in enumerate(table.rows):
        checks += [(f"rows[{i}].{name}", getattr(row, name), rule) for name, rule in _ROW_RULES.items()]
        checks.append((f"rows[{i}].c", row.c, _CHANNELS))
    for name, value, rule in checks:
        if not rule.accepts(value):
            raise ArchError(name, value, rule.allowed())


def scaled_repeats(n: int, depth: float, *, rounding: str) -> int:
    """Repeats of a row under a depth multiplier (timm's depth truncation), at least 1."""
    scaled = math.ceil(n * depth) if rounding == "ceil" else round(n * depth)
    return max(1, int(scaled))


def _resolved_rows(table: Table, knobs: Knobs) -> list[tuple[Row, float]]:
    """Each table row with the per-row knobs applied, and its channel multiplier (width x row width)."""
    count = len(table.rows)
    expansion = knobs.expansion if isinstance(knobs.expansion, (tuple, list)) else None
    repeats = per_row_values(knobs.repeats, count)
    strides = per_row_values(knobs.strides, count)
    kernels = per_row_values(knobs.kernels, count)
    row_widths = per_row_values(knobs.row_widths, count) or (1.0,) * count
    rows = []
    for i, row in enumerate(table.rows):
        t = expansion[i] if expansion else row.t
        if expansion is None and knobs.expansion is not None and row.t > 1:  # one value: rows with t > 1
            t = knobs.expansion
        n = repeats[i] if repeats else row.n
        if not (knobs.fix_first_last and i in (0, count - 1)):
            n = scaled_repeats(n, knobs.depth, rounding=knobs.depth_rounding)
        resolved = Row(t, row.c, n, strides[i] if strides else row.s, kernels[i] if kernels else row.k)
        rows.append((resolved, knobs.width * row_widths[i]))
    return rows


def hidden_width(in_channels: int, t: float, *, convention: Convention) -> int:
    """Width of a block's expansion under the convention's rounding rule."""
    if convention.hidden_width == "round":
        return int(round(in_channels * t))
    if convention.hidden_width == "floor":  # tonylins: int(inp * expand_ratio)
        return int(in_channels * t)
    return make_divisible(in_channels * t)


def build_spec(knobs: Knobs | None = None, table: Table | None = None) -> ArchSpec:
    """Resolve knobs on a base table into an ArchSpec, raising ArchError on any bad value.

    Args:
        knobs: scaling knobs; defaults give MobileNetV2 1.0 at 224 under the torchvision convention.
        table: the base block table (default: paper Table 2, with the convention's strides where it has its own).
    """
    knobs = knobs or Knobs()
    check_knobs(knobs, len(table.rows) if table else len(MOBILENET_V2.rows))
    convention = CONVENTIONS[knobs.convention]
    table = table or default_table(convention)
    validate_table(table)
    stem_stride = knobs.stem_stride or table.stem_stride
    rows = _resolved_rows(table, knobs)
    _check_resolution(knobs.resolution, stem_stride * math.prod(row.s for row, _ in rows))
    stem = table.stem_channels
    if convention.scale_stem and not knobs.fix_stem_head:
        stem = convention.round_channels(stem * knobs.width)
    head = table.head_channels
    if not knobs.fix_stem_head:
        head = convention.round_channels(head * (max(1.0, knobs.width) if knobs.head_rule == "keep" else knobs.width))
    blocks = _blocks(rows, knobs, convention, stem, -(-knobs.resolution // stem_stride))
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
        dropout=convention.dropout if knobs.dropout is None else knobs.dropout,
        knobs=knobs,
        table=table,
    )


def _check_resolution(resolution: int, total_stride: int) -> None:
    # every stride-2 layer needs at least a 2x2 input, else it downsamples nothing
    minimum = total_stride // 2 + 1 if total_stride > 1 else 1
    allowed = f">= {minimum} (total stride {total_stride}: each stride-2 layer needs a 2x2 input)"
    _check("resolution", resolution, resolution >= minimum, allowed)


def _blocks(
    rows: list[tuple[Row, float]], knobs: Knobs, convention: Convention, in_channels: int, size: int
) -> list[Block]:
    """Every block of the resolved rows, widths rounded by the convention (one rounding per row)."""
    blocks: list[Block] = []
    for row_index, (row, scale) in enumerate(rows):
        unscaled = row.t == 1 and not convention.scale_t1_row
        out_channels = row.c if unscaled else convention.round_channels(row.c * scale)
        for repeat in range(row.n):
            stride = row.s if repeat == 0 else 1
            expand = row.t != 1 or convention.expand_t1
            hidden = hidden_width(in_channels, row.t, convention=convention) if expand else in_channels
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
                projection=convention.projection_shortcut
                and knobs.shortcut == "bottleneck"
                and stride == 1
                and in_channels != out_channels,
                se_channels=make_divisible(hidden * knobs.se_ratio) if knobs.se_ratio > 0 else 0,
            )
            blocks.append(block)
            in_channels, size = out_channels, block.out_size
    if blocks[-1].projection:  # neuleaf: `shortcut=False` on its last block (res8_1)
        blocks[-1] = replace(blocks[-1], projection=False)
    return _with_expansion_shortcuts(blocks) if knobs.shortcut == "expansion" else blocks


def default_table(convention: Convention) -> Table:
    """Paper Table 2, with the convention's own strides where it has them (shicai: the paper's v1 table)."""
    if convention.strides is None:
        return MOBILENET_V2
    rows = tuple(replace(row, s=s) for row, s in zip(MOBILENET_V2.rows, convention.strides))
    return replace(MOBILENET_V2, rows=rows)


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


def table_rows(spec: ArchSpec) -> list[dict[str, Any]]:
    """The spec's bottleneck rows, resolved, in the paper's Table 2 form (t, c, n, s, k), with each block's
    squeeze-excite width (se: one per block, [] without squeeze-excite)."""
    rows: list[dict[str, Any]] = []
    for block in spec.blocks:
        if not rows or rows[-1]["row"] != block.row:
            first = {"row": block.row, "t": block.t, "c": block.out_channels, "n": 0, "s": block.stride}
            rows.append({**first, "k": block.kernel, "se": []})
        rows[-1]["n"] += 1
        if block.se_channels:
            rows[-1]["se"].append(block.se_channels)
    return rows
