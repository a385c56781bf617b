"""Exact analytic costs of an ArchSpec (no torch), and the fvcore cross-check that builds it.

Conventions (DESIGN.md section 3): MAdds are the multiply-accumulates of convolutions and the
classifier at batch 1; BatchNorm, activations, residual adds and pooling count 0. Parameters are
conv weights, the biases of the classifier and of squeeze-excite's convs, and BatchNorm weight and
bias where the convention counts them (torchvision, timm) but not TF-Slim's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mbv2_search.arch import ArchSpec
from mbv2_search.layers import layers


@dataclass(frozen=True)
class Costs:
    """Integer costs of one variant at batch 1."""

    madds: int
    params: int
    peak_activation_bytes: int
    bn_params: int  # BatchNorm weight + bias, whether or not the convention counts them


def costs(spec: ArchSpec, bytes_per_value: int = 2) -> Costs:
    """MAdds, parameters and peak activation memory of a spec, without building it."""
    madds = weights = bn = 0
    for layer in layers(spec):
        madds += layer.madds
        weights += layer.weights
        bn += layer.bn_params
    peak = max(row.bytes for row in activation_table(spec, bytes_per_value))
    return Costs(madds, weights + (bn if spec.count_bn_params else 0), peak, bn)


@dataclass(frozen=True)
class ActivationRow:
    """Largest tensor that must be materialized at one spatial size (paper Table 3)."""

    size: int
    channels: int
    bytes: int


def activation_table(spec: ArchSpec, bytes_per_value: int = 2) -> list[ActivationRow]:
    """Per spatial size, the widest tensor that must be materialized, in bytes.

    Follows paper Table 3 and section 5: a bottleneck block streams its expansion, so only the
    bottleneck tensors between blocks are materialized; the stem is streamed into a first block
    without expansion ("the trick" for the first layer), and the head conv into the global pool.
    Expansions that carry a shortcut (Fig. 6b ablation) must be materialized, and so must a
    depthwise output that a squeeze-excite gates (its mean over every position comes before any
    output). The input image is not counted. For MobileNetV2 1.0 at 224 the peak is 112x112x16 at 16 bits: 401,408 bytes.
    """
    tensors: list[tuple[int, int]] = []  # (side length, channels)
    if spec.blocks[0].expand:
        tensors.append((spec.stem_size, spec.stem_channels))
    for index, block in enumerate(spec.blocks):
        following = spec.blocks[index + 1] if index + 1 < len(spec.blocks) else None
        if block.expansion_residual or (following is not None and following.expansion_residual):
            tensors.append((block.in_size, block.hidden_channels))
        if block.se_channels:
            tensors.append((block.out_size, block.hidden_channels))
        tensors.append((block.out_size, block.out_channels))
    tensors += [(1, spec.head_channels), (1, spec.num_classes)]
    widest: dict[int, int] = {}
    for size, channels in tensors:
        widest[size] = max(widest.get(size, 0), channels)
    return [ActivationRow(s, c, s * s * c * bytes_per_value) for s, c in sorted(widest.items(), reverse=True)]


@dataclass(frozen=True)
class FvcoreCount:
    """fvcore's count of a built module, by operator, and the module's parameter count."""

    by_operator: dict[str, int]
    module_params: int  # every nn.Parameter, BatchNorm's weight and bias included

    @property
    def madds(self) -> int:
        """Convolution + linear: the part of fvcore's count that the MAdds convention keeps."""
        return sum(self.by_operator.get(op, 0) for op in MADD_OPERATORS)


MADD_OPERATORS = ("conv", "linear", "addmm")  # fvcore names the classifier 'linear' (older torch: 'addmm')


def fvcore_count(spec: ArchSpec) -> FvcoreCount:
    """Build the module and count it with fvcore (batch 1, eval mode): the independent check.

    fvcore also counts BatchNorm and pooling; they are reported by operator and left out of MAdds.
    """
    import warnings

    import torch

    from mbv2_search.model import build_model

    model = build_model(spec).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fvcore uses torch.jit, deprecated in torch 2.x
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model, torch.zeros(1, spec.in_channels, spec.resolution, spec.resolution))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_operator = {op: int(count) for op, count in analysis.by_operator().items()}
    return FvcoreCount(by_operator, sum(p.numel() for p in model.parameters()))


def time_forward(
    module: Any, shape: tuple[int, ...], *, device: str = "cpu", repeats: int = 30, warmup: int = 5
) -> float:
    """Median milliseconds of one eval-mode forward pass at an input shape, after warm-up runs."""
    import statistics
    import time

    import torch

    module = module.eval().to(device)
    image = torch.randn(*shape, device=device)
    cuda = torch.device(device).type == "cuda"
    times = []
    with torch.inference_mode():
        for index in range(warmup + repeats):
            start = time.perf_counter()
            module(image)
            if cuda:
                torch.cuda.synchronize()
            if index >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure_latency_ms(spec: ArchSpec, device: str = "cpu", *, repeats: int = 30, warmup: int = 5) -> float:
    """Median batch-1 inference latency in milliseconds on this host, after warm-up runs."""
    from mbv2_search.model import build_model

    return time_forward(
        build_model(spec),
        (1, spec.in_channels, spec.resolution, spec.resolution),
        device=device,
        repeats=repeats,
        warmup=warmup,
    )
