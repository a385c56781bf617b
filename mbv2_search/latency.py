"""A latency lookup table for one device: each distinct unit (stem, block, head) a space can produce is
measured once; any candidate's batch-1 latency is then predicted by summing its units, without
building it. MAdds are not latency (depthwise layers use hardware poorly): this is measured.
"""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mbv2_search.arch import ArchSpec, Block

Key = tuple


def unit_keys(spec: ArchSpec) -> list[Key]:
    """The units of a spec in forward order: stem, one per block, head (conv, pool, classifier)."""
    keys: list[Key] = [("stem", spec.resolution, spec.in_channels, spec.stem_channels, spec.stem_stride)]
    for b in spec.blocks:
        keys.append(
            (
                "block",
                b.in_size,
                b.in_channels,
                b.hidden_channels,
                b.out_channels,
                b.stride,
                b.kernel,
                b.expand,
                b.residual,
                spec.bottleneck_activation,
            )
        )
    keys.append(("head", spec.final_size, spec.blocks[-1].out_channels, spec.head_channels, spec.num_classes))
    return keys


def _unit_module(key: Key) -> tuple[Any, tuple[int, ...]]:
    """The torch module of a unit and its input shape (batch 1)."""
    from torch import nn

    from mbv2_search.model import InvertedResidual, conv_bn_act

    kind = key[0]
    if kind == "stem":
        _, size, cin, cout, stride = key
        return conv_bn_act(cin, cout, 3, stride), (1, cin, size, size)
    if kind == "block":
        _, size, cin, hidden, cout, stride, kernel, expand, residual, activation = key
        block = Block(0, 1.0, cin, hidden, cout, stride, kernel, size, expand, residual)
        return InvertedResidual(block, activation), (1, cin, size, size)
    _, size, cin, head, classes = key
    module = nn.Sequential(
        conv_bn_act(cin, head, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(0.2), nn.Linear(head, classes)
    )
    return module, (1, cin, size, size)


@dataclass
class LatencyTable:
    """Measured unit latencies (ms) on one device, and the per-network offset (the forward wrapper)."""

    device: str
    hardware: str
    units: dict[str, float] = field(default_factory=dict)
    offset_ms: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def missing(self, spec: ArchSpec) -> list[Key]:
        """Units of a spec that the table has not measured."""
        return [k for k in unit_keys(spec) if json.dumps(k) not in self.units]

    def predict(self, spec: ArchSpec) -> float:
        """Predicted batch-1 latency in ms; KeyError names a unit the table lacks."""
        total = self.offset_ms
        for key in unit_keys(spec):
            name = json.dumps(key)
            if name not in self.units:
                raise KeyError(f"the latency table has no entry for {name}; rebuild it for this space")
            total += self.units[name]
        return total

    def save(self, path: Path) -> None:
        """Write as JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "device": self.device,
                    "hardware": self.hardware,
                    "offset_ms": self.offset_ms,
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
        return cls(data["device"], data["hardware"], data["units"], data["offset_ms"], data.get("meta", {}))


def sample_specs(arch_file: Any, count: int, seed: int = 0, num_classes: int | None = None) -> list[ArchSpec]:
    """Random candidates of a space (its grid, when small enough), resolved to specs."""
    import optuna

    from mbv2_search import space
    from mbv2_search.arch import build_spec

    sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(sampler=sampler)
    specs, table = [], arch_file.to_table()
    for _ in range(count):
        trial = study.ask()
        knobs = space.suggest_knobs(trial, arch_file)
        if num_classes:
            from dataclasses import replace

            knobs = replace(knobs, num_classes=num_classes)
        specs.append(build_spec(knobs, table))
        study.tell(trial, 0.0)
    return specs


def build_table(
    specs: list[ArchSpec], device: str = "cpu", repeats: int = 20, warmup: int = 5, progress: Any = None
) -> LatencyTable:
    """Measure every distinct unit of the specs once; calibrate the offset on a few whole networks."""
    import torch

    from mbv2_search.cost import measure_latency_ms, time_forward
    from mbv2_search.train import hardware_name

    keys = list(dict.fromkeys(k for spec in specs for k in unit_keys(spec)))
    table = LatencyTable(
        device,
        hardware_name(torch.device(device)),
        meta={"repeats": repeats, "warmup": warmup, "threads": torch.get_num_threads(), "torch": torch.__version__},
    )
    for index, key in enumerate(keys):
        module, shape = _unit_module(key)
        table.units[json.dumps(key)] = time_forward(module, shape, device, repeats, warmup)
        if progress:
            progress(index + 1, len(keys))
    # the whole network costs a little more than its units (the forward wrapper, flatten): measured
    calibration = random.Random(0).sample(specs, min(3, len(specs)))
    table.offset_ms = statistics.median(
        measure_latency_ms(s, device, repeats, warmup) - table.predict(s) for s in calibration
    )
    table.meta["calibrated_on"] = len(calibration)
    return table
