"""The paper's width x resolution table, reproduced beside the published numbers."""

from __future__ import annotations

import pandas as pd

from mbv2_search.arch import Knobs, build_spec
from mbv2_search.cost import costs
from mbv2_search.reference import tf_slim_checkpoints, torchvision_params


def paper_grid(convention: str = "tf-slim") -> pd.DataFrame:
    """The 22 TF-Slim checkpoints with reproduced MAdds and params, the published ones and the differences.

    MAdds in millions are floored as TF-Slim publishes them; params in millions rounded to 2 decimals.
    Under torchvision, `tv_params` is torchvision's own count where the reference lists the width.
    """
    published = tf_slim_checkpoints()
    tv_counts = torchvision_params()
    rows = []
    for ref in published.itertuples():
        spec = build_spec(Knobs(width=float(ref.width), resolution=int(ref.resolution), convention=convention))
        cost = costs(spec)
        row = {
            "model": ref.model,
            "width": ref.width,
            "resolution": ref.resolution,
            "madds": cost.madds,
            "params": cost.params,
            "madds_m": cost.madds // 1_000_000,
            "madds_m_published": int(ref.macs_m),
            "madds_m_diff": cost.madds // 1_000_000 - int(ref.macs_m),
            "params_m": round(cost.params / 1e6, 2),
            "params_m_published": float(ref.params_m),
            "params_m_diff": round(round(cost.params / 1e6, 2) - float(ref.params_m), 2),
            "top1_published": ref.top1,
        }
        if convention == "torchvision":
            tv = tv_counts.get(float(ref.width))
            row["tv_params"] = tv
            row["tv_params_diff"] = None if tv is None else cost.params - tv
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "tv_params" in frame:
        frame["tv_params"] = frame["tv_params"].astype("Int64")
        frame["tv_params_diff"] = frame["tv_params_diff"].astype("Int64")
    return frame
