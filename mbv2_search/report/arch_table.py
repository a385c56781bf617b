"""A variant's expanded layer table in the paper's Table 2 form, and its Table 3 memory view."""

from __future__ import annotations

import pandas as pd

from mbv2_search.arch import ArchSpec, table_rows
from mbv2_search.cost import activation_table
from mbv2_search.layers import Layer, layers


def _cost(spec: ArchSpec, chosen: list[Layer]) -> tuple[int, int]:
    madds = sum(layer.madds for layer in chosen)
    params = sum(layer.weights + (layer.bn_params if spec.count_bn_params else 0) for layer in chosen)
    return madds, params


def arch_table(spec: ArchSpec) -> pd.DataFrame:
    """Rows of paper Table 2 (input, operator, t, c, n, s, k) with per-row MAdds and params."""
    all_layers = layers(spec)
    stem, head, classifier = all_layers[0], all_layers[-2], all_layers[-1]
    rows = [
        _row(
            f"{spec.resolution}² × {spec.in_channels}",
            "conv2d 3x3",
            None,
            spec.stem_channels,
            1,
            spec.stem_stride,
            3,
            *_cost(spec, [stem]),
        )
    ]
    for row in table_rows(spec):
        first = next(b for b in spec.blocks if b.row == row["row"])
        rows.append(
            _row(
                f"{first.in_size}² × {first.in_channels}",
                "bottleneck + SE " + "/".join(map(str, dict.fromkeys(row["se"]))) if row["se"] else "bottleneck",
                row["t"],
                row["c"],
                row["n"],
                row["s"],
                row["k"],
                *_cost(spec, [layer for layer in all_layers[1:-2] if layer.row == row["row"]]),
            )
        )
    final = spec.final_size
    rows.append(
        _row(
            f"{final}² × {spec.blocks[-1].out_channels}",
            "conv2d 1x1",
            None,
            spec.head_channels,
            1,
            1,
            1,
            *_cost(spec, [head]),
        )
    )
    rows.append(_row(f"{final}² × {spec.head_channels}", f"avgpool {final}x{final}", None, None, 1, None, None, 0, 0))
    rows.append(
        _row(
            f"1 × 1 × {spec.head_channels}",
            "linear",
            None,
            spec.num_classes,
            None,
            None,
            None,
            *_cost(spec, [classifier]),
        )
    )
    return pd.DataFrame(rows).astype({"t": "Float64", "c": "Int64", "n": "Int64", "s": "Int64", "k": "Int64"})


def _row(input_shape, operator, t, c, n, s, k, madds, params) -> dict[str, object]:
    return {
        "input": input_shape,
        "operator": operator,
        "t": t,
        "c": c,
        "n": n,
        "s": s,
        "k": k,
        "madds": madds,
        "params": params,
    }


def memory_table(spec: ArchSpec, bytes_per_value: int = 2) -> pd.DataFrame:
    """Paper Table 3 view: per spatial size, the widest materialized tensor and its size in bytes."""
    return pd.DataFrame(
        [
            {"size": f"{r.size}x{r.size}", "channels": r.channels, "bytes": r.bytes, "kib": round(r.bytes / 1024, 1)}
            for r in activation_table(spec, bytes_per_value)
        ]
    )
