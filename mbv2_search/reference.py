"""The published numbers shipped with the package (mbv2_search/published, copied from the sources)."""

from __future__ import annotations

from importlib import resources

import pandas as pd


def _read(name: str) -> pd.DataFrame:
    with resources.files("mbv2_search.published").joinpath(name).open("r") as handle:
        return pd.read_csv(handle)


def tf_slim_checkpoints() -> pd.DataFrame:
    """The 22 TF-Slim MobileNetV2 checkpoints: width, resolution, MACs (M), params (M), top-1/5, Pixel-1 ms."""
    return _read("mobilenet_v2_tf_slim.csv")


def paper_table4() -> pd.DataFrame:
    """Paper Table 4: ImageNet top-1, params (M), MAdds (M) and Pixel-1 ms of the compared networks."""
    return _read("mobilenet_v2_paper_table4.csv")


def torchvision_params() -> dict[float, int]:
    """Parameter counts of torchvision's mobilenet_v2(width_mult=w), 1000 classes."""
    frame = _read("torchvision_mobilenet_v2.csv")
    return dict(zip(frame["width"], frame["params"].astype(int)))


def torchvision_madds_224() -> int:
    """torchvision's counted multiply-accumulates (conv + linear) of width 1.0 at 224."""
    frame = _read("torchvision_mobilenet_v2.csv")
    return int(frame.loc[frame["width"] == 1.0, "madds_224"].iloc[0])
