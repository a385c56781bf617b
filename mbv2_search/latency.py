"""A latency lookup table for one device: each distinct unit (stem, block, head) a space can produce is
measured once; any candidate's batch-1 latency is then predicted by summing its units, without
building it. MAdds are not latency (depthwise layers use hardware poorly): this is measured.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mbv2_search.arch import ArchSpec, Block

Key = tuple


# Block fields that label a block rather than shape its computation (t is in hidden_channels and expand).
# Every other field, including any added later, is part of a block's unit key.
_NOT_STRUCTURE = ("row", "t")


def block_structure(block: Block) -> tuple[tuple[str, Any], ...]:
    """A block's full description, less its labels, as (field, value) pairs: what a measured unit must match."""
    return tuple((name, value) for name, value in asdict(block).items() if name not in _NOT_STRUCTURE)


def unit_keys(spec: ArchSpec) -> list[Key]:
    """The units of a spec in forward order: stem, one per block, head (conv, pool, classifier)."""
    keys: list[Key] = [("stem", spec.resolution, spec.in_channels, spec.stem_channels, spec.stem_stride)]
    keys += [("block", spec.bottleneck_activation, block_structure(b)) for b in spec.blocks]
    keys.append(("head", spec.final_size, spec.blocks[-1].out_channels, spec.head_channels, spec.num_classes))
    return keys


def _upgrade(name: str) -> str:
    """A unit key of a table written before keys were derived from the block (no shortcut or SE fields)."""
    key = json.loads(name)
    if key[0] != "block" or len(key) != 10:
        return name
    _, size, cin, hidden, cout, stride, kernel, expand, residual, activation = key
    block = Block(0, 1.0, cin, hidden, cout, stride, kernel, size, expand, residual)
    return json.dumps(("block", activation, block_structure(block)))


def _with_carried_expansion(block_module: Any, block: Block) -> Any:
    """A block unit whose expansion adds the previous block's (paper Fig. 6b), timed with that add."""
    import torch
    from torch import nn

    class CarriedExpansion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = block_module
            self.register_buffer("carried", torch.zeros(1, block.hidden_channels, block.in_size, block.in_size))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block.forward_expansion_shortcut(x, self.carried)[0]

    return CarriedExpansion()


def _unit_module(key: Key) -> tuple[Any, tuple[int, ...]]:
    """The torch module of a unit and its input shape (batch 1)."""
    from torch import nn

    from mbv2_search.model import InvertedResidual, conv_bn_act

    kind = key[0]
    if kind == "stem":
        _, size, cin, cout, stride = key
        return conv_bn_act(cin, cout, kernel=3, stride=stride), (1, cin, size, size)
    if kind == "block":
        _, activation, fields = key
        block = Block(row=0, t=1.0, **dict(fields))
        module = InvertedResidual(block, activation)
        if block.expansion_residual:
            module = _with_carried_expansion(module, block)
        return module, (1, block.in_channels, block.in_size, block.in_size)
    _, size, cin, head, classes = key
    module = nn.Sequential(
        conv_bn_act(cin, head, kernel=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Dropout(0.2),
        nn.Linear(head, classes),
    )
    return module, (1, cin, size, size)


@dataclass
class LatencyTable:
    """Measured unit latencies (ms) on one device, and the whole-network calibration (scale, offset)."""

    device: str
    hardware: str
    units: dict[str, float] = field(default_factory=dict)
    offset_ms: float = 0.0
    scale: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)

    def missing(self, spec: ArchSpec) -> list[Key]:
        """Units of a spec that the table has not measured."""
        return [k for k in unit_keys(spec) if json.dumps(k) not in self.units]

    def predict(self, spec: ArchSpec) -> float:
        """Predicted batch-1 latency in ms; KeyError names a unit the table lacks."""
        total = 0.0
        for key in unit_keys(spec):
            name = json.dumps(key)
            if name not in self.units:
                raise KeyError(f"the latency table has no entry for {name}; rebuild it for this space")
            total += self.units[name]
        return self.scale * total + self.offset_ms

    def save(self, path: Path) -> None:
        """Write as JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "device": self.device,
                    "hardware": self.hardware,
                    "offset_ms": self.offset_ms,
                    "scale": self.scale,
                    "meta": self.meta,
                    "units": self.units,
                },
                indent=1,
            )
        )

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        """Read a table written by save."""
        data = json.loads(Path(path).read_text())
        return cls(
            data["device"],
            data["hardware"],
            {_upgrade(name): ms for name, ms in data["units"].items()},
            data["offset_ms"],
            data.get("scale", 1.0),
            data.get("meta", {}),
        )


def space_specs(
    arch_file: Any, samples: int, *, seed: int = 0, num_classes: int | None = None, max_grid: int = 5000
) -> tuple[list[ArchSpec], str]:
    """Every candidate of a space when its grid has at most max_grid points, else random samples."""
    import itertools
    import math

    import optuna

    from mbv2_search import space
    from mbv2_search.arch import build_spec
    from mbv2_search.knobs import ArchError

    table = arch_file.to_table()
    fixed = {"num_classes": num_classes} if num_classes else {}
    try:
        grid = space.grid(arch_file)
    except ValueError:
        grid = None
    if grid is not None and math.prod(len(v) for v in grid.values()) <= max_grid:
        combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
        how = f"all {len(combos)} candidates of the space"
    else:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        combos = []
        for _ in range(samples):
            trial = study.ask()
            space.suggest_knobs(trial, arch_file)
            combos.append(trial.params)
            study.tell(trial, 0.0)
        how = f"{samples} random candidates of the space"
    specs = []
    for params in combos:
        try:
            specs.append(build_spec(replace(space.knobs_from_params(params, arch_file), **fixed), table))
        except ArchError:
            continue  # a combination the space allows but no network has (e.g. too small an input)
    return specs, how


def build_table(
    specs: list[ArchSpec], device: str = "cpu", *, repeats: int = 20, warmup: int = 5, progress: Any = None
) -> LatencyTable:
    """Measure every distinct unit of the specs once; calibrate the offset on a few whole networks."""
    import torch

    from mbv2_search.cost import measure_latency_ms, time_forward
    from mbv2_search.devices import hardware_name

    keys = list(dict.fromkeys(k for spec in specs for k in unit_keys(spec)))
    table = LatencyTable(
        device,
        hardware_name(torch.device(device)),
        meta={"repeats": repeats, "warmup": warmup, "threads": torch.get_num_threads(), "torch": torch.__version__},
    )
    for index, key in enumerate(keys):
        module, shape = _unit_module(key)
        table.units[json.dumps(key)] = time_forward(module, shape, device=device, repeats=repeats, warmup=warmup)
        if progress:
            progress(index + 1, len(keys))
    # A whole network differs from the sum of its units run alone (the forward wrapper; caches that
    # a long network evicts): fit latency = scale x sum + offset on a few whole networks, measured.
    # calibrate on networks spread over the range of unit sums (quantiles), so the fit is well-posed
    by_sum = sorted(specs, key=table.predict)
    picks = sorted({round(q * (len(by_sum) - 1)) for q in (0.0, 0.25, 0.5, 0.75, 1.0)})
    calibration = [by_sum[i] for i in picks]
    sums = [table.predict(s) for s in calibration]
    wholes = [measure_latency_ms(s, device, repeats=repeats, warmup=warmup) for s in calibration]
    if len(calibration) >= 3 and max(sums) > 1.2 * min(sums):
        table.scale, table.offset_ms = (float(v) for v in statistics.linear_regression(sums, wholes))
    else:  # too few or too alike to fit a slope: offset only
        table.offset_ms = statistics.median(w - p for w, p in zip(wholes, sums))
    table.meta["calibrated_on"] = len(calibration)
    return table
