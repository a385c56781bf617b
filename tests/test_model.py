from __future__ import annotations

import pytest
import torch
import torchvision

from mbv2_search.arch import build_spec
from mbv2_search.knobs import Knobs
from mbv2_search.model import build_model


@pytest.mark.parametrize("width", [0.35, 0.5, 0.75, 1.0, 1.4])
def test_state_dict_matches_torchvision_and_outputs_agree(width):
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2(width_mult=width).eval()
    ours = build_model(build_spec(Knobs(width=width, resolution=64))).eval()
    theirs = reference.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    ours.load_state_dict(theirs)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images), rtol=0, atol=0)


@pytest.mark.parametrize(
    "knobs",
    [
        Knobs(resolution=32, stem_stride=1, strides=(1, 1, 2, 2, 1, 2, 1), num_classes=10),
        Knobs(resolution=40, kernels=(3, 5, 7, 5, 3, 5, 7), expansion=(2, 3, 4, 5, 6, 4, 3), width=0.6),
        Knobs(resolution=32, bottleneck_activation="relu6"),
        Knobs(resolution=32, shortcut="expansion"),
        Knobs(resolution=33, shortcut="none", convention="tf-slim"),
    ],
)
def test_variants_build_and_give_logits(knobs):
    spec = build_spec(knobs)
    logits = build_model(spec).eval()(torch.randn(2, 3, spec.resolution, spec.resolution))
    assert logits.shape == (2, spec.num_classes)


def test_ablations_change_the_function_not_the_weights():
    torch.manual_seed(0)
    base = build_model(build_spec(Knobs(resolution=32))).eval()
    images = torch.randn(2, 3, 32, 32)
    for knobs in (
        Knobs(resolution=32, bottleneck_activation="relu6"),
        Knobs(resolution=32, shortcut="expansion"),
        Knobs(resolution=32, shortcut="none"),
    ):
        variant = build_model(build_spec(knobs)).eval()
        variant.load_state_dict(base.state_dict())
        with torch.no_grad():
            ours, theirs = variant.forward_features(images), base.forward_features(images)
        assert (ours - theirs).abs().max() > 1e-3 * theirs.abs().max()
