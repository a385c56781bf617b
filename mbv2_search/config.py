"""Block-table and space files: the table, fixed knobs and `vary:` ranges, derived from the knob declarations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

from pydantic import Field, create_model, field_validator, model_validator

from mbv2_search.arch import MOBILENET_V2, Row, Table, default_table
from mbv2_search.conventions import CONVENTIONS
from mbv2_search.knobs import KNOBS, SEARCHABLE, ArchError, KnobInfo, Knobs
from mbv2_search.schema import AtKey, ConfigError, Strict, UnknownKey, parse, read_yaml


class StemModel(Strict):
    c: int = MOBILENET_V2.stem_channels
    s: int = MOBILENET_V2.stem_stride


class HeadModel(Strict):
    c: int = MOBILENET_V2.head_channels


class RowModel(Strict):
    t: float
    c: int
    n: int
    s: int
    k: int = 3


class TableModel(Strict):
    stem: StemModel = StemModel()
    rows: list[RowModel]
    head: HeadModel = HeadModel()

    def to_table(self) -> Table:
        """The arch-level Table."""
        rows = tuple(Row(r.t, r.c, r.n, r.s, r.k) for r in self.rows)
        return Table(rows, self.stem.c, self.stem.s, self.head.c)

    @classmethod
    def from_table(cls, table: Table) -> TableModel:
        """Inverse of to_table."""
        rows = [RowModel(t=float(r.t), c=r.c, n=r.n, s=r.s, k=r.k) for r in table.rows]
        return cls(
            stem=StemModel(c=table.stem_channels, s=table.stem_stride), rows=rows, head=HeadModel(c=table.head_channels)
        )


DEFAULT_TABLE = TableModel.from_table(MOBILENET_V2)


def _annotation(info: KnobInfo) -> Any:
    """The YAML type of a knob: its kind (or its choices), a list for per-row knobs, None where optional."""
    one: Any = Literal[info.choices] if info.choices and info.kind is str else info.kind
    options = [one, list[one]] if info.per_row else [one]
    return Union[tuple([*options, None] if info.optional else options)]  # noqa: UP007 (built at run time)


class _KnobsBase(Strict):
    def to_knobs(self, **overrides: Any) -> Knobs:
        """arch Knobs with lists as tuples, then any overrides applied."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in self.model_dump().items()}
        values.update(overrides)
        return Knobs(**values)


# Fixed knob values: one field per declared knob (knobs.py), lists for the per-row ones.
KnobsModel = create_model(
    "KnobsModel",
    __base__=_KnobsBase,
    **{name: (_annotation(info), getattr(Knobs(), name)) for name, info in KNOBS.items()},
)


class Range(Strict):
    """Values a knob takes in a search: `choices`, or `low`/`high` with optional `step` or `log`."""

    choices: list[float | int | str | bool] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    per_row: bool = False  # one suggestion per table row (knobs declared per_row only)

    @model_validator(mode="after")
    def _one_form(self) -> Range:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either choices: [...] or both low: and high:")
        if self.choices is not None and not self.choices:
            raise ValueError("choices: must list at least one value")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.step is not None:
            raise ValueError("log: and step: cannot be combined")
        if self.log and self.low is not None and self.low <= 0:
            raise ValueError("log: needs low > 0")
        return self


class ArchFile(Strict):
    """A block table and fixed knobs: what `cost`, `arch` and `train` accept with --table."""

    name: str | None = None
    description: str | None = None
    table: TableModel = DEFAULT_TABLE
    knobs: KnobsModel = KnobsModel()
    vary: dict[str, Range] = Field(default_factory=dict)
    preprocessing: dict[str, Any] | None = None  # written by export for feeding the model; read by nothing here

    @model_validator(mode="after")
    def _convention_table(self) -> ArchFile:
        """No table given: paper Table 2 with the convention's own strides (shicai's differ)."""
        if "table" in self.model_fields_set:
            return self
        table = default_table(CONVENTIONS[self.knobs.convention])
        return self if table is MOBILENET_V2 else self.model_copy(update={"table": TableModel.from_table(table)})

    @field_validator("vary")
    @classmethod
    def _known_knobs(cls, vary: dict[str, Range]) -> dict[str, Range]:
        for key, value in vary.items():
            if key not in SEARCHABLE:
                raise UnknownKey(key, SEARCHABLE)
            if value.per_row and not SEARCHABLE[key].per_row:
                per_row = [name for name, info in SEARCHABLE.items() if info.per_row]
                raise ValueError(f"{key}: per_row is allowed only for {', '.join(per_row)}")
            _check_values(key, value)
        return vary

    def to_table(self) -> Table:
        """The base table."""
        return self.table.to_table()


def _check_values(key: str, values: Range) -> None:
    """Every choice, and both ends of a range, allowed by the knob's declaration (knobs.py)."""
    info = SEARCHABLE[key]
    named = [(f"choices[{i}]", v) for i, v in enumerate(values.choices)] if values.choices is not None else []
    for end in ("low", "high"):
        value = getattr(values, end)
        if value is not None:  # YAML reads a range's ends as floats: an integer knob takes whole ones
            named.append((end, int(value) if info.kind is int and float(value).is_integer() else value))
    for where, value in named:
        if not info.accepts(value):
            raise AtKey(f"{key}.{where}", f"got {value!r}; allowed: {info.allowed()}")
    if values.step is not None and not (values.step > 0 and (info.kind is not int or float(values.step).is_integer())):
        raise AtKey(
            f"{key}.step", f"got {values.step!r}; allowed: {'a whole number' if info.kind is int else 'a number'} > 0"
        )
    if info.choices and values.low is not None:  # a range over a knob of set values (kernels 3, 5, 7)
        inside = range(int(values.low), int(values.high) + 1, int(values.step or 1))
        bad = [value for value in inside if not info.accepts(value)]
        if bad:
            allowed = f"{info.allowed()} (use choices:, or a step that skips the rest)"
            raise AtKey(key, f"got a range {values.low:g}..{values.high:g} that includes {bad[0]}; allowed: {allowed}")


def load_arch_file(path: str | Path) -> ArchFile:
    """Read and validate a block-table file; ArchError-level problems are found here too."""
    arch_file = parse(ArchFile, read_yaml(path), path=path)
    check_arch(arch_file, path)
    return arch_file


def check_arch(arch_file: ArchFile, path: str | Path, *, section: str = "") -> None:
    """Resolve the file's fixed knobs on its table once, so bad combinations fail at load time."""
    from mbv2_search.arch import build_spec

    try:
        build_spec(arch_file.knobs.to_knobs(), arch_file.to_table())
    except ArchError as err:
        where = "table" if err.field_name.split("[")[0].split(".")[0] in ("rows", "stem", "head") else "knobs"
        raise ConfigError(
            path, f"{section}{where}.{err.field_name}", f"got {err.value!r}; allowed: {err.allowed}"
        ) from None
