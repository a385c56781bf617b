from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mbv2_search.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cost_json_has_integer_costs(capsys):
    code, out, _ = run(capsys, "cost", "--json", "--width", "0.5", "--resolution", "160")
    payload = json.loads(out)
    assert code == 0
    assert all(isinstance(payload[k], int) for k in ("madds", "params", "peak_activation_bytes"))
    assert payload["knobs"]["width"] == 0.5


def test_cost_fvcore_json_agrees(capsys):
    code, out, _ = run(
        capsys,
        "cost",
        "--json",
        "--fvcore",
        "--resolution",
        "64",
        "--stem-stride",
        "1",
        "--strides",
        "1,1,2,2,1,2,1",
        "--classes",
        "10",
    )
    payload = json.loads(out)
    assert code == 0 and payload["fvcore"]["madds"] == payload["madds"] == payload["fvcore_madds"]
    assert payload["module_params"] == payload["params"] + (0 if payload["bn_params_counted"] else payload["bn_params"])
    assert payload["fvcore"]["by_operator"]["batch_norm"] > 0


def test_cost_with_per_row_knobs_and_squeeze_excite_equals_fvcore(capsys):
    argv = ["cost", "--json", "--fvcore", "--resolution", "64", "--row-widths", "1,1,1,1.5,1,0.5,1"]
    code, out, _ = run(capsys, *argv, "--repeats", "1,2,2,3,2,2,1", "--strides", "1", "--se-ratio", "0.25")
    payload = json.loads(out)
    assert code == 0 and payload["madds"] == payload["fvcore_madds"] and payload["module_params"] == payload["params"]
    assert payload["knobs"]["repeats"] == [1, 2, 2, 3, 2, 2, 1] and payload["knobs"]["strides"] == 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--repeats", "1,2"], "--repeats: got [1, 2]; allowed: one value for every row, or 7 values, one per row"),
        (["--row-widths", "1,x"], "--row-widths: got '1,x'; allowed: comma-separated numbers"),
        (["--repeats", "1.5"], "--repeats: got '1.5'; allowed: comma-separated integers"),
        (["--se-ratio", "2"], "--se-ratio: got 2.0; allowed: a number in [0, 1]"),
        (["--strides", "1,1,3,2,1,2,1"], "--strides[2]: got 3; allowed: 1 or 2"),
        (["--repeats", "inf"], "--repeats: got 'inf'; allowed: comma-separated integers"),
    ],
)
def test_new_knob_flags_refuse_bad_values_in_one_line(capsys, argv, needle):
    code, out, err = run(capsys, "cost", *argv)
    assert code == 2 and out == "" and needle in err and len(err.strip().splitlines()) == 1


def test_every_knob_is_a_flag(capsys):
    argv = [
        "cost",
        "--json",
        "--width",
        "0.75",
        "--resolution",
        "64",
        "--expansion",
        "4",
        "--depth",
        "0.5",
        "--depth-rounding",
        "round",
        "--fix-first-last",
        "--stem-stride",
        "1",
        "--strides",
        "1,2,2,2,1,2,1",
        "--kernels",
        "3,5,5,3,3,7,3",
        "--classes",
        "10",
        "--convention",
        "timm",
        "--head-rule",
        "scale",
        "--bottleneck-activation",
        "relu6",
        "--shortcut",
        "none",
        "--dropout",
        "0.1",
    ]
    code, out, _ = run(capsys, *argv)
    knobs = json.loads(out)["knobs"]
    assert code == 0
    assert knobs["expansion"] == 4 and knobs["kernels"] == [3, 5, 5, 3, 3, 7, 3] and knobs["fix_first_last"] is True
    assert knobs["convention"] == "timm" and knobs["shortcut"] == "none" and knobs["num_classes"] == 10


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["cost", "--width", "0"], "--width: got 0.0"),
        (["cost", "--resolution", "8"], "--resolution: got 8; allowed: >= 17 (total stride 32"),
        (["cost", "--strides", "1,2"], "--strides"),
        (["cost", "--expansion", "x"], "--expansion: got 'x'"),
        (["cost", "--convention", "keras"], "'keras' is not one of"),
        (["cost", "--widht", "1"], "'--width'?"),
        (["cost", "--table", "missing.yaml"], "missing.yaml: no such file"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_table_file_and_flags_override(capsys, tmp_path):
    space = ROOT / "search_spaces" / "mobilenet_v2.yaml"
    code, out, _ = run(capsys, "cost", "--json", "--table", str(space))
    assert code == 0 and json.loads(out)["madds"] == 300_774_272
    code, out, _ = run(capsys, "cost", "--json", "--table", str(space), "--width", "0.5")
    assert json.loads(out)["params"] == 1_968_680
    bad = tmp_path / "bad.yaml"
    bad.write_text("table:\n  rows:\n    - {t: 6, c: 16, n: 1, s: 3}\n")
    code, _, err = run(capsys, "cost", "--table", str(bad))
    assert code == 2 and f"{bad}: table.rows[0].s: got 3; allowed: 1 or 2" in err


def test_table_reproduces_published_grid_under_tf_slim(capsys):
    code, out, _ = run(capsys, "table", "--format", "csv")
    frame = pd.read_csv(io.StringIO(out))
    assert code == 0 and len(frame) == 22
    assert (frame["madds_m_diff"] == 0).all() and (frame["params_m_diff"] == 0).all()


def test_table_torchvision_params_match_torchvision(capsys):
    code, out, _ = run(capsys, "table", "--convention", "torchvision", "--format", "csv")
    frame = pd.read_csv(io.StringIO(out)).dropna(subset=["tv_params"])
    assert code == 0 and len(frame) == 21 and (frame["tv_params_diff"] == 0).all()


def test_arch_prints_table_2_rows(capsys):
    code, out, _ = run(capsys, "arch", "--format", "csv", "--memory")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("input,operator,t,c,n,s,k,madds,params")
    assert sum(line.split(",")[1] == "bottleneck" for line in lines) == 7


def test_console_script_exit_code():
    result = subprocess.run(
        [sys.executable, "-m", "mbv2_search", "cost", "--width", "9"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_train_divergence_is_reported_not_a_crash(capsys, tmp_path):
    code, _, err = run(
        capsys,
        "train",
        "--width",
        "0.35",
        "--resolution",
        "17",
        "--epochs",
        "1",
        "--set",
        "lr=1e30",
        "--set",
        "schedule=constant",
        "--run-dir",
        str(tmp_path),
    )
    assert code == 1 and "TrainingDiverged" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--classes", "5"], "--classes: got 5; allowed: 10, the class count of digits"),
        (["--set", "lr=-1"], "--set: lr: got -1; input should be greater than 0"),
        (["--set", "=0.1"], "--set: got '=0.1'; allowed: KEY=VALUE"),
        (["--val-fraction", "1"], "--val-fraction: got 1.0; allowed: a fraction strictly between 0 and 1"),
        (["--val-fraction", "nan"], "--val-fraction: got nan; allowed: a fraction strictly between 0 and 1"),
        (["--devices", "2", "--device", "cuda:0,cuda:0"], "--devices: got 2 with device 'cuda:0,cuda:0'"),
        (["--devices", "3", "--device", "cuda:0,1"], "--devices: got 3 with device 'cuda:0,1'"),
    ],
)
def test_train_refuses_bad_input_before_training(capsys, tmp_path, argv, needle):
    code, out, err = run(capsys, "train", "--epochs", "1", "--run-dir", str(tmp_path / "run"), *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
