from __future__ import annotations

import subprocess
import sys

import pytest

from mbv2_search.arch import MOBILENET_V2, Row, Table, build_spec, make_divisible, scaled_repeats
from mbv2_search.knobs import ArchError, Knobs


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (32 * 0.35, 16),
        (16 * 0.35, 8),
        (24 * 0.5, 16),
        (1280 * 1.4, 1792),
        (96 * 0.75, 72),
        (3, 8),
        (100, 104),
        (92, 96),
    ],
)
def test_make_divisible_rounds_to_nearest_eight_with_ten_percent_guard(value, expected):
    assert make_divisible(value) == expected
    assert make_divisible(value) % 8 == 0 and make_divisible(value) >= 0.9 * value


def test_default_spec_is_paper_table_2():
    spec = build_spec()
    assert (spec.stem_channels, spec.head_channels, spec.num_classes) == (32, 1280, 1000)
    assert len(spec.blocks) == 17
    assert [b.out_channels for b in spec.blocks][::4] == [16, 32, 64, 96, 320]
    assert spec.final_size == 7
    first = spec.blocks[0]
    assert not first.expand and first.hidden_channels == 32  # t = 1: no expansion conv
    assert sum(b.residual for b in spec.blocks) == 10  # stride 1 and same width


def test_conventions_differ_in_hidden_width_and_classes():
    tv = build_spec(Knobs(width=0.35))
    slim = build_spec(Knobs(width=0.35, convention="tf-slim"))
    assert slim.num_classes == 1001 and tv.num_classes == 1000
    # block 2: 8 input channels x 6 = 48 either way; block 4: 16 x 6 = 96; look for a differing one
    widths = [(a.hidden_channels, b.hidden_channels) for a, b in zip(tv.blocks, slim.blocks)]
    assert all(s % 8 == 0 for _, s in widths)
    assert build_spec(Knobs(width=0.6, expansion=5.5)).blocks[1].hidden_channels == int(round(16 * 5.5))
    assert build_spec(Knobs(width=0.6, expansion=5.5, convention="tf-slim")).blocks[
        1
    ].hidden_channels == make_divisible(16 * 5.5)


def test_head_rules():
    assert build_spec(Knobs(width=0.5)).head_channels == 1280
    assert build_spec(Knobs(width=0.5, head_rule="scale")).head_channels == 640
    assert build_spec(Knobs(width=1.4)).head_channels == 1792
    fixed = build_spec(Knobs(width=0.5, fix_stem_head=True))
    assert (fixed.stem_channels, fixed.head_channels) == (32, 1280)


def test_depth_multiplier_rounding_and_fixed_ends():
    assert scaled_repeats(3, 0.5, rounding="ceil") == 2 and scaled_repeats(3, 0.5, rounding="round") == 2
    assert scaled_repeats(4, 0.3, rounding="round") == 1 and scaled_repeats(1, 0.1, rounding="ceil") == 1
    repeats = lambda spec: [sum(b.row == r for b in spec.blocks) for r in range(7)]  # noqa: E731
    assert repeats(build_spec(Knobs(depth=2.0))) == [2, 4, 6, 8, 6, 6, 2]
    assert repeats(build_spec(Knobs(depth=2.0, fix_first_last=True))) == [1, 4, 6, 8, 6, 6, 1]
    assert repeats(build_spec(Knobs(depth=0.5, depth_rounding="round"))) == [1, 1, 2, 2, 2, 2, 1]


def test_expansion_global_and_per_row():
    spec = build_spec(Knobs(expansion=3))
    assert [b.t for b in spec.blocks][:3] == [1, 3, 3]  # t = 1 row left alone
    per_row = build_spec(Knobs(expansion=(2, 3, 4, 5, 6, 6, 6)))
    assert per_row.blocks[0].t == 2 and per_row.blocks[0].expand
    assert per_row.blocks[1].hidden_channels == 16 * 3


def test_cifar_strides_and_kernels():
    spec = build_spec(Knobs(resolution=32, stem_stride=1, strides=(1, 1, 2, 2, 1, 2, 1), kernels=(3, 5, 5, 7, 3, 3, 3)))
    assert spec.stem_size == 32 and spec.final_size == 4
    assert {b.kernel for b in spec.blocks if b.row == 3} == {7}


def test_ablation_knobs():
    assert not any(b.residual for b in build_spec(Knobs(shortcut="none")).blocks)
    expansion = build_spec(Knobs(shortcut="expansion"))
    assert not any(b.residual for b in expansion.blocks)
    assert sum(b.expansion_residual for b in expansion.blocks) > 0
    for previous, block in zip(expansion.blocks, expansion.blocks[1:]):
        if block.expansion_residual:
            assert previous.stride == 1 and previous.hidden_channels == block.hidden_channels


@pytest.mark.parametrize(
    ("knobs", "table", "field"),
    [
        (Knobs(width=0), MOBILENET_V2, "width"),
        (Knobs(width=-0.5), MOBILENET_V2, "width"),
        (Knobs(resolution=16), MOBILENET_V2, "resolution"),
        (Knobs(convention="keras"), MOBILENET_V2, "convention"),
        (Knobs(expansion=0.5), MOBILENET_V2, "expansion"),
        (Knobs(strides=(1, 2)), MOBILENET_V2, "strides"),
        (Knobs(strides=(1, 3, 2, 2, 1, 2, 1)), MOBILENET_V2, "strides[1]"),
        (Knobs(kernels=(3, 3, 4, 3, 3, 3, 3)), MOBILENET_V2, "kernels[2]"),
        (Knobs(stem_stride=4), MOBILENET_V2, "stem_stride"),
        (Knobs(), Table((Row(0.5, 16, 1, 1),)), "rows[0].t"),
        (Knobs(), Table((Row(6, 0, 1, 1),)), "rows[0].c"),
        (Knobs(), Table((Row(6, 16, 0, 1),)), "rows[0].n"),
        (Knobs(), Table((Row(6, 16, 1, 3),)), "rows[0].s"),
        (Knobs(), Table((Row(6, 16, 1, 1, 4),)), "rows[0].k"),
        (Knobs(), Table(()), "rows"),
    ],
)
def test_bad_values_name_field_value_and_allowed(knobs, table, field):
    with pytest.raises(ArchError) as err:
        build_spec(knobs, table)
    assert err.value.field_name == field
    assert str(err.value).startswith(f"{field}: got ") and "allowed: " in str(err.value)


def test_arch_module_does_not_import_torch():
    code = "import sys, mbv2_search.arch, mbv2_search.cost, mbv2_search.report.paper, mbv2_search.report.build; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
