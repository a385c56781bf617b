"""nn.Module from an ArchSpec, with torchvision's module layout so its state_dicts load."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from mbv2_search.arch import ArchSpec, Block
from mbv2_search.conventions import CONVENTIONS, Convention
from mbv2_search.layers import Layer, block_layers, layers

TORCHVISION = CONVENTIONS["torchvision"]


class SameConv2d(nn.Conv2d):
    """A conv with TensorFlow's 'SAME' padding: output ceil(in / stride), the odd pixel padded after
    (neuleaf's `padding='SAME'`); the pads are fixed by the input size, known when the model is built."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, groups: int, in_size: int) -> None:
        super().__init__(cin, cout, kernel, stride, 0, groups=groups, bias=False)
        total = max((-(-in_size // stride) - 1) * stride + kernel - in_size, 0)
        self.pads = (total // 2, total - total // 2) * 2  # left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad as TensorFlow does, then convolve without padding."""
        return super().forward(nn.functional.pad(x, self.pads))


_ACTIVATIONS = {"relu6": nn.ReLU6, "relu": nn.ReLU}


def conv_bn_act(
    cin: int,
    cout: int,
    *,
    kernel: int = 3,
    stride: int = 1,
    groups: int = 1,
    activation: str = "relu6",
    same_padding_at: int | None = None,
) -> nn.Sequential:
    """Conv, BatchNorm, ReLU6 (or ReLU): torchvision's Conv2dNormActivation layout (keys .0 and .1).

    `same_padding_at`: the input size, for TensorFlow's 'SAME' padding instead of a symmetric one.
    """
    if same_padding_at is None:
        conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
    else:
        conv = SameConv2d(cin, cout, kernel, stride, groups=groups, in_size=same_padding_at)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), _ACTIVATIONS[activation](inplace=True))


def _conv_bn_act(layer: Layer, rules: Convention) -> nn.Sequential:
    """conv_bn_act for a described layer under a convention's activation and padding."""
    same = layer.in_size if rules.padding == "same" else None
    return conv_bn_act(
        layer.in_channels,
        layer.out_channels,
        kernel=layer.kernel,
        stride=layer.stride,
        groups=layer.groups,
        activation=rules.activation,
        same_padding_at=same,
    )


class InvertedResidual(nn.Module):
    """Expansion 1x1, depthwise kxk, [squeeze-excite], linear projection 1x1 (paper section 3.3, Table 1).

    Built from the block's layer description (layers.block_layers), the one the cost model sums.
    """

    def __init__(self, block: Block, bottleneck_activation: str = "linear", rules: Convention = TORCHVISION) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        self.shortcut: nn.Module | None = None
        for layer in block_layers(block, path=""):
            if layer.role in ("expand", "depthwise"):
                modules.append(_conv_bn_act(layer, rules))
            elif layer.role == "shortcut":
                self.shortcut = nn.Conv2d(layer.in_channels, layer.out_channels, 1, bias=False)
            elif layer.role == "se_reduce":  # ReLU, then a sigmoid gate (MobileNetV3 uses a hard sigmoid)
                modules.append(SqueezeExcitation(layer.in_channels, layer.out_channels))
            elif layer.role == "project":
                modules += [
                    nn.Conv2d(layer.in_channels, layer.out_channels, 1, bias=False),
                    nn.BatchNorm2d(layer.out_channels),
                ]
        if bottleneck_activation == "relu6":  # Fig. 6a ablation: non-linear bottleneck
            modules.append(nn.ReLU6(inplace=True))
        self.conv = nn.Sequential(*modules)
        self.use_res_connect = block.residual
        self.expand = block.expand
        self.expansion_residual = block.expansion_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck shortcut where the block has one (paper Fig. 3b); a projected one where it widens."""
        out = self.conv(x)
        if self.shortcut is not None:
            return out + self.shortcut(x)
        return x + out if self.use_res_connect else out

    def forward_expansion_shortcut(
        self, x: torch.Tensor, previous_expansion: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fig. 6b "shortcut between expansions": add the previous expansion to this one."""
        if not self.expand:
            return self.conv(x), None  # no expansion conv: nothing to carry
        expansion = self.conv[0](x)
        if self.expansion_residual and previous_expansion is not None:
            expansion = expansion + previous_expansion
        return self.conv[1:](expansion), expansion


class MobileNetV2(nn.Module):
    """MobileNetV2 built from an ArchSpec; under the torchvision convention its state_dict matches."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        described = layers(spec)  # the cost model's description: stem first, head and classifier last
        stem, head, classifier = described[0], described[-2], described[-1]
        features: list[nn.Module] = [_conv_bn_act(stem, spec.rules)]
        features += [InvertedResidual(block, spec.bottleneck_activation, spec.rules) for block in spec.blocks]
        features.append(_conv_bn_act(head, spec.rules))
        self.features = nn.Sequential(*features)
        cin, cout, bias = classifier.in_channels, classifier.out_channels, classifier.bias
        final = nn.Conv2d(cin, cout, 1, bias=bias) if classifier.conv_classifier else nn.Linear(cin, cout, bias=bias)
        self.classifier = nn.Sequential(nn.Dropout(p=spec.dropout), final)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so a fresh model trains like theirs.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:  # squeeze-excite's convs
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        final = self.classifier[-1]  # a Linear or a 1x1 conv: torchvision's classifier initialisation
        nn.init.normal_(final.weight, 0, 0.01)
        if final.bias is not None:
            nn.init.zeros_(final.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, blocks and head conv."""
        if self.spec.shortcut != "expansion":
            return self.features(x)
        x = self.features[0](x)
        carried = None
        for block in self.features[1:-1]:
            x, carried = block.forward_expansion_shortcut(x, carried)
        return self.features[-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        x = self.forward_features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        if isinstance(self.classifier[-1], nn.Linear):
            return self.classifier(x.flatten(1))
        return self.classifier(x).flatten(1)  # shicai's fc7, neuleaf's logits: a 1x1 conv


def build_model(spec: ArchSpec) -> MobileNetV2:
    """The nn.Module for a spec."""
    return MobileNetV2(spec)
