from __future__ import annotations

import json

import pytest
import yaml

from mbv2_search.arch import build_spec
from mbv2_search.cli import main
from mbv2_search.config import ArchFile
from mbv2_search.knobs import Knobs
from mbv2_search.latency import LatencyTable, build_table, space_specs, unit_keys
from mbv2_search.search import load_context
from mbv2_search.storage import open_study
from mbv2_search.workers import work
from tests.test_search import SPACE, write_study


def test_units_cover_stem_blocks_and_head():
    spec = build_spec(Knobs(resolution=32))
    keys = unit_keys(spec)
    assert keys[0][0] == "stem" and keys[-1][0] == "head" and len(keys) == len(spec.blocks) + 2


def test_table_predicts_every_candidate_of_an_enumerable_space(tmp_path):
    arch_file = ArchFile.model_validate(SPACE)
    specs, how = space_specs(arch_file, samples=10)
    assert how == "all 8 candidates of the space" and len(specs) == 8
    table = build_table(specs, "cpu", repeats=2, warmup=1)
    assert all(table.predict(spec) > 0 for spec in specs)
    table.save(tmp_path / "t.json")
    again = LatencyTable.load(tmp_path / "t.json")
    assert again.predict(specs[0]) == pytest.approx(table.predict(specs[0]))
    other = build_spec(Knobs(resolution=64))
    assert again.missing(other)
    with pytest.raises(KeyError, match="no entry"):
        again.predict(other)


def test_latency_table_command_and_predicted_latency_in_a_study(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    out = tmp_path / "latency.json"
    main(["latency-table", str(space), "--repeats", "2", "--classes", "10", "--out", str(out)])
    assert "units measured from all 8 candidates" in capsys.readouterr().out
    assert json.loads(out.read_text())["units"]
    path = write_study(
        tmp_path,
        space="space.yaml",
        objectives=["val_acc", "latency_ms"],
        latency={"table": "latency.json"},
        n_trials=2,
    )
    ctx = load_context(path, reports_root=tmp_path / "reports")
    work(ctx)
    trials = open_study(ctx).get_trials()
    assert all(t.user_attrs["latency_source"] == "predicted" and t.user_attrs["latency_ms"] > 0 for t in trials)


def test_unit_keys_carry_every_structural_block_field():
    """A shortcut between expansions or a squeeze-excite makes a different unit (it costs time)."""
    plain = unit_keys(build_spec(Knobs(resolution=32)))
    carried = unit_keys(build_spec(Knobs(resolution=32, shortcut="expansion")))
    excited = unit_keys(build_spec(Knobs(resolution=32, se_ratio=0.25)))
    assert plain != carried and plain != excited and carried != excited
    assert {k for k in excited if k[0] == "block"}.isdisjoint({k for k in plain if k[0] == "block"})


def test_tables_written_with_the_old_positional_keys_still_predict(tmp_path):
    spec = build_spec(Knobs(width=0.35, resolution=32, num_classes=10))
    old_units = {}
    for key in unit_keys(spec):
        if key[0] == "block":
            b = dict(key[2])
            key = ("block", b["in_size"], b["in_channels"], b["hidden_channels"], b["out_channels"], b["stride"],
                   b["kernel"], b["expand"], b["residual"], key[1])  # fmt: skip
        old_units[json.dumps(key)] = 1.0
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"device": "cpu", "hardware": "x", "offset_ms": 0.5, "units": old_units}))
    assert LatencyTable.load(path).predict(spec) == len(unit_keys(spec)) + 0.5
