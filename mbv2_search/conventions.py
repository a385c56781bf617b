"""Named conventions: where implementations of MobileNetV2 differ (../shared/reference/README.md).

Each field is one way they differ; arch.build_spec, layers and model read them, nothing branches on a
convention's name. The three reference implementations were read layer by layer (sources below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

# The 64-channel row at stride 1 and the 96-channel row at stride 2: the table of the paper's first
# version (arXiv v1), which shicai's prototxt follows ("we followed the table in the first version").
V1_STRIDES = (1, 2, 2, 1, 2, 2, 1)


def make_divisible(value: float, divisor: int = 8, *, min_value: int | None = None) -> int:
    """Round to the nearest multiple of divisor, never below min_value nor 10% below value.

    The helper shared by torchvision, TF-Slim and timm (tf-slim `_make_divisible`).
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # the 10% guard: rounding down may not lose more than 10%
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class Convention:
    """The rules of one implementation, beside the block table they apply to."""

    name: str
    hidden_width: Literal["round", "divisible", "floor"]  # int(round(c_in t)), make_divisible(c_in t), int(c_in t)
    num_classes: int
    count_bn_params: bool  # BatchNorm weight and bias in the parameter count
    channels: Literal["nearest", "up"] = "nearest"  # make_divisible (nearest multiple of 8, 10% guard), or up
    scale_stem: bool = True  # False: the stem keeps the table's channels at every width
    scale_t1_row: bool = True  # False: rows with t = 1 keep the table's channels at every width
    expand_t1: bool = False  # a 1x1 expansion conv even when t = 1
    activation: Literal["relu6", "relu"] = "relu6"
    classifier: Literal["linear", "conv"] = "linear"  # conv: a 1x1 convolution after the pool
    classifier_bias: bool = True
    projection_shortcut: bool = False  # a 1x1 conv (no BatchNorm) adds the input of stride-1 blocks that widen
    padding: Literal["symmetric", "same"] = "symmetric"  # same: TensorFlow's 'SAME' (extra pad after)
    dropout: float = 0.2  # before the classifier, where the knob leaves it to the convention
    strides: tuple[int, ...] | None = None  # the rows' strides where they differ from the paper's Table 2
    source: str = ""

    def round_channels(self, value: float) -> int:
        """A scaled channel count under this convention's rounding."""
        if self.channels == "up":  # tonylins: int(np.ceil(x / 8) * 8)
            return int(math.ceil(value / 8) * 8)
        return make_divisible(value)


CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention("torchvision", "round", 1000, count_bn_params=True, source="torchvision models/mobilenetv2.py"),
        Convention("tf-slim", "divisible", 1001, count_bn_params=False, source="TF-Slim mobilenet_v2.py checkpoints"),
        Convention("timm", "divisible", 1000, count_bn_params=True, source="timm efficientnet builder"),
        # tonylins/pytorch-mobilenet-v2 MobileNetV2.py @99f2136: `input_channel = 32` ("first channel is always
        # 32!"), `make_divisible(c * width_mult) if t > 1 else c` with np.ceil to 8, `int(inp * expand_ratio)`,
        # `nn.Linear(self.last_channel, n_class)` with no dropout.
        Convention(
            "tonylins",
            "floor",
            1000,
            count_bn_params=True,
            channels="up",
            scale_stem=False,
            scale_t1_row=False,
            dropout=0.0,
            source="tonylins/pytorch-mobilenet-v2 MobileNetV2.py @99f2136",
        ),
        # shicai/MobileNet-Caffe mobilenet_v2_deploy.prototxt: conv2_1/expand (t = 1 with a 1x1 expansion),
        # ReLU, conv4_3 at stride 1 and conv4_7 at stride 2, fc7 a 1x1 Convolution with bias; a fixed network.
        Convention(
            "shicai",
            "round",
            1000,
            count_bn_params=True,
            expand_t1=True,
            activation="relu",
            classifier="conv",
            dropout=0.0,
            strides=V1_STRIDES,
            source="shicai/MobileNet-Caffe mobilenet_v2_deploy.prototxt",
        ),
        # neuleaf/MobileNetV2 mobilenet_v2.py @55597bd + ops.py: res_block always has `pw`; `ex_dim`, a
        # 1x1 conv with no BatchNorm, on stride-1 blocks whose width changes, but `shortcut=False` on
        # res8_1; padding='SAME'; logits a 1x1 conv without bias; a fixed network.
        Convention(
            "neuleaf",
            "round",
            1000,
            count_bn_params=True,
            expand_t1=True,
            classifier="conv",
            classifier_bias=False,
            projection_shortcut=True,
            padding="same",
            dropout=0.0,
            source="neuleaf/MobileNetV2 mobilenet_v2.py @55597bd",
        ),
    )
}
