from __future__ import annotations

import json
import os
import signal
import threading
import time

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from mbv2_search import ledger
from mbv2_search.arch import build_spec, table_rows
from mbv2_search.cli import main
from mbv2_search.config import load_arch_file
from mbv2_search.export import export_trial
from mbv2_search.interrupts import Interrupted
from mbv2_search.knobs import Knobs
from mbv2_search.ledger import EXCLUDED, counts
from mbv2_search.model import build_model
from mbv2_search.search import load_context
from mbv2_search.storage import StudyMismatch, open_study
from mbv2_search.supervisor import start_workers
from mbv2_search.workers import work

SPACE = {
    "table": {
        "stem": {"c": 16, "s": 2},
        "rows": [
            {"t": 1, "c": 8, "n": 1, "s": 1},
            {"t": 4, "c": 16, "n": 2, "s": 2},
            {"t": 4, "c": 24, "n": 1, "s": 2},
        ],
        "head": {"c": 64},
    },
    "knobs": {"num_classes": 10},
    "vary": {"width": {"choices": [0.5, 1.0]}, "resolution": {"choices": [8, 12]}, "expansion": {"choices": [2, 4]}},
}


def write_study(tmp_path, **changes) -> str:
    study = {
        "name": "tiny",
        "space": SPACE,
        "data": {"dataset": "digits"},
        "training": {"epochs": 1, "batch_size": 256, "device": "cpu"},
        "objectives": ["val_acc", "madds"],
        "sampler": {"name": "random", "seed": 0},
        "n_trials": 3,
        "heartbeat_seconds": 0.5,
    }
    study.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return str(path)


def context(tmp_path, **changes):
    return load_context(write_study(tmp_path, **changes), reports_root=tmp_path / "reports")


def finished(ctx):
    return counts(open_study(ctx).get_trials(deepcopy=False))


def test_study_runs_to_n_trials_and_records_everything(tmp_path):
    ctx = context(tmp_path)
    report = work(ctx)
    assert report.ran == 3
    trials = open_study(ctx).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    attrs = trials[0].user_attrs
    for key in (
        "knobs",
        "block_table",
        "val_acc_stderr",
        "split_sizes",
        "madds",
        "params",
        "peak_activation_bytes",
        "val_acc",
        "test_acc",
        "epochs",
        "train_seconds",
        "train_images_per_second",
        "device",
        "seed",
        "version",
    ):
        assert key in attrs, key
    sizes, accuracy = attrs["split_sizes"], attrs["val_acc"]
    assert sizes == {"train": 1257, "val": 270, "test": 270}  # digits: a fixed, disjoint 70/15/15 split
    assert attrs["val_acc_stderr"] == pytest.approx((accuracy * (1 - accuracy) / sizes["val"]) ** 0.5)
    spec = build_spec(
        Knobs(**{k: tuple(v) if isinstance(v, list) else v for k, v in attrs["knobs"].items()}),
        ctx.arch_file.to_table(),
    )
    assert attrs["block_table"] == table_rows(spec) and sum(row["n"] for row in attrs["block_table"]) == len(
        spec.blocks
    )
    assert (ctx.report_dir / "trials" / "00000" / "best.ckpt").is_file()


def test_resume_continues_without_redoing(tmp_path):
    ctx = context(tmp_path)
    stop = threading.Event()
    work(ctx, stop=stop, on_event=lambda kind, trial: stop.set() if kind == "end" else None)
    first = open_study(ctx).get_trials()
    assert len(first) == 1
    work(ctx)
    trials = open_study(ctx).get_trials()
    assert finished(ctx)["complete"] == 3
    assert trials[0].datetime_complete == first[0].datetime_complete  # not retrained


def test_two_local_workers_reach_exactly_n_trials(tmp_path):
    ctx = context(tmp_path, n_trials=4)
    for process in start_workers(ctx, 2, reports_root=tmp_path / "reports"):
        process.join(timeout=300)
        assert process.exitcode == 0
    state = finished(ctx)
    assert state["complete"] == 4 and state["failed"] == 0


def test_constraint_rejects_without_training(tmp_path):
    ctx = context(tmp_path, n_trials=4, constraints={"madds": "2e4"})  # 2 of the space's 8 points fit
    work(ctx)
    trials = open_study(ctx).get_trials()
    infeasible = [t for t in trials if t.user_attrs["madds"] > 2e4]
    assert infeasible and finished(ctx)["infeasible"] == len(infeasible)
    for t in trials:
        feasible = t.user_attrs["madds"] <= 2e4
        assert t.user_attrs["feasible"] is feasible and t.user_attrs["trained"] is feasible
        assert (t.constraints["madds"] <= 0) is feasible
        assert (ctx.report_dir / "trials" / f"{t.number:05d}").exists() is feasible  # never built or trained


def test_failed_trials_are_recorded_and_the_study_goes_on(tmp_path):
    ctx = context(
        tmp_path,
        training={"epochs": 1, "batch_size": 256, "device": "cpu", "overrides": {"lr": 1e30, "schedule": "constant"}},
    )
    report = work(ctx)
    trials = open_study(ctx).get_trials()
    assert report.failed == 3 and all(t.state == TrialState.FAIL for t in trials)
    assert all("TrainingDiverged" in t.user_attrs["fail_reason"] for t in trials)


def test_stale_running_trial_is_rerun(tmp_path):
    ctx = context(tmp_path, n_trials=2)
    study = open_study(ctx)
    ghost = study.ask({"width": optuna.distributions.CategoricalDistribution([0.5, 1.0])})  # a worker that died
    ghost.set_user_attr(ledger.CANDIDATE, "chosen")  # it was training
    ghost.set_user_attr("heartbeat", time.time() - 3600)
    report = work(ctx)
    trials = open_study(ctx).get_trials()
    assert report.recovered == 1
    assert EXCLUDED in trials[0].user_attrs and trials[0].state == TrialState.FAIL
    assert trials[1].user_attrs.get("retry_of") == 0 and trials[1].params["width"] == ghost.params["width"]
    assert finished(ctx)["complete"] == 2


def test_changed_space_is_refused(tmp_path):
    work(context(tmp_path, n_trials=1))
    changed = context(tmp_path, n_trials=1, training={"epochs": 2, "batch_size": 256, "device": "cpu"})
    with pytest.raises(StudyMismatch, match="rename the study"):
        open_study(changed)


def test_baselines_run_first(tmp_path):
    ctx = context(tmp_path, n_trials=1, baselines=[{"width": 1.0, "resolution": 12, "expansion": 4}])
    work(ctx)
    trial = open_study(ctx).get_trials()[0]
    assert trial.params == {"width": 1.0, "resolution": 12, "expansion": 4} and trial.user_attrs["baseline"]


def test_export_round_trips(tmp_path, capsys):
    ctx = context(tmp_path, n_trials=1)
    work(ctx)
    written = export_trial(ctx, 0, out_dir=tmp_path / "out")
    arch_file = load_arch_file(written["table"])
    trial = open_study(ctx).get_trials()[0]
    from mbv2_search.arch import build_spec
    from mbv2_search.cost import costs

    spec = build_spec(arch_file.knobs.to_knobs(), arch_file.to_table())
    assert costs(spec).madds == trial.user_attrs["madds"] == written["fvcore_madds"]
    model = build_model(spec)
    model.load_state_dict(torch.load(written["weights"], weights_only=True))
    main(["cost", "--json", "--table", written["table"]])  # what a user does with the exported table
    assert f'"madds": {trial.user_attrs["madds"]}' in capsys.readouterr().out


def test_per_row_knobs_and_squeeze_excite_search_train_and_export(tmp_path):
    """row_widths, repeats and strides vary per row and se_ratio per study, end to end: the stored costs are the
    exported model's and the weights load into it."""
    space = {
        **SPACE,
        "knobs": {"num_classes": 10, "resolution": 12},
        "vary": {
            "row_widths": {"choices": [0.5, 1.5], "per_row": True},
            "repeats": {"low": 1, "high": 2, "per_row": True},
            "strides": {"choices": [1, 2], "per_row": True},
            "se_ratio": {"choices": [0.0, 0.25]},
        },
    }
    ctx = load_context(write_study(tmp_path, space=space, n_trials=2), reports_root=tmp_path / "reports")
    work(ctx)
    for trial in open_study(ctx).get_trials():
        assert trial.state.name == "COMPLETE" and "strides_2" in trial.params and "se_ratio" in trial.params
        written = export_trial(ctx, trial.number, out_dir=tmp_path / f"out{trial.number}")
        arch_file = load_arch_file(written["table"])
        spec = build_spec(arch_file.knobs.to_knobs(), arch_file.to_table())
        assert [row["n"] for row in table_rows(spec)] == [trial.params[f"repeats_{i}"] for i in range(3)]
        assert written["fvcore_madds"] == trial.user_attrs["madds"]  # fvcore counts the exported network
        build_model(spec).load_state_dict(torch.load(written["weights"], weights_only=True))


def test_eval_of_an_exported_trial_reproduces_its_stored_validation_accuracy(tmp_path, capsys):
    ctx = context(tmp_path, n_trials=1)
    work(ctx)
    trial = open_study(ctx).get_trials()[0]
    written = export_trial(ctx, 0, out_dir=tmp_path / "out")
    main(["eval", "--table", written["table"], "--weights", written["weights"], "--split", "val", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert payload["correct"] == round(trial.user_attrs["val_acc"] * payload["images"])
    assert payload["madds"] == trial.user_attrs["madds"] and payload["weights_layout"] == "torchvision's layout"


@pytest.mark.parametrize("convention", ["tonylins", "shicai", "neuleaf"])
def test_exports_under_the_reference_conventions_load_back(tmp_path, capsys, convention):
    space = {**SPACE, "knobs": {"num_classes": 10, "convention": convention}}
    ctx = load_context(write_study(tmp_path, space=space, n_trials=1), reports_root=tmp_path / "reports")
    work(ctx)
    trial = open_study(ctx).get_trials()[0]
    written = export_trial(ctx, 0, out_dir=tmp_path / "out")
    main(["eval", "--table", written["table"], "--weights", written["weights"], "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert payload["correct"] == round(trial.user_attrs["val_acc"] * payload["images"])
    assert payload["madds"] == trial.user_attrs["madds"] == written["fvcore_madds"]


BAD_STUDIES = [
    ({"n_trials": -1}, "n_trials: got -1"),
    ({"training": {"overrides": {"lr": -1}}}, "training.overrides.lr: got -1; input should be greater than 0"),
    ({"training": {"overrides": {"label_smoothing": 1.5}}}, "training.overrides.label_smoothing: got 1.5"),
    ({"training": {"overrides": {"reference_batch": 0}}}, "training.overrides.reference_batch: got 0"),
    ({"training": {"overrides": {"lr": float("nan")}}}, "training.overrides.lr: got nan"),
    ({"training": {"devices_per_trial": 0}}, "training.devices_per_trial: got 0"),
    (
        {"training": {"cuda_graphs": "on", "devices_per_trial": 2}},
        "training.devices_per_trial: got 2; with cuda_graphs 'on' allowed: 1",
    ),
    (
        {
            "sampler": {"name": "grid"},
            "space": {
                **SPACE,
                "vary": {
                    "repeats": {"low": 1, "high": 32, "per_row": True},
                    "width": {"low": 0.1, "high": 4, "step": 0.1},
                },
            },
        },
        "sampler.name: got 'grid' for a space of 1,310,720 points; allowed: at most 1,000,000",
    ),
    ({"objectives": ["val_acc", "flops"]}, "objectives[1]: got 'flops'"),
    ({"constraints": {"macs": 1}}, "constraints.macs: unknown key 'macs'; did you mean 'madds'?"),
    ({"sampler": {"name": "cmaes"}}, "sampler.name: got 'cmaes'"),
    ({"trainig": {}}, "trainig: unknown key 'trainig'; did you mean 'training'?"),
    ({"space": "missing.yaml"}, "space: got 'missing.yaml'; no such file"),
    ({"baselines": [{"width": 3.0}]}, "baselines[0].width: got 3.0"),
    (
        {"data": {"dataset": "digits", "val_fraction": 0}},
        "data.val_fraction: got 0; allowed: a fraction strictly between 0 and 1",
    ),
    (
        {"space": {**SPACE, "vary": {"widht": {"choices": [1.0]}}}},
        "space.vary.widht: unknown key 'widht'; did you mean 'width'?",
    ),
]


@pytest.mark.parametrize(("changes", "needle"), BAD_STUDIES)
def test_bad_study_files_exit_2_naming_file_and_key(tmp_path, capsys, changes, needle):
    path = write_study(tmp_path, **changes)
    with pytest.raises(SystemExit) as exit_:
        main(["run", path, "--reports", str(tmp_path / "reports")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert path in err and needle in err
    assert not (tmp_path / "reports").exists()  # nothing stored


def test_ctrl_c_in_training_requeues_the_trial(tmp_path, monkeypatch, terminal_sigint):
    ctx = context(tmp_path, n_trials=2)

    def interrupted_training(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, arriving in the middle of training
        time.sleep(5)

    with monkeypatch.context() as patch:
        patch.setattr("mbv2_search.train.train", interrupted_training)
        with pytest.raises(Interrupted) as interrupted:
            work(ctx)
    assert interrupted.value.exit_code == 130
    first = open_study(ctx).get_trials()
    assert first[0].state == TrialState.FAIL and "interrupted by SIGINT" in first[0].user_attrs[EXCLUDED]
    work(ctx)
    trials = open_study(ctx).get_trials()
    assert finished(ctx)["complete"] == 2 and trials[1].params == first[0].params  # rerun first


def test_a_study_validates_on_its_val_fraction(tmp_path):
    ctx = context(tmp_path, n_trials=1, data={"dataset": "digits", "val_fraction": 0.3})
    work(ctx)
    attrs = open_study(ctx).get_trials()[0].user_attrs
    assert attrs["split_sizes"] == {"train": 1069, "val": 458, "test": 270}  # 0.3 of the images outside test


def test_status_prints_counts_and_front(tmp_path, capsys):
    path = write_study(tmp_path, n_trials=2)
    main(["run", path, "--reports", str(tmp_path / "reports")])
    main(["status", path, "--reports", str(tmp_path / "reports")])
    out = capsys.readouterr().out
    assert "2 complete (0 infeasible" in out and "Pareto front (val_acc, madds)" in out
    assert " ± 0.0" in out  # every trained accuracy says how noisy it is (binomial standard error)
    assert "≈ neighbour" in out and "front points not distinguishable from a neighbour" in out


def test_export_onnx_matches_pytorch(tmp_path):
    import numpy as np
    import onnxruntime

    ctx = context(tmp_path, n_trials=1)
    work(ctx)
    written = export_trial(ctx, 0, out_dir=tmp_path / "out", onnx=True)
    arch_file = load_arch_file(written["table"])
    from mbv2_search.arch import build_spec

    spec = build_spec(arch_file.knobs.to_knobs(), arch_file.to_table())
    model = build_model(spec).eval()
    model.load_state_dict(torch.load(written["weights"], weights_only=True))
    images = torch.randn(4, 3, spec.resolution, spec.resolution)
    with torch.no_grad():
        expected = model(images).numpy()
    session = onnxruntime.InferenceSession(written["onnx"], providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": images.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4


def test_multi_objective_early_stopping_stops_dominated_trials(tmp_path):
    from mbv2_search.pruning import dominators, rung_key

    pruning = {"enabled": True, "min_epochs": 1, "reduction_factor": 2, "min_peers": 2, "min_dominators": 1}
    ctx = context(
        tmp_path,
        n_trials=8,
        pruning=pruning,
        training={"epochs": 3, "batch_size": 256, "device": "cpu"},
        sampler={"name": "grid"},
    )
    report = work(ctx)
    trials = open_study(ctx).get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert report.pruned == len(pruned) > 0 and finished(ctx)["pruned"] == len(pruned)
    for t in pruned:  # stopped at a rung, for a stated reason that holds in the stored values
        epoch = int(t.user_attrs["prune_reason"].split("epoch ")[1].split(" ")[0])
        assert t.user_attrs["epochs"] == epoch < 3
        study = open_study(ctx)
        accuracy, costs = t.user_attrs[rung_key(epoch)], {"madds": t.user_attrs["madds"]}
        assert dominators(study, trial_number=t.number, epoch=epoch, accuracy=accuracy, costs=costs)
    assert all(rung_key(1) in t.user_attrs for t in trials)


def test_pruning_rungs():
    from mbv2_search.study import PruningModel

    assert PruningModel(min_epochs=1, reduction_factor=3).rungs(10) == [1, 3, 9]
    assert PruningModel(min_epochs=3, reduction_factor=3).rungs(10) == [3, 9]
    assert PruningModel(min_epochs=3).rungs(3) == []
    assert PruningModel().rungs(10) == [1, 3, 9]  # the defaults bench_pruning.py measured


def test_status_of_a_study_never_run_is_one_line_and_creates_nothing(tmp_path, capsys):
    path = write_study(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["status", path, "--reports", str(tmp_path / "reports")])
    assert exit_.value.code == 2 and "no study 'tiny'" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()
