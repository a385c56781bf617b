"""Study files: a space, data, a training budget, objectives, constraints, sampler and storage."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from mbv2_search import space
from mbv2_search.config import ArchFile, check_arch, load_arch_file
from mbv2_search.datasets import DATASETS, check_val_fraction
from mbv2_search.recipes import RECIPES, Recipe, recipe_with
from mbv2_search.sampler import SAMPLERS
from mbv2_search.schema import ConfigError, SecretValue, Strict, UnknownKey, parse, read_yaml, unknown_key

OBJECTIVES = {
    "val_acc": "maximize",
    "madds": "minimize",
    "params": "minimize",
    "peak_activation_bytes": "minimize",
    "latency_ms": "minimize",
}
COSTS = tuple(name for name, direction in OBJECTIVES.items() if direction == "minimize")


class DataModel(Strict):
    dataset: Literal[tuple(DATASETS)] = "digits"  # type: ignore[valid-type]
    dir: str | None = None
    workers: int = Field(4, ge=0)
    val_fraction: float | None = None  # None: the dataset's own validation split (datasets.DATASETS)

    @field_validator("val_fraction", mode="before")
    @classmethod
    def _fraction(cls, value: object) -> float | None:
        return None if value is None else check_val_fraction(value)


class TrainingModel(Strict):
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    recipe: Literal[tuple(RECIPES)] = "fast"  # type: ignore[valid-type]
    overrides: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    cuda_graphs: Literal["auto", "on", "off"] = "auto"  # replay training steps from CUDA graphs (GPUs)
    max_minutes: float | None = Field(None, gt=0)
    # one candidate on N devices (DDP; CPU: N processes); batch_size stays per device, the lr follows the global batch
    devices_per_trial: int = Field(1, ge=1, le=64)

    @field_validator("devices_per_trial")
    @classmethod
    def _eager_with_ddp(cls, value: int, info: Any) -> int:
        if value > 1 and info.data.get("cuda_graphs") == "on":  # DDP's gradient hooks do not run in replayed graphs
            raise ValueError("with cuda_graphs 'on' allowed: 1 (CUDA graphs train on one device)")
        return value

    @field_validator("cuda_graphs", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        """YAML reads a bare on/off (and yes/no) as a boolean."""
        return ("on" if value else "off") if isinstance(value, bool) else value

    def recipe_model(self, path: str | Path = "study") -> Recipe:
        """The named recipe with the overrides applied (a ConfigError names a bad override)."""
        return recipe_with(self.recipe, self.overrides, path=str(path), section="training.overrides.")


class SamplerModel(Strict):
    name: Literal[tuple(SAMPLERS)] = "tpe"  # type: ignore[valid-type]
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


class OneShotModel(Strict):
    """strategy: one-shot: train one supernet (BigNAS's sandwich rule), search over inherited accuracies,
    then retrain the front's points."""

    epochs: int | None = Field(None, ge=1, le=10_000)  # the supernet's; None: training.epochs
    random_members: int = Field(2, ge=0, le=16)  # members drawn at random per step, beside the largest and smallest
    distill: bool = True  # the smaller members learn the largest's predictions (in-place distillation)
    calibration_batches: int = Field(8, ge=1, le=10_000)  # training batches that recompute BatchNorm statistics
    retrain: Literal["scratch", "finetune", "none"] = "scratch"  # how the front's points are trained afterwards
    retrain_epochs: int | None = Field(None, ge=1, le=10_000)  # None: training.epochs


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
    objectives: list[Literal[tuple(OBJECTIVES)]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["val_acc", "madds"], min_length=1, max_length=3
    )
    constraints: dict[str, float | str] = Field(default_factory=dict)
    sampler: SamplerModel = SamplerModel()
    n_trials: int = Field(ge=1, le=1_000_000)
    timeout_minutes: float | None = Field(None, gt=0)
    workers: int = Field(1, ge=1, le=256)
    workers_per_gpu: int = Field(1, ge=1, le=64)  # on a GPU machine: this many workers on each GPU
    storage: str | None = None
    baselines: list[dict[str, Any]] = Field(default_factory=list)
    latency: LatencyModel = LatencyModel()
    pruning: PruningModel = PruningModel()
    heartbeat_seconds: float = Field(10.0, gt=0)
    strategy: Literal["per-candidate", "one-shot"] = "per-candidate"  # one-shot: accuracies inherited from a supernet
    one_shot: OneShotModel = OneShotModel()

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

    sampler = SAMPLERS[name]
    hidden = ("self", "seed", "constraints_func")  # seed has its own key; constraints come from trial.set_constraint
    return [p for p in inspect.signature(sampler.__init__).parameters if p not in hidden]


def load_study(path: str | Path) -> tuple[StudyFile, ArchFile]:
    """Read and validate a study file and its space (a path relative to the study, or inline)."""
    path = Path(path)
    study = parse(StudyFile, read_yaml(path), path=path)
    if isinstance(study.space, str):
        space_path = (path.parent / study.space) if not Path(study.space).is_absolute() else Path(study.space)
        if not space_path.exists():
            raise ConfigError(path, "space", f"got {study.space!r}; no such file (resolved to {space_path})")
        arch_file = load_arch_file(space_path)
    else:
        arch_file = study.space
        check_arch(arch_file, path, section="space.")
    study.training.recipe_model(path)  # every override checked now, not at the first trial
    _check_study(study, arch_file, path)
    if study.data.dir is not None:  # every path in a study file is relative to the study file
        data = study.data.model_copy(update={"dir": str(path.parent / Path(study.data.dir).expanduser())})
        study = study.model_copy(update={"data": data})
    return study, arch_file


def _check_constraints(study: StudyFile, arch_file: ArchFile, path: Path) -> None:
    """Refuse constraints that no candidate of the space can meet (analytic costs only)."""
    from mbv2_search.arch import build_spec
    from mbv2_search.cost import costs
    from mbv2_search.knobs import ArchError

    classes = DATASETS[study.data.dataset].classes
    fixed = {"num_classes": classes} if classes else {}
    specs, first_error = [], None
    for knobs in space.cheapest_knobs(arch_file, **fixed):
        try:
            specs.append(build_spec(knobs, arch_file.to_table()))
        except ArchError as err:  # a corner no candidate can be (say, strides too many for the resolution)
            first_error = first_error or err
    if not specs:  # every corner is impossible: the space itself is wrong
        name = first_error.field_name.split("[")[0].split(".")[0]
        where = "vary" if name in arch_file.vary else "knobs"
        corner = ", ".join(k for k in arch_file.vary if k != "seed")
        raise ConfigError(
            path,
            f"space.{where}.{first_error.field_name}",
            f"got {first_error.value!r} at the cheapest corner of the space (varied: {corner}); "
            f"allowed: {first_error.allowed}",
        )
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


MAX_GRID = 1_000_000


def _check_study(study: StudyFile, arch_file: ArchFile, path: Path) -> None:

    if not arch_file.vary:
        raise ConfigError(path, "space.vary", "nothing varies; a search needs at least one knob in vary:")
    if study.strategy == "one-shot":
        from mbv2_search.elastic import NotElastic, check_elastic

        try:
            check_elastic(arch_file)
        except NotElastic as err:
            raise ConfigError(path, f"space.{err.key}", err.message) from None
        if study.pruning.enabled:
            raise ConfigError(
                path,
                "pruning.enabled",
                "got true; allowed with strategy one-shot: false (inherited accuracies have no epochs to stop)",
            )
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
                points = math.prod(len(values) for values in space.grid(arch_file).values())
            except ValueError as err:
                raise ConfigError(path, "space", str(err)) from None
            if points > MAX_GRID:  # Optuna's grid sampler lists every point in memory
                raise ConfigError(
                    path,
                    "sampler.name",
                    f"got 'grid' for a space of {points:,} points; allowed: at most {MAX_GRID:,} "
                    "(a sampler such as tpe or random, or fewer choices)",
                )
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
                    if not space.contains(arch_file, name, value=v)
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
                raise ConfigError(path, f"sampler.options.{key}", unknown_key(key, allowed))
    for index, baseline in enumerate(study.baselines):
        for name, value in baseline.items():
            if name not in names:
                raise ConfigError(path, f"baselines[{index}].{name}", unknown_key(name, names))
            if not space.contains(arch_file, name, value=value):
                raise ConfigError(
                    path,
                    f"baselines[{index}].{name}",
                    f"got {value!r}; allowed: a value inside the space's vary.{name.rsplit('_', 1)[0] if name not in arch_file.vary else name}",
                )
