"""The torch-free description of every weighted layer of a spec: the builder builds it, the cost model sums it.

In the spirit of pycls's `complexity()` beside each module: one list per block says which convolutions
it has, their shapes and their module paths (torchvision's layout), so structure and cost cannot drift.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from mbv2_search.arch import ArchSpec, Block

Role = Literal["stem", "expand", "depthwise", "se_reduce", "se_expand", "project", "shortcut", "head", "classifier"]


class Layer(NamedTuple):
    """One convolution or the classifier, named by its module path in the torchvision layout.

    A NamedTuple, not a dataclass: the search counts thousands of candidates and this is 2x faster.
    """

    name: str
    role: Role
    row: int | None  # block-table row; None for stem, head and classifier
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    in_size: int
    bias: bool = False  # the classifier and squeeze-excite convs carry one
    norm: bool = True  # BatchNorm follows (every conv but squeeze-excite's)

    conv_classifier: bool = False  # a 1x1 conv after the pool (shicai, neuleaf) rather than nn.Linear

    @property
    def kind(self) -> Literal["conv", "linear"]:
        """The operator fvcore names it by."""
        return "linear" if self.role == "classifier" and not self.conv_classifier else "conv"

    @property
    def out_size(self) -> int:
        """Output side length ('SAME' padding)."""
        return -(-self.in_size // self.stride)

    @property
    def weights(self) -> int:
        """Weight count, plus the bias where the layer has one."""
        per_output = self.kernel * self.kernel * self.in_channels // self.groups
        return per_output * self.out_channels + (self.out_channels if self.bias else 0)

    @property
    def madds(self) -> int:
        """Multiply-accumulates at batch 1."""
        per_output = self.kernel * self.kernel * self.in_channels // self.groups
        return per_output * self.out_channels * self.out_size * self.out_size

    @property
    def bn_params(self) -> int:
        """BatchNorm weight + bias that follow this layer."""
        return 2 * self.out_channels if self.norm else 0


def block_layers(block: Block, path: str) -> list[Layer]:
    """A block's layers in forward order; `path` is its module path (e.g. features.3).

    Children of the block's `conv` Sequential: [expand], depthwise, [squeeze-excite], project conv, its
    BatchNorm; then a projection `shortcut` where the block has one (neuleaf).
    """
    prefix, part, hidden = f"{path}.conv", 0, block.hidden_channels
    out = []
    if block.expand:
        out.append(Layer(f"{prefix}.0.0", "expand", block.row, block.in_channels, hidden, 1, 1, 1, block.in_size))
        part = 1
    depthwise = Layer(
        f"{prefix}.{part}.0", "depthwise", block.row, hidden, hidden, block.kernel, block.stride, hidden, block.in_size
    )
    out.append(depthwise)
    if block.se_channels:  # torchvision.ops.SqueezeExcitation: fc1, fc2 on the pooled 1x1 tensor
        part += 1
        squeeze = block.se_channels
        out.append(
            Layer(f"{prefix}.{part}.fc1", "se_reduce", block.row, hidden, squeeze, 1, 1, 1, 1, bias=True, norm=False)
        )
        out.append(
            Layer(f"{prefix}.{part}.fc2", "se_expand", block.row, squeeze, hidden, 1, 1, 1, 1, bias=True, norm=False)
        )
    out.append(Layer(f"{prefix}.{part + 1}", "project", block.row, hidden, block.out_channels, 1, 1, 1, block.out_size))
    if block.projection:  # neuleaf's ex_dim: no BatchNorm, no bias, on a stride-1 block
        width = block.in_channels, block.out_channels
        out.append(Layer(f"{path}.shortcut", "shortcut", block.row, *width, 1, 1, 1, block.in_size, norm=False))
    return out


def layers(spec: ArchSpec) -> list[Layer]:
    """Every conv and the classifier of a spec, in forward order."""
    out = [
        Layer(
            "features.0.0", "stem", None, spec.in_channels, spec.stem_channels, 3, spec.stem_stride, 1, spec.resolution
        )
    ]
    for index, block in enumerate(spec.blocks, start=1):
        out += block_layers(block, f"features.{index}")
    last = spec.blocks[-1].out_channels
    out.append(
        Layer(f"features.{len(spec.blocks) + 1}.0", "head", None, last, spec.head_channels, 1, 1, 1, spec.final_size)
    )
    classes, bias = spec.num_classes, spec.rules.classifier_bias
    conv = spec.rules.classifier == "conv"
    classifier = Layer("classifier.1", "classifier", None, spec.head_channels, classes, 1, 1, 1, 1, bias, False, conv)
    out.append(classifier)
    return out
