"""State dicts saved by other implementations, with their keys mapped onto this package's layout."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def from_tonylins(state: dict[str, Any]) -> dict[str, Any]:
    """tonylins/pytorch-mobilenet-v2's state_dict (as its repository saves it) in our (torchvision's) layout.

    Its blocks are flat Sequentials: conv, BN, ReLU6 triplets for the expansion and depthwise convs,
    then the projection conv and its BN; its classifier is a bare Linear. Ours nest each triplet
    (conv.0.0, conv.0.1) and put a Dropout before the classifier (classifier.1). Checkpoints older
    than torch 0.4.1 lack BatchNorm's num_batches_tracked: it is added as 0.
    """
    import torch

    triplets = {}  # block index -> number of conv-BN-ReLU6 triplets (1 with t = 1, else 2)
    for key in state:
        match = re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.weight", key)
        if match:
            block, index = int(match.group(1)), int(match.group(2))
            triplets[block] = max(triplets.get(block, 0), index)
    triplets = {block: 1 if last == 4 else 2 for block, last in triplets.items()}  # last BN at 4 or 7
    mapped = {}
    for key, value in state.items():
        mapped[_tonylins_key(key, triplets)] = value
    for key in [k for k in mapped if k.endswith(".running_var")]:
        mapped.setdefault(key.replace("running_var", "num_batches_tracked"), torch.tensor(0))
    return mapped


def _tonylins_key(key: str, triplets: dict[int, int]) -> str:
    if key.startswith("classifier."):
        return "classifier.1." + key.removeprefix("classifier.")
    match = re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.(.+)", key)
    if not match:
        return key  # the stem and the head conv have the same keys
    block, index, rest = int(match.group(1)), int(match.group(2)), match.group(3)
    groups = triplets[block]
    part = f"{index // 3}.{index % 3}" if index < 3 * groups else str(groups + index - 3 * groups)
    return f"features.{block}.conv.{part}.{rest}"


class WeightsError(ValueError):
    """A weights file that cannot be read, or does not fit the model: names the file and the key."""


def from_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model's weights in a training checkpoint (Lightning's best.ckpt); the EMA weights where kept."""
    state = checkpoint["state_dict"]
    prefix = "ema.module." if any(k.startswith("ema.module.") for k in state) else "model."
    return {k.removeprefix(prefix).replace("_orig_mod.", ""): v for k, v in state.items() if k.startswith(prefix)}


def read_weights(path: str | Path) -> tuple[dict[str, Any], str]:
    """Weights from a file in our layout, as a state_dict in it, and which layout the file had.

    Accepted: an exported trial or torchvision's mobilenet_v2 state_dict (the same layout), a training
    checkpoint (best.ckpt), and tonylins/pytorch-mobilenet-v2's state_dict (its keys mapped).
    """
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except Exception as err:  # a damaged or foreign file fails in many ways; all mean the same to the user
        raise WeightsError(f"{path}: not a PyTorch weights file ({type(err).__name__})") from None
    if not isinstance(loaded, dict):
        raise WeightsError(f"{path}: expected a state_dict or a checkpoint, got a {type(loaded).__name__}")
    if "state_dict" in loaded:
        return from_checkpoint(loaded), "a training checkpoint"
    if "classifier.weight" in loaded:  # a bare Linear classifier: tonylins' layout
        return from_tonylins(loaded), "tonylins' layout"
    return loaded, "torchvision's layout"


def load_into(model: Any, state: dict[str, Any], *, source: str, new_classifier: bool = True) -> str:
    """Load weights into a model; a classifier of another class count is re-initialised (the note says so),
    or refused where `new_classifier` is False (eval: a fresh classifier would measure chance)."""
    own = model.state_dict()
    for key in sorted(set(own) ^ set(state)):
        if not key.startswith("classifier."):
            where = "in the file but not the model" if key in state else "in the model but not the file"
            raise WeightsError(f"{source}: {key} is {where}; the architecture flags must match the weights")
    different = [k for k in state if k in own and own[k].shape != state[k].shape]
    for key in different:
        if not key.startswith("classifier."):
            shapes = f"{tuple(state[key].shape)} in the file, {tuple(own[key].shape)} in the model"
            raise WeightsError(f"{source}: {key}: {shapes}; the architecture flags must match the weights")
    if different:
        classes = f"the weights have {state[different[0]].shape[0]} classes, the model {own[different[0]].shape[0]}"
        if not new_classifier:
            raise WeightsError(f"{source}: {classes}")
    model.load_state_dict({k: v for k, v in state.items() if k not in different}, strict=False)
    return f"the classifier was re-initialised: {classes}" if different else ""
