from __future__ import annotations

import pytest

from mbv2_search.arch import build_spec
from mbv2_search.cost import activation_table, costs, fvcore_count
from mbv2_search.knobs import Knobs
from mbv2_search.layers import layers
from mbv2_search.reference import tf_slim_checkpoints, torchvision_madds_224, torchvision_params
from tests.conftest import random_knobs


def test_tf_slim_convention_reproduces_all_22_published_checkpoints():
    for ref in tf_slim_checkpoints().itertuples():
        cost = costs(build_spec(Knobs(width=ref.width, resolution=int(ref.resolution), convention="tf-slim")))
        assert cost.madds // 1_000_000 == ref.macs_m, ref.model
        assert round(cost.params / 1e6, 2) == ref.params_m, ref.model


@pytest.mark.parametrize(("width", "params"), sorted(torchvision_params().items()))
def test_torchvision_convention_matches_torchvision_parameter_counts(width, params):
    assert costs(build_spec(Knobs(width=width))).params == params


def test_torchvision_madds_at_224():
    assert costs(build_spec()).madds == torchvision_madds_224()


def test_peak_activation_is_paper_table_3():
    # paper Table 3: MobileNetV2 max 400K at 16-bit = 112 x 112 x 16 channels
    assert costs(build_spec()).peak_activation_bytes == 112 * 112 * 16 * 2
    assert costs(build_spec(), bytes_per_value=4).peak_activation_bytes == 112 * 112 * 16 * 4
    sizes = [row.size for row in activation_table(build_spec())]
    assert sizes == [112, 56, 28, 14, 7, 1]


def test_expansion_shortcut_materializes_expansions():
    plain = costs(build_spec(Knobs(resolution=64)))
    carried = costs(build_spec(Knobs(resolution=64, shortcut="expansion")))
    assert carried.madds == plain.madds and carried.params == plain.params
    assert carried.peak_activation_bytes > plain.peak_activation_bytes


def test_layers_are_named_like_torchvision_modules():
    names = [layer.name for layer in layers(build_spec())]
    assert names[:4] == ["features.0.0", "features.1.conv.0.0", "features.1.conv.1", "features.2.conv.0.0"]
    assert names[-2:] == ["features.18.0", "classifier.1"]


def test_every_described_layer_is_a_module_of_that_shape(rng):
    """The builder builds the cost model's description: same names, shapes, strides, groups and biases."""
    from torch import nn

    from mbv2_search.model import build_model

    for _ in range(20):
        spec = build_spec(random_knobs(rng, se_ratio=rng.choice([0.0, 0.25])))
        modules = dict(build_model(spec).named_modules())
        convs = [m for m in modules.values() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert len(convs) == len(layers(spec))
        for layer in layers(spec):
            module = modules[layer.name]
            if layer.kind == "linear":
                assert (module.in_features, module.out_features) == (layer.in_channels, layer.out_channels)
                continue
            shape = (module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0], module.groups)
            assert shape == (layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.groups)
            assert (module.bias is not None) == layer.bias


def test_squeeze_excite_costs_its_two_1x1_convs():
    plain, se = build_spec(), build_spec(Knobs(se_ratio=0.25))
    extra = 0
    for block in se.blocks:
        squeeze = max(8, int(block.hidden_channels * 0.25 + 4) // 8 * 8)
        squeeze += 8 if squeeze < 0.9 * block.hidden_channels * 0.25 else 0
        assert block.se_channels == squeeze
        extra += 2 * block.hidden_channels * squeeze  # reduce and expand at 1x1, batch 1
    assert costs(se).madds - costs(plain).madds == extra
    biases = sum(b.se_channels + b.hidden_channels for b in se.blocks)
    assert costs(se).params - costs(plain).params == extra + biases


def test_analytic_costs_equal_fvcore_and_module_on_60_random_specs(rng):
    for _ in range(60):
        spec = build_spec(random_knobs(rng))
        analytic = costs(spec)
        counted = fvcore_count(spec)
        assert analytic.madds == counted.madds, spec.knobs
        assert counted.by_operator["batch_norm"] > 0  # fvcore does count BatchNorm; we keep it out
        module_view = analytic.params + (0 if spec.count_bn_params else analytic.bn_params)
        assert module_view == counted.module_params, spec.knobs
