"""What a trained model's input must be: the preprocessing record that exports write. Torch-free.

The loaders (data.TensorData, imagefolder.FolderData) fill it from the values they use themselves, so
an exported model can be fed outside this package exactly as it was trained and validated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

INPUT_NAME, OUTPUT_NAME = "images", "logits"  # the ONNX graph's names (export.export_onnx)
INTERPOLATION = "bilinear"  # every resize of every loader; align_corners False (pixel centres), as PIL


def record(
    *,
    resolution: int,
    shorter_side: int,
    antialias: bool,
    pixel_max: float,
    mean: Sequence[float],
    std: Sequence[float],
    grey_to_rgb: bool,
    steps: Sequence[str],
) -> dict[str, Any]:
    """The preprocessing section of an export, in the order the steps apply.

    Args:
        resolution: the model's input side (after any crop).
        shorter_side: the resize target of an image's shorter side (its longer side scales with it,
            rounded down, as torchvision's Resize); then a centre crop to resolution.
        antialias: whether shrinking filters first (PIL's bilinear does; torch's only when asked).
        pixel_max: raw pixel values are divided by it, to 0..1 before normalising.
        mean, std: per channel, on the 0..1 scale (one value for grey images).
        grey_to_rgb: the data is one grey channel, normalised then repeated to the model's 3.
        steps: the order of scale, resize (with the crop), normalize and grey_to_rgb.
    """
    return {
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "channels": 3, "size": resolution},
        "output": {"name": OUTPUT_NAME, "holds": "class scores (logits), N x classes"},
        "channel_order": "RGB",
        "grey_to_rgb": grey_to_rgb,
        "pixel_max": float(pixel_max),
        "resize": {
            "shorter_side": shorter_side,
            "center_crop": resolution,
            "interpolation": INTERPOLATION,
            "antialias": antialias,
            "align_corners": False,
        },
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "steps": list(steps),
    }
