"""A space file's `vary` ranges as Optuna suggestions, producing Knobs (and so an ArchSpec)."""

from __future__ import annotations

import random
from collections.abc import Container
from typing import Any

import optuna

from mbv2_search.config import ArchFile, Range
from mbv2_search.knobs import SEARCHABLE, Knobs


def _is_int(knob: str) -> bool:
    return SEARCHABLE[knob].kind is int


def param_names(arch_file: ArchFile) -> list[str]:
    """The Optuna parameter names a space suggests (per-row knobs as name_0, name_1, ...)."""
    names = []
    for key, values in arch_file.vary.items():
        names += [f"{key}_{i}" for i in range(len(arch_file.table.rows))] if values.per_row else [key]
    return names


def _suggest(trial: optuna.Trial, name: str, knob: str, values: Range) -> Any:
    if values.choices is not None:
        return trial.suggest_categorical(name, values.choices)
    if _is_int(knob):
        return trial.suggest_int(name, int(values.low), int(values.high), step=int(values.step or 1), log=values.log)
    return trial.suggest_float(name, values.low, values.high, step=values.step, log=values.log)


def suggest_knobs(trial: optuna.Trial, arch_file: ArchFile) -> Knobs:
    """Knobs for a trial: the file's fixed knobs with each varied one suggested."""
    varied: dict[str, Any] = {}
    for knob, values in arch_file.vary.items():
        if values.per_row:
            varied[knob] = tuple(_suggest(trial, f"{knob}_{i}", knob, values) for i in range(len(arch_file.table.rows)))
        else:
            varied[knob] = _suggest(trial, knob, knob, values)
    varied.pop("seed", None)  # a training knob: read it with suggest_seed
    return arch_file.knobs.to_knobs(**varied)


def suggest_seed(trial: optuna.Trial, arch_file: ArchFile, *, default: int) -> int:
    """The training seed: varied when the space lists `seed`, else the study's."""
    values = arch_file.vary.get("seed")
    return int(_suggest(trial, "seed", "seed", values)) if values else default


def knobs_from_params(params: dict[str, Any], arch_file: ArchFile) -> Knobs:
    """Rebuild a stored trial's Knobs from its parameters."""
    return suggest_knobs(optuna.trial.FixedTrial(params), arch_file)


def knob_points(knob: str, values: Range) -> list[Any] | None:
    """Every value a knob takes in a space: its choices, or each step of a stepped (or integer) range; None
    for a continuous range."""
    if values.choices is not None:
        return list(values.choices)
    if values.step is None and not _is_int(knob):
        return None
    step = values.step or 1
    count = int(round((values.high - values.low) / step)) + 1
    points = [values.low + i * step for i in range(count)]
    return [int(p) for p in points] if _is_int(knob) else [round(p, 10) for p in points]


def grid(arch_file: ArchFile) -> dict[str, list[Any]]:
    """Every value of every parameter, for the grid sampler; ranges need a step."""
    out: dict[str, list[Any]] = {}
    for knob, values in arch_file.vary.items():
        points = knob_points(knob, values)
        if points is None:
            raise ValueError(f"vary.{knob}: the grid sampler needs choices: or a step:")
        names = [f"{knob}_{i}" for i in range(len(arch_file.table.rows))] if values.per_row else [knob]
        out.update({name: points for name in names})
    return out


def contains(arch_file: ArchFile, name: str, *, value: Any) -> bool:
    """Whether a parameter value lies in the space (for baselines)."""
    knob = name.rsplit("_", 1)[0] if name not in arch_file.vary else name
    values = arch_file.vary.get(knob)
    if values is None:
        return False
    if values.choices is not None:
        return value in values.choices
    return isinstance(value, (int, float)) and values.low <= value <= values.high


def cheapest_knobs(arch_file: ArchFile, **fixed: Any) -> list[Knobs]:
    """Candidates among which the least cost of the space lies, for checking constraints before any trial.

    MAdds, parameters and activation memory never decrease as a knob declared `cost="rises"` grows
    (make_divisible and 'SAME' sizes are monotone), so those take their least value. Categorical knobs
    take every choice. A stride (`cost="falls"`) lowers the cost of every later layer, and one taken
    earlier lowers it more, but too many make the resolution too small: so per-row strides take "the
    first k rows at the largest stride" for every k (rows + 1 candidates, not 2^rows).
    """
    import itertools

    least: dict[str, Any] = {}
    spread: dict[str, list[Any]] = {}
    for knob, values in arch_file.vary.items():
        info = SEARCHABLE[knob]
        if knob == "seed":
            continue
        options = values.choices if values.choices is not None else range_ends(knob, values)
        rows = len(arch_file.table.rows)
        if info.cost == "rises":
            least[knob] = extreme(knob, values, rows, largest=False)
        elif values.per_row:  # a per-row stride
            spread[knob] = [(max(options),) * k + (min(options),) * (rows - k) for k in range(rows + 1)]
        else:
            spread[knob] = list(options)
    combos = [dict(zip(spread, combo)) for combo in itertools.product(*spread.values())]
    return [arch_file.knobs.to_knobs(**least, **combo, **fixed) for combo in combos]


def extreme(knob: str, values: Range, rows: int, *, largest: bool) -> Any:
    """A knob's least (or largest) value in a space; for a per-row knob, that value for every row."""
    options = values.choices if values.choices is not None else range_ends(knob, values)
    value = max(options) if largest else min(options)
    value = int(value) if _is_int(knob) else value  # YAML ranges read as floats
    return (value,) * rows if values.per_row else value


def range_ends(knob: str, values: Range) -> list[Any]:
    """A range's low and high (one value where they are equal), as integers for integer knobs."""
    ends = [values.low, values.high] if values.low != values.high else [values.low]
    return [int(e) for e in ends] if _is_int(knob) else ends


def grid_or_none(arch_file: ArchFile) -> dict[str, list[Any]] | None:
    """The space's grid, or None where a range is continuous."""
    try:
        return grid(arch_file)
    except ValueError:
        return None


def unseen_point(
    arch_file: ArchFile, seen: Container[str], *, rng: random.Random, tries: int = 1000
) -> dict[str, Any] | None:
    """A random point of a finite space whose candidate key is not in `seen` (None if none was found)."""
    from mbv2_search.ledger import candidate_key

    points = grid_or_none(arch_file)
    if points is None:
        return None
    for _ in range(tries):
        point = {name: rng.choice(values) for name, values in points.items()}
        if candidate_key(point) not in seen:
            return point
    return None
