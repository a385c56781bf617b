"""Pydantic models for block-table and space files, read with precise one-line errors."""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mbv2_search.arch import MOBILENET_V2, ArchError, Knobs, Row, Table


class ConfigError(ValueError):
    """A bad value in a user's file: names the file, the key, the value and what is allowed."""

    def __init__(self, path: str | Path, key: str, message: str) -> None:
        self.path, self.key = str(path), key
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")


class UnknownKey(ValueError):
    """Raised by validators for an unknown name inside a mapping (pydantic keeps it as ctx.error)."""

    def __init__(self, name: str, allowed: typing.Iterable[str]) -> None:
        self.name, self.allowed = name, tuple(allowed)
        super().__init__(name)


class SecretValue(ValueError):
    """A validator's error whose input must not be echoed (it holds a credential)."""


class Strict(BaseModel):
    """Unknown keys are errors; values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


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


class KnobsModel(Strict):
    """Fixed knob values; every field of arch.Knobs, lists for the per-row ones."""

    width: float = 1.0
    resolution: int = 224
    expansion: float | list[float] | None = None
    depth: float = 1.0
    depth_rounding: Literal["ceil", "round"] = "ceil"
    fix_first_last: bool = False
    stem_stride: int | None = None
    strides: list[int] | None = None
    kernels: list[int] | None = None
    num_classes: int | None = None
    convention: Literal["torchvision", "tf-slim", "timm"] = "torchvision"
    head_rule: Literal["keep", "scale"] = "keep"
    fix_stem_head: bool = False
    bottleneck_activation: Literal["linear", "relu6"] = "linear"
    shortcut: Literal["bottleneck", "expansion", "none"] = "bottleneck"
    dropout: float = 0.2

    def to_knobs(self, **overrides: Any) -> Knobs:
        """arch.Knobs with lists as tuples, then any overrides applied."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in self.model_dump().items()}
        values.update(overrides)
        return Knobs(**values)


class Range(Strict):
    """Values a knob takes in a search: `choices`, or `low`/`high` with optional `step` or `log`."""

    choices: list[float | int | str | bool] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    per_row: bool = False  # expansion and kernels: one suggestion per table row

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


VARIABLE_KNOBS = (
    "width",
    "resolution",
    "expansion",
    "depth",
    "kernels",
    "bottleneck_activation",
    "shortcut",
    "head_rule",
    "stem_stride",
    "seed",  # not an architecture knob: the training seed, so a study can repeat each variant
)
PER_ROW_KNOBS = ("expansion", "kernels")


class ArchFile(Strict):
    """A block table and fixed knobs: what `cost`, `arch` and `train` accept with --table."""

    name: str | None = None
    description: str | None = None
    table: TableModel = DEFAULT_TABLE
    knobs: KnobsModel = KnobsModel()
    vary: dict[str, Range] = Field(default_factory=dict)

    @field_validator("vary")
    @classmethod
    def _known_knobs(cls, vary: dict[str, Range]) -> dict[str, Range]:
        for key, value in vary.items():
            if key not in VARIABLE_KNOBS:
                raise UnknownKey(key, VARIABLE_KNOBS)
            if value.per_row and key not in PER_ROW_KNOBS:
                raise ValueError(f"{key}: per_row is allowed only for {', '.join(PER_ROW_KNOBS)}")
        return vary

    def to_table(self) -> Table:
        """The base table."""
        return self.table.to_table()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with a safe loader; every failure is a ConfigError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(path, "", "no such file")
    if path.is_dir():
        raise ConfigError(path, "", "is a directory; expected a YAML file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(path, "", f"not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(path, "", f"cannot read: {err.strerror}") from None
    try:
        data = _load_bounded(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(path, where, f"invalid YAML: {reason}") from None
    if data is None:
        raise ConfigError(path, "", "empty file; expected a YAML mapping")
    if not isinstance(data, dict):
        raise ConfigError(path, "", f"expected a YAML mapping at the top, got {type(data).__name__}")
    return data


MAX_YAML_NODES = 100_000


def _load_bounded(text: str) -> Any:
    """Safe-load YAML, refusing documents whose aliases would expand past MAX_YAML_NODES ("billion laughs")."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}

        def expanded(current: yaml.Node) -> int:  # size as if every alias were copied, memoized per node
            if id(current) not in sizes:
                sizes[id(current)] = 1  # guards recursive aliases
                if isinstance(current, yaml.SequenceNode):
                    sizes[id(current)] += sum(expanded(child) for child in current.value)
                elif isinstance(current, yaml.MappingNode):
                    sizes[id(current)] += sum(expanded(k) + expanded(v) for k, v in current.value)
            return sizes[id(current)]

        if expanded(node) > MAX_YAML_NODES:
            raise yaml.YAMLError(f"its aliases expand to more than {MAX_YAML_NODES:,} values; refusing to load it")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse(model: type[Strict], data: dict[str, Any], path: str | Path) -> Any:
    """Validate data against a model, turning the first problem into a one-line ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _config_error(model, err, path) from None


_UNION_TAG = re.compile(r"^(str|int|float|bool|none|(list|dict|tuple)\[.*\]|function-\w+\[.*\]|[A-Z]\w*)$")


def _config_error(model: type[BaseModel], err: ValidationError, path: str | Path) -> ConfigError:
    # a union reports one error per branch, tagged in loc: keep the deepest, drop the tags
    errors = [
        {**e, "loc": tuple(p for p in e["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p)))}
        for e in err.errors()
    ]
    first = max(errors, key=lambda e: len(e["loc"]))
    loc = first["loc"]
    key = _dotted(loc)
    if first["type"] == "extra_forbidden":
        return ConfigError(path, key, _unknown_key(loc[-1], _fields_at(model, loc[:-1])))
    ctx = first.get("ctx", {})
    cause = ctx.get("error") if isinstance(ctx, dict) else None
    if isinstance(cause, UnknownKey):
        return ConfigError(path, _dotted((*loc, cause.name)), _unknown_key(cause.name, cause.allowed))
    message = str(cause) if cause is not None else first["msg"]
    if isinstance(cause, SecretValue):
        return ConfigError(path, key, message)
    if "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict):
        message = f"got {first['input']!r}; {message[0].lower()}{message[1:]}"
    return ConfigError(path, key, message)


def _unknown_key(name: object, allowed: typing.Iterable[str]) -> str:
    allowed = list(allowed)
    close = difflib.get_close_matches(str(name), allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown key '{name}'{hint} (allowed: {', '.join(allowed)})"


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model reached by following loc (through lists, dicts and unions)."""
    current: Any = model
    for part in loc:
        if isinstance(part, str) and _is_model(current) and part in current.model_fields:
            current = current.model_fields[part].annotation
        current = _unwrap(current)
    return list(current.model_fields) if _is_model(current) else []


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _unwrap(annotation: Any) -> Any:
    """The model inside list[X], dict[str, X], X | None."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (list, dict, typing.Union, types.UnionType):
        models = [a for a in args if _is_model(a)]
        return models[0] if models else annotation
    return annotation


def load_arch_file(path: str | Path) -> ArchFile:
    """Read and validate a block-table file; ArchError-level problems are found here too."""
    arch_file = parse(ArchFile, read_yaml(path), path)
    check_arch(arch_file, path)
    return arch_file


def check_arch(arch_file: ArchFile, path: str | Path, section: str = "") -> None:
    """Resolve the file's fixed knobs on its table once, so bad combinations fail at load time."""
    from mbv2_search.arch import build_spec

    try:
        build_spec(arch_file.knobs.to_knobs(), arch_file.to_table())
    except ArchError as err:
        where = "table" if err.field_name.split("[")[0].split(".")[0] in ("rows", "stem", "head") else "knobs"
        raise ConfigError(
            path, f"{section}{where}.{err.field_name}", f"got {err.value!r}; allowed: {err.allowed}"
        ) from None


OBJECTIVES = {
    "val_acc": "maximize",
    "madds": "minimize",
    "params": "minimize",
    "peak_activation_bytes": "minimize",
    "latency_ms": "minimize",
}
COSTS = ("madds", "params", "peak_activation_bytes", "latency_ms")


class DataModel(Strict):
    dataset: Literal["digits", "cifar10", "cifar100", "imagefolder"] = "digits"
    dir: str | None = None
    workers: int = Field(4, ge=0)


class TrainingModel(Strict):
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    recipe: Literal["fast", "paper"] = "fast"
    overrides: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    max_minutes: float | None = Field(None, gt=0)

    @field_validator("overrides")
    @classmethod
    def _recipe_fields(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        from mbv2_search.recipes import Recipe

        for key in overrides:
            if key not in Recipe.model_fields:
                raise UnknownKey(key, Recipe.model_fields)
        return overrides

    def recipe_model(self) -> Any:
        """The named recipe with the overrides applied."""
        from mbv2_search.recipes import RECIPES

        return RECIPES[self.recipe].with_overrides(self.overrides)


class SamplerModel(Strict):
    name: Literal["tpe", "nsga2", "random", "grid", "gp"] = "tpe"
    seed: int | None = 0
    options: dict[str, Any] = Field(default_factory=dict)


class PruningModel(Strict):
    """Multi-objective early stopping at successive-halving rungs (epochs min_epochs x factor^k)."""

    enabled: bool = False
    # Defaults measured on the quickstart study (benchmarks/bench_pruning.py): rungs at epochs 1, 3, 9.
    reduction_factor: int = Field(3, ge=2)
    min_epochs: int = Field(1, ge=1)
    min_peers: int = Field(5, ge=1)  # trials that must have reached a rung before any is stopped there
    min_dominators: int = Field(1, ge=1)  # stop a trial dominated (better accuracy at no more cost) by this many

    def rungs(self, epochs: int) -> list[int]:
        """Epochs at which running trials are compared (those before the last epoch)."""
        out, rung = [], self.min_epochs
        while rung < epochs:
            out.append(rung)
            rung *= self.reduction_factor
        return out


class LatencyModel(Strict):
    repeats: int = Field(30, ge=1)
    warmup: int = Field(5, ge=0)
    table: str | None = None  # a latency-table file: predict latency_ms instead of measuring it


class StudyFile(Strict):
    """A study: a space, data, a training budget, objectives, constraints, sampler and storage."""

    name: str  # also the folder reports/<name>/: checked by _folder_name
    description: str | None = None
    space: str | ArchFile
    data: DataModel = DataModel()
    training: TrainingModel = TrainingModel()
    objectives: list[Literal["val_acc", "madds", "params", "peak_activation_bytes", "latency_ms"]] = Field(
        default_factory=lambda: ["val_acc", "madds"], min_length=1, max_length=3
    )
    constraints: dict[str, float | str] = Field(default_factory=dict)
    sampler: SamplerModel = SamplerModel()
    n_trials: int = Field(ge=1, le=1_000_000)
    timeout_minutes: float | None = Field(None, gt=0)
    workers: int = Field(1, ge=1, le=256)
    storage: str | None = None
    baselines: list[dict[str, Any]] = Field(default_factory=list)
    latency: LatencyModel = LatencyModel()
    pruning: PruningModel = PruningModel()
    heartbeat_seconds: float = Field(10.0, gt=0)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name) or set(name) == {"."}:
            raise ValueError(
                "allowed: 1 to 100 letters, digits, '_', '-' or '.', not '.' or '..' (it names reports/<name>/)"
            )
        return name

    @field_validator("storage")
    @classmethod
    def _no_credentials(cls, storage: str | None) -> str | None:
        from urllib.parse import urlsplit

        if storage and urlsplit(storage).password:
            raise SecretValue("a password in a study file is refused; put the URL in MBV2_STORAGE or pass --storage")
        return storage

    @field_validator("objectives")
    @classmethod
    def _unique(cls, objectives: list[str]) -> list[str]:
        if len(set(objectives)) != len(objectives):
            raise ValueError("each objective may appear once")
        return objectives

    @field_validator("constraints")
    @classmethod
    def _upper_bounds(cls, constraints: dict[str, float | str]) -> dict[str, float]:
        bounds = {}
        for key, value in constraints.items():
            if key not in COSTS:
                raise UnknownKey(key, COSTS)
            try:
                bounds[key] = float(value)  # YAML reads 100e6 as a string; accept it
            except ValueError:
                raise ValueError(f"{key}: got {value!r}; allowed: a number (an upper bound)") from None
            if bounds[key] <= 0:
                raise ValueError(f"{key}: got {value!r}; allowed: a positive upper bound")
        return bounds


def _sampler_options(name: str) -> list[str]:
    """Keyword options of an Optuna sampler that a study file may set."""
    import inspect

    import optuna

    sampler = {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
    }[name]
    hidden = ("self", "seed", "constraints_func")  # seed has its own key; constraints come from trial.set_constraint
    return [p for p in inspect.signature(sampler.__init__).parameters if p not in hidden]


def load_study(path: str | Path) -> tuple[StudyFile, ArchFile]:
    """Read and validate a study file and its space (a path relative to the study, or inline)."""
    path = Path(path)
    study = parse(StudyFile, read_yaml(path), path)
    if isinstance(study.space, str):
        space_path = (path.parent / study.space) if not Path(study.space).is_absolute() else Path(study.space)
        if not space_path.exists():
            raise ConfigError(path, "space", f"got {study.space!r}; no such file (resolved to {space_path})")
        arch_file = load_arch_file(space_path)
    else:
        arch_file = study.space
        check_arch(arch_file, path, section="space.")
    _check_study(study, arch_file, path)
    if study.data.dir is not None:  # every path in a study file is relative to the study file
        data = study.data.model_copy(update={"dir": str(path.parent / Path(study.data.dir).expanduser())})
        study = study.model_copy(update={"data": data})
    return study, arch_file


DATASET_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100}  # imagefolder: known only from its folders


def _check_constraints(study: StudyFile, arch_file: ArchFile, path: Path) -> None:
    """Refuse constraints that no candidate of the space can meet (analytic costs only)."""
    from mbv2_search import space
    from mbv2_search.arch import build_spec
    from mbv2_search.cost import costs

    classes = DATASET_CLASSES.get(study.data.dataset)
    fixed = {"num_classes": classes} if classes else {}
    specs = []
    for knobs in space.cheapest_knobs(arch_file, **fixed):
        try:
            specs.append(build_spec(knobs, arch_file.to_table()))
        except ArchError as err:
            raise ConfigError(
                path,
                f"space.vary.{err.field_name}",
                f"got {err.value!r} at the low end of the space; allowed: {err.allowed}",
            ) from None
    for name, bound in study.constraints.items():
        if name == "latency_ms":
            continue  # measured, not known before a trial
        least = min(getattr(costs(spec), name) for spec in specs)
        if least > bound:
            raise ConfigError(
                path,
                f"constraints.{name}",
                f"no candidate in the space has {name} <= {bound:g}; the least in the space is {least:,}",
            )


def _check_study(study: StudyFile, arch_file: ArchFile, path: Path) -> None:
    from mbv2_search import space

    if not arch_file.vary:
        raise ConfigError(path, "space.vary", "nothing varies; a search needs at least one knob in vary:")
    _check_constraints(study, arch_file, path)
    if study.latency.table is not None and not (path.parent / study.latency.table).is_file():
        raise ConfigError(
            path,
            "latency.table",
            f"got {study.latency.table!r}; no such file (make one with mbv2-search latency-table)",
        )
    names = space.param_names(arch_file)
    if study.sampler.name == "grid":
        explicit = study.sampler.options.get("grid")
        if explicit is None:
            try:
                space.grid(arch_file)
            except ValueError as err:
                raise ConfigError(path, "space", str(err)) from None
        else:  # an explicit grid: every space parameter, each value inside the space
            if not isinstance(explicit, dict) or set(explicit) != set(names):
                raise ConfigError(
                    path,
                    "sampler.options.grid",
                    f"got {sorted(explicit) if isinstance(explicit, dict) else explicit!r}; allowed: a list of values for each of {', '.join(names)}",
                )
            for name, values in explicit.items():
                bad = [
                    v
                    for v in (values if isinstance(values, list) else [values])
                    if not space.contains(arch_file, name, v)
                ]
                if bad or not isinstance(values, list):
                    raise ConfigError(
                        path,
                        f"sampler.options.grid.{name}",
                        f"got {bad or values!r}; allowed: a list of values inside the space's vary.{name}",
                    )
    else:
        allowed = _sampler_options(study.sampler.name)
        for key in study.sampler.options:
            if key not in allowed:
                raise ConfigError(path, f"sampler.options.{key}", _unknown_key(key, allowed))
    for index, baseline in enumerate(study.baselines):
        for name, value in baseline.items():
            if name not in names:
                raise ConfigError(path, f"baselines[{index}].{name}", _unknown_key(name, names))
            if not space.contains(arch_file, name, value):
                raise ConfigError(
                    path,
                    f"baselines[{index}].{name}",
                    f"got {value!r}; allowed: a value inside the space's vary.{name.rsplit('_', 1)[0] if name not in arch_file.vary else name}",
                )
