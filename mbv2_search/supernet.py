"""A weight-sharing supernet: the space's largest MobileNetV2, whose slices are every other member.

A member (sub-network) takes the supernet's first channels of every layer, the first blocks of each row and
the centre of each kernel (BigNAS, Yu et al. 2020). Both ways of running one use the same name map: the
forward runs the member's own module tree on views of the supernet's tensors (gradients reach the shared
weights), and `extract` copies those views into a standalone model, so the two compute the same function.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from mbv2_search.arch import ArchSpec, Block
from mbv2_search.layers import Layer, block_layers, layers
from mbv2_search.model import InvertedResidual, MobileNetV2, build_model


class DoesNotFit(ValueError):
    """A member with a layer larger than the supernet's (not in the space it was built for)."""


def _norm_name(layer: Layer) -> str:
    """The module path of the BatchNorm after a conv: .1 beside a conv at .0, else the next child."""
    parent, last = layer.name.rsplit(".", 1)
    return f"{parent}.1" if last == "0" else f"{parent}.{int(last) + 1}"


def _block_paths(spec: ArchSpec) -> dict[tuple[int, int], tuple[str, Block]]:
    """(row, repeat) -> the block's module path and the block."""
    out, repeat = {}, 0
    for index, block in enumerate(spec.blocks, start=1):
        repeat = repeat + 1 if index > 1 and spec.blocks[index - 2].row == block.row else 0
        out[block.row, repeat] = (f"features.{index}", block)
    return out


def _layer_pairs(member: ArchSpec, largest: ArchSpec) -> Iterable[tuple[Layer, Layer]]:
    """Each layer of the member with the supernet layer it is cut from: same row, repeat and role."""
    ours, theirs = layers(member), layers(largest)
    yield ours[0], theirs[0]  # stem
    super_blocks = _block_paths(largest)
    for key, (path, block) in _block_paths(member).items():
        if key not in super_blocks:
            raise DoesNotFit(f"row {key[0]} has {key[1] + 1} blocks; the supernet's has fewer")
        super_path, super_block = super_blocks[key]
        by_role = {layer.role: layer for layer in block_layers(super_block, super_path)}
        for layer in block_layers(block, path):
            if layer.role not in by_role:
                raise DoesNotFit(f"{layer.name}: a {layer.role} layer the supernet's block {super_path} lacks")
            yield layer, by_role[layer.role]
    yield ours[-2], theirs[-2]  # head
    yield ours[-1], theirs[-1]  # classifier


def _cut(tensor: torch.Tensor, layer: Layer, *, weight: bool) -> torch.Tensor:
    """The member's view of a supernet tensor: first outputs, first inputs, kernel centre."""
    if tensor.dim() == 0:  # BatchNorm's num_batches_tracked: shared
        return tensor
    if tensor.shape[0] < layer.out_channels:
        raise DoesNotFit(f"{layer.name}: {layer.out_channels} channels; the supernet's layer has {tensor.shape[0]}")
    view = tensor[: layer.out_channels]
    if weight and tensor.dim() > 1:
        view = view[:, : layer.in_channels // layer.groups]
    if weight and tensor.dim() == 4 and tensor.shape[-1] != layer.kernel:
        margin = (tensor.shape[-1] - layer.kernel) // 2
        view = view[:, :, margin : margin + layer.kernel, margin : margin + layer.kernel]
    return view


class SuperNet(nn.Module):
    """The largest member's model (`net`, torchvision's layout) and its members as slices of it."""

    def __init__(self, largest: ArchSpec) -> None:
        super().__init__()
        self.spec = largest
        self.net = build_model(largest)
        self._maps: OrderedDict[ArchSpec, list[tuple[str, str, Layer, bool]]] = OrderedDict()
        self._shells: OrderedDict[ArchSpec, MobileNetV2] = OrderedDict()

    def _map(self, member: ArchSpec) -> list[tuple[str, str, Layer, bool]]:
        """(member key, supernet key, layer, is a conv weight or bias) for every tensor of the member's state_dict."""

        def make() -> list[tuple[str, str, Layer, bool]]:
            entries = []
            for ours, theirs in _layer_pairs(member, self.spec):
                modules = [(ours.name, theirs.name, True)]
                if ours.norm:
                    modules.append((_norm_name(ours), _norm_name(theirs), False))
                for our_module, their_module, conv in modules:
                    for name in self.net.get_submodule(their_module).state_dict():
                        entries.append((f"{our_module}.{name}", f"{their_module}.{name}", ours, conv))
            return entries

        return _remembered(self._maps, member, make)

    def member_state(self, member: ArchSpec) -> dict[str, torch.Tensor]:
        """The member's state_dict as views of the supernet's parameters and buffers (gradients flow back)."""
        tensors = {**dict(self.net.named_parameters()), **dict(self.net.named_buffers())}
        return {ours: _cut(tensors[theirs], layer, weight=conv) for ours, theirs, layer, conv in self._map(member)}

    def forward(self, images: torch.Tensor, member: ArchSpec | None = None) -> torch.Tensor:
        """Logits of a member (the largest when None) on images at the member's resolution."""
        if member is None or member == self.spec:
            return self.net(images)
        shell = _remembered(self._shells, member, lambda: _shell(member))
        shell.train(self.training)
        return functional_call(shell, self.member_state(member), (images,), strict=True)


REMEMBERED = 256  # members whose name map and shell are kept: a continuous range draws new ones every step


def _remembered(cache: OrderedDict, member: ArchSpec, make: Callable[[], Any]) -> Any:
    """cache[member], made on first use; the least recently used beyond REMEMBERED are dropped."""
    if member in cache:
        cache.move_to_end(member)
    else:
        cache[member] = make()
        if len(cache) > REMEMBERED:
            cache.popitem(last=False)
    return cache[member]


def _shell(member: ArchSpec) -> MobileNetV2:
    """The member's module tree without weights of its own (on the meta device: nothing allocated)."""
    with torch.device("meta"):
        return build_model(member)


def zero_residual_branches(net: nn.Module) -> int:
    """Start every block with a shortcut as the identity, its branch's last BatchNorm scaling by zero
    (BigNAS, Yu et al. 2020, section 3.1): a member that drops a row's last blocks then starts as the same
    function as the largest, so the members learn together rather than against each other. Returns how
    many blocks were changed."""
    changed = 0
    for block in net.modules():
        if isinstance(block, InvertedResidual) and (block.use_res_connect or block.shortcut is not None):
            last = [m for m in block.conv if isinstance(m, nn.BatchNorm2d)][-1]
            nn.init.zeros_(last.weight)
            changed += 1
    return changed


def extract(supernet: SuperNet, member: ArchSpec) -> MobileNetV2:
    """A standalone copy of a member with the supernet's weights (torchvision's layout), on the supernet's device."""
    device = next(supernet.parameters()).device
    model = build_model(member).to(device)
    with torch.no_grad():
        model.load_state_dict({k: v.clone() for k, v in supernet.member_state(member).items()})
    return model


CALIBRATION_SEED = 0  # the order calibration images are taken in: the same for every candidate and epoch


def calibration_batches(data: Any, batch_size: int, count: int) -> Iterable[Any]:
    """The images that recompute BatchNorm statistics: the first `count` batches of the training split in a
    fixed random order, unaugmented (an image folder's split is in class order: its first batches would
    show one class)."""
    import itertools

    return itertools.islice(data.loader("train", batch_size, shuffle=True, seed=CALIBRATION_SEED), count)


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable[Any]) -> int:
    """Recompute every BatchNorm's running statistics as the plain mean over the batches (the supernet's
    were accumulated over many members); returns the images seen. Leaves the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: every batch weighs the same
    model.train()
    images = 0
    for batch, _ in batches:
        model(batch)
        images += len(batch)
    for norm, momentum in zip(norms, saved):
        norm.momentum = momentum
    model.eval()
    return images
