from __future__ import annotations

import pytest

from mbv2_search.arch import Knobs, build_spec
from mbv2_search.cost import activation_table, costs, fvcore_count, layers
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


def test_analytic_costs_equal_fvcore_and_module_on_60_random_specs(rng):
    for _ in range(60):
        spec = build_spec(random_knobs(rng))
        analytic = costs(spec)
        counted = fvcore_count(spec)
        assert analytic.madds == counted.madds, spec.knobs
        assert counted.by_operator["batch_norm"] > 0  # fvcore does count BatchNorm; we keep it out
        module_view = analytic.params + (0 if spec.count_bn_params else analytic.bn_params)
        assert module_view == counted.module_params, spec.knobs
