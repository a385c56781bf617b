from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mbv2_search.config import load_arch_file
from mbv2_search.sampler import make_sampler
from mbv2_search.schema import ConfigError, read_yaml
from mbv2_search.search import load_context
from mbv2_search.space import grid
from mbv2_search.study import load_study

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_load_with_their_sampler(path):
    ctx = load_context(path)
    make_sampler(ctx.study.sampler, ctx.arch_file)
    assert ctx.storage_url.startswith("journal:")


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_load(path):
    load_arch_file(path)


def test_paper_grid_has_the_21_points_of_figure_5():
    study, arch_file = load_study(ROOT / "studies" / "paper_grid_digits.yaml")
    explicit = study.sampler.options["grid"]
    assert len(explicit["width"]) * len(explicit["resolution"]) + len(study.baselines) == study.n_trials == 21
    assert len(grid(arch_file)["width"]) == 5  # 1.4 lies in the space, for the baseline point


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (b"", "empty file"),
        (b"- a\n- b\n", "expected a YAML mapping at the top, got list"),
        (b"a: [1, 2\n", "invalid YAML"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (
            b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + b"".join(f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n".encode() for p, n in zip("abcdef", "bcdefg")),
            "aliases expand",
        ),
        (b"!!python/object/apply:os.system ['true']\n", "invalid YAML"),
    ],
)
def test_unreadable_yaml_is_one_clear_error(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=needle) as err:
        read_yaml(path)
    assert str(err.value).startswith(str(path))


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        read_yaml(tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        read_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("table: {rows: [{t: 6, c: 16, n: 1, s: 1, k: 4}]}", "table.rows[0].k: got 4; allowed: 3, 5 or 7"),
        ("knobs: {width: 0}", "knobs.width: got 0"),
        ("knobs: {widht: 1}", "knobs.widht: unknown key 'widht'; did you mean 'width'?"),
        ("vary: {width: {low: 2, high: 1}}", "vary.width: low 2.0 is above high 1.0"),
        (
            "vary: {depth: {choices: [1], per_row: true}}",
            "per_row is allowed only for expansion, strides, kernels, row_widths, repeats",
        ),
        ("knobs: {resolution: 16}", "knobs.resolution: got 16; allowed: >= 17"),
        ("vary: {se_ratio: {choices: [0, 2]}}", "vary.se_ratio.choices[1]: got 2; allowed: a number in [0, 1]"),
        ("vary: {strides: {choices: [1, 3], per_row: true}}", "vary.strides.choices[1]: got 3; allowed: 1 or 2"),
        ("vary: {repeats: {low: 0, high: 3, per_row: true}}", "vary.repeats.low: got 0; allowed: an integer 1..32"),
        ("vary: {row_widths: {low: 0.5, high: 9}}", "vary.row_widths.high: got 9.0; allowed: a number in (0, 4]"),
        ("vary: {resolution: {low: 17, high: 224}}", None),
        (
            "vary: {resolution: {low: 16, high: 64, step: 0.5}}",
            "vary.resolution.step: got 0.5; allowed: a whole number > 0",
        ),
        (
            "vary: {width: {low: 0.5, high: 1, step: 0}}",
            "vary.width.step: got 0.0; allowed: a number > 0",
        ),  # integer ranges read as floats in YAML
        ("vary: {repeats: {low: 1, high: 3, per_row: true}, strides: {choices: [1, 2], per_row: true}}", None),
        (
            "knobs: {row_widths: [1, 1]}",
            "knobs.row_widths: got [1.0, 1.0]; allowed: one value for every row, or 7 values, one per row",
        ),
        ("knobs: {se_ratio: -0.5}", "knobs.se_ratio: got -0.5; allowed: a number in [0, 1]"),
        ("knobs: {width: 0.01}", None),  # rounds up to 8 channels: valid, never zero
    ],
)
def test_space_errors_name_key_value_and_allowed(tmp_path, text, needle):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    if needle is None:
        load_arch_file(path)
        return
    with pytest.raises(ConfigError) as err:
        load_arch_file(path)
    assert needle in str(err.value) and str(err.value).startswith(str(path))


@pytest.mark.parametrize("step", [{}, {"step": 1}, {"step": 4}])
def test_integer_knobs_take_low_high_ranges(tmp_path, step):
    study = {
        "name": "ranges",
        "space": {"knobs": {"num_classes": 10}, "vary": {"resolution": {"low": 17, "high": 224, **step}}},
        "n_trials": 1,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    _, arch_file = load_study(path)  # refused before: "got 17.0 at the low end of the space"
    from mbv2_search.space import cheapest_knobs

    assert [k.resolution for k in cheapest_knobs(arch_file)] == [17]


def test_cheapest_corner_of_per_row_strides_is_the_true_least_cost(tmp_path):
    """rows + 1 stride candidates (the first k rows at stride 2) hold the least MAdds of all 2^rows patterns."""
    import itertools

    from mbv2_search import space
    from mbv2_search.arch import build_spec
    from mbv2_search.cost import costs
    from mbv2_search.knobs import ArchError

    path = tmp_path / "space.yaml"
    path.write_text("knobs: {resolution: 24, stem_stride: 1}\nvary: {strides: {choices: [1, 2], per_row: true}}\n")
    arch_file = load_arch_file(path)

    def least(knob_list):
        found = []
        for knobs in knob_list:
            try:
                found.append(costs(build_spec(knobs, arch_file.to_table())).madds)
            except ArchError:
                continue
        return min(found)

    every = [arch_file.knobs.to_knobs(strides=p) for p in itertools.product([1, 2], repeat=7)]
    corners = space.cheapest_knobs(arch_file)
    assert len(corners) == 8 and least(corners) == least(every)


def test_per_row_strides_over_many_rows_load_at_once(tmp_path):
    rows = "\n".join("    - {t: 6, c: 16, n: 1, s: 1}" for _ in range(24))
    path = tmp_path / "space.yaml"
    path.write_text(f"table:\n  rows:\n{rows}\nvary: {{strides: {{choices: [1, 2], per_row: true}}}}\n")
    from mbv2_search import space

    assert len(space.cheapest_knobs(load_arch_file(path))) == 25  # not 2^24


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("knobs: {resolution: 16}\nknobs: {num_classes: 10}\n")
    with pytest.raises(ConfigError, match=r"line 2: invalid YAML: duplicate key 'knobs'"):
        load_arch_file(path)


def test_a_range_over_a_knob_of_set_values_must_skip_the_others(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("vary: {kernels: {low: 3, high: 7, per_row: true}}\n")
    with pytest.raises(ConfigError, match=r"vary.kernels: got a range 3..7 that includes 4; allowed: 3, 5 or 7"):
        load_arch_file(path)
    path.write_text("vary: {kernels: {low: 3, high: 7, step: 2}}\n")
    load_arch_file(path)
