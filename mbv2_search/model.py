"""nn.Module from an ArchSpec, with torchvision's module layout so its state_dicts load."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from mbv2_search.arch import ArchSpec, Block
from mbv2_search.layers import block_layers, layers


def conv_bn_act(cin: int, cout: int, *, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv, BatchNorm, ReLU6: torchvision's Conv2dNormActivation layout (keys .0 and .1)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expansion 1x1, depthwise kxk, [squeeze-excite], linear projection 1x1 (paper section 3.3, Table 1).

    Built from the block's layer description (layers.block_layers), the one the cost model sums.
    """

    def __init__(self, block: Block, bottleneck_activation: str = "linear") -> None:
        super().__init__()
        modules: list[nn.Module] = []
        for layer in block_layers(block, prefix=""):
            if layer.role in ("expand", "depthwise"):
                modules.append(
                    conv_bn_act(
                        layer.in_channels,
                        layer.out_channels,
                        kernel=layer.kernel,
                        stride=layer.stride,
                        groups=layer.groups,
                    )
                )
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
        """Bottleneck shortcut where the block has one (paper Fig. 3b)."""
        out = self.conv(x)
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
        features: list[nn.Module] = [
            conv_bn_act(stem.in_channels, stem.out_channels, kernel=stem.kernel, stride=stem.stride)
        ]
        features += [InvertedResidual(block, spec.bottleneck_activation) for block in spec.blocks]
        features.append(conv_bn_act(head.in_channels, head.out_channels, kernel=1))
        self.features = nn.Sequential(*features)
        linear = nn.Linear(classifier.in_channels, classifier.out_channels)
        self.classifier = nn.Sequential(nn.Dropout(p=spec.dropout), linear)
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
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

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
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def build_model(spec: ArchSpec) -> MobileNetV2:
    """The nn.Module for a spec."""
    return MobileNetV2(spec)
