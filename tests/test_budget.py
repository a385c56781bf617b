"""The study's budget: duplicates, exhausted spaces, bad data, damaged journals, determinism, moved studies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from mbv2_search import ledger
from mbv2_search.cli import main
from mbv2_search.export import export_trial
from mbv2_search.interrupts import Interrupted
from mbv2_search.sampler import trial_seed
from mbv2_search.search import load_context
from mbv2_search.storage import open_study
from mbv2_search.workers import work
from tests.test_search import SPACE, context, write_study

TWO_POINTS = {**SPACE, "knobs": {"num_classes": 10, "resolution": 8}, "vary": {"width": {"choices": [0.5, 1.0]}}}


def run_cli(capsys, *argv):
    """main() as a user runs it: (exit code, stdout, stderr)."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_duplicates_are_never_trained_nor_counted_and_an_exhausted_space_stops(tmp_path, capsys):
    path = write_study(tmp_path, space=TWO_POINTS, n_trials=5)
    ctx = load_context(path, reports_root=tmp_path / "reports")
    study = open_study(ctx)
    for _ in range(2):  # the same candidate proposed twice before anything ran
        study.enqueue_trial({"width": 0.5})
    code, out, err = run_cli(capsys, "run", path, "--reports", str(tmp_path / "reports"))
    assert code == 0 and "the space is exhausted: all 2 distinct candidates were evaluated (2 of n_trials 5)" in err
    trials = open_study(ctx).get_trials()
    duplicates = [t for t in trials if ledger.DUPLICATE in t.user_attrs]
    assert duplicates and all(t.state == TrialState.FAIL and "epochs" not in t.user_attrs for t in duplicates)
    assert trials[1].user_attrs[ledger.DUPLICATE] == 0  # the later of two proposals stands down
    assert ledger.budget(trials).done == 2 and ledger.counts(trials)["duplicate"] == len(duplicates)
    assert len(list((ctx.report_dir / "trials").iterdir())) == 2  # each candidate trained once
    assert f"{len(duplicates)} duplicates (not trained)" in out


def test_optuna_sees_the_front_that_status_prints(tmp_path, capsys):
    path = write_study(tmp_path, n_trials=4, constraints={"madds": "4e4"})
    ctx = load_context(path, reports_root=tmp_path / "reports")
    open_study(ctx).enqueue_trial({"width": 0.5, "resolution": 8, "expansion": 2})
    open_study(ctx).enqueue_trial({"width": 0.5, "resolution": 8, "expansion": 2})  # a duplicate
    run_cli(capsys, "run", path, "--reports", str(tmp_path / "reports"))
    from mbv2_search.report.analysis import pareto_mask, trials_frame

    mine = open_study(ctx)
    frame = trials_frame(mine.get_trials())
    ours = set(frame.loc[pareto_mask(frame, ["val_acc", "madds"]), "number"])
    # what optuna-dashboard and Optuna's CLI open: the plain journal backend, no sampler of ours
    theirs = optuna.load_study(
        study_name="tiny",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(ctx.report_dir / "study.journal"))
        ),
    )
    assert {t.number for t in theirs.best_trials} == ours and ours
    assert theirs.metric_names == ["val_acc", "madds"]
    journal = str(ctx.report_dir / "study.journal")
    cli = [
        str(Path(sys.executable).parent / "optuna"),
        "best-trials",
        "--storage",
        journal,
        "--storage-class",
        "JournalFileBackend",
    ]
    listed = subprocess.run([*cli, "--study-name", "tiny", "-f", "json"], capture_output=True, text=True, check=True)
    assert {t["number"] for t in json.loads(listed.stdout)} == ours


def test_per_trial_sampler_seeds_differ_and_a_study_replays_from_its_seed(tmp_path):
    assert trial_seed(0, 0) != trial_seed(0, 1) and trial_seed(0, 3) == trial_seed(0, 3) != trial_seed(1, 3)
    from mbv2_search.space import suggest_knobs

    runs = []
    for name in ("one", "two"):
        ctx = context(tmp_path, name=name, n_trials=4, sampler={"name": "tpe", "seed": 7})
        study = open_study(ctx)
        trials = [study.ask() for _ in range(4)]  # as four workers would, all at once
        runs.append([suggest_knobs(trial, ctx.arch_file) and trial.params for trial in trials])
    assert runs[0] == runs[1] and len({str(p) for p in runs[0]}) > 1


def test_a_candidate_being_chosen_by_an_earlier_trial_is_waited_for(tmp_path):
    study = open_study(context(tmp_path))
    width = {"width": optuna.distributions.CategoricalDistribution([0.5, 1.0])}
    first = study.ask(width)  # another worker, still choosing its knobs
    second = study.enqueue_trial(first.params) or study.ask(width)
    assert second.params == first.params
    threading.Timer(0.3, lambda: first.set_user_attr(ledger.CANDIDATE, "chosen")).start()
    start = time.monotonic()
    twin = ledger.earlier_twin(study, second.number, params=second.params, wait_seconds=10)
    assert twin is not None and twin.number == first.number and time.monotonic() - start >= 0.25
    assert ledger.earlier_twin(study, first.number, params=first.params, wait_seconds=10) is None  # never the later one


def test_a_dead_local_worker_is_recovered_at_once(tmp_path):
    ctx = context(tmp_path, n_trials=1, heartbeat_seconds=3600.0)  # its heartbeat alone would take hours
    study = open_study(ctx)
    dead = subprocess.Popen(["true"])
    dead.wait()
    ghost = study.ask({"width": optuna.distributions.CategoricalDistribution([0.5, 1.0])})
    ghost.set_user_attr(ledger.CANDIDATE, "chosen")  # it was training
    ghost.set_user_attr(ledger.WORKER, ledger.worker_id(dead.pid))
    ghost.set_user_attr("heartbeat", time.time())
    report = work(ctx)
    trials = open_study(ctx).get_trials()
    assert report.recovered == 1 and "is gone" in trials[0].user_attrs[ledger.EXCLUDED]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].state == TrialState.COMPLETE


@pytest.mark.parametrize(
    ("data", "make", "needle"),
    [
        ({"dataset": "cifar10", "dir": "/nonexistent"}, None, "/nonexistent: expected cifar-10-batches-py/"),
        ({"dataset": "imagefolder", "dir": "images"}, ["train/a", "val/a"], "train/a: no images"),
        ({"dataset": "imagefolder", "dir": "images"}, ["train/a"], "images/val: missing"),
    ],
)
def test_bad_data_fails_before_any_trial_or_storage(tmp_path, capsys, data, make, needle):
    for folder in make or []:
        (tmp_path / "images" / folder).mkdir(parents=True)
    path = write_study(tmp_path, data=data)
    code, _, err = run_cli(capsys, "run", path, "--reports", str(tmp_path / "reports"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"{path}: data: " in err and needle in err
    assert not (tmp_path / "reports").exists()


def test_every_image_of_a_small_folder_is_opened_before_a_run(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    for split in ("train", "val"):
        for label in ("a", "b"):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((12, 12, 3), 40 * i, dtype=np.uint8)).save(
                    tmp_path / "images" / split / label / f"{i}.png"
                )
    (tmp_path / "images" / "train" / "b" / "2.png").write_bytes(b"not an image at all")  # not the first of its class
    path = write_study(tmp_path, data={"dataset": "imagefolder", "dir": "images", "workers": 0})
    code, _, err = run_cli(capsys, "run", path, "--reports", str(tmp_path / "reports"))
    assert code == 2 and "images/train/b/2.png: not a readable image" in err and "replace or remove it" in err
    assert not (tmp_path / "reports").exists()


def test_a_trial_stopped_while_its_sampler_chose_is_not_queued_again(tmp_path):
    study = open_study(context(tmp_path, sampler={"name": "grid"}))
    choosing = study.ask()  # interrupted inside ask(): no knobs chosen yet
    ledger.requeue(study, choosing._trial_id, reason="interrupted by SIGINT; it runs again on resume")
    trials = study.get_trials()
    assert len(trials) == 1 and trials[0].state == TrialState.FAIL  # no empty retry the grid sampler would refuse
    baseline = study.enqueue_trial({"width": 1.0, "resolution": 12, "expansion": 4}) or study.ask()
    ledger.requeue(study, baseline._trial_id, reason="interrupted by SIGTERM; it runs again on resume")
    retry = study.get_trials()[-1]
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == baseline.number


def test_grid_baselines_outside_the_grid_add_to_the_space_size(tmp_path):
    from mbv2_search.search import space_size

    inside = context(tmp_path, sampler={"name": "grid"}, baselines=[{"width": 1.0, "resolution": 12, "expansion": 4}])
    assert space_size(inside) == 8
    grid = {"width": [0.5], "resolution": [8, 12], "expansion": [2]}
    outside = context(
        tmp_path,
        sampler={"name": "grid", "options": {"grid": grid}},
        baselines=[{"width": 1.0, "resolution": 12, "expansion": 4}],
    )
    assert space_size(outside) == 3


def test_an_interrupted_clean_up_is_finished_by_the_next_worker(tmp_path):
    ctx = context(tmp_path, n_trials=1)
    study = open_study(ctx)
    dead = subprocess.Popen(["true"])
    dead.wait()
    width = {"width": optuna.distributions.CategoricalDistribution([0.5, 1.0])}
    halfway = [study.ask(width) for _ in range(2)]  # killed by a second Ctrl-C while re-queueing
    for trial in halfway:
        trial.set_user_attr(ledger.CANDIDATE, "chosen")  # they were training
        trial.set_user_attr(ledger.WORKER, ledger.worker_id(dead.pid))
        trial.set_user_attr(ledger.EXCLUDED, "interrupted by SIGINT; it runs again on resume")
    study.enqueue_trial(halfway[1].params, user_attrs={"retry_of": halfway[1].number})  # its retry was queued
    assert sorted(ledger.recover_stale(study, grace_seconds=3600)) == [0, 1]
    trials = open_study(ctx).get_trials()
    assert [t.state for t in trials[:2]] == [TrialState.FAIL, TrialState.FAIL]
    retries = sorted(t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs)
    assert retries == [0, 1]  # one retry each, none twice


def test_a_dead_workers_trial_is_named_by_its_parent_when_a_sibling_requeued_it_first(tmp_path):
    study = open_study(context(tmp_path, n_trials=2))
    dead = subprocess.Popen(["true"])
    dead.wait()
    width = {"width": optuna.distributions.CategoricalDistribution([0.5, 1.0])}
    for pid in (dead.pid, os.getpid()):  # the dead worker's trial, and a live one's
        trial = study.ask(width)
        trial.set_user_attr(ledger.CANDIDATE, "chosen")
        trial.set_user_attr(ledger.WORKER, ledger.worker_id(pid))
    assert ledger.recover_stale(study, grace_seconds=3600) == [0]  # a sibling worker saw it first
    assert ledger.requeue_worker(study, dead.pid, reason="worker was killed by SIGKILL") == [0]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert ledger.requeue_worker(study, os.getpid() + 10**6, reason="never ran") == []


def test_data_dir_is_relative_to_the_study_file(tmp_path, monkeypatch):
    (tmp_path / "studies").mkdir()
    monkeypatch.chdir(tmp_path)  # the user stands elsewhere than the study file
    path = write_study(tmp_path, data={"dataset": "cifar10", "dir": "data"})
    shutil.copy(path, tmp_path / "studies" / "study.yaml")
    ctx = load_context(tmp_path / "studies" / "study.yaml")
    assert ctx.study.data.dir == str(tmp_path / "studies" / "data")


def test_a_data_failure_during_a_trial_is_not_counted_and_resumes(tmp_path, capsys, monkeypatch):
    from mbv2_search.errors import DataError

    path = write_study(tmp_path, n_trials=2)
    reports = str(tmp_path / "reports")

    def vanished(*args, **kwargs):
        raise DataError("/data/cifar: missing (the disk was unmounted)")

    with monkeypatch.context() as patch:
        patch.setattr("mbv2_search.data.load_dataset", vanished)
        code, _, err = run_cli(capsys, "run", path, "--reports", reports)
    assert (
        code == 1
        and err.strip().splitlines()[-1] == "mbv2-search: error: /data/cifar: missing (the disk was unmounted)"
    )
    trials = open_study(load_context(path, reports_root=reports)).get_trials()
    assert ledger.budget(trials).done == 0 and "DataError" in trials[0].user_attrs[ledger.EXCLUDED]
    code, _, _ = run_cli(capsys, "run", path, "--reports", reports)  # the cause fixed: the same command resumes
    trials = open_study(load_context(path, reports_root=reports)).get_trials()
    assert code == 0 and ledger.budget(trials).done == 2 and trials[1].user_attrs["retry_of"] == 0


@pytest.mark.parametrize("damage", [b"garbage\n", b"\xff\xfe\x00 not utf-8\n", b"[1, 2]\n"])
def test_a_damaged_journal_is_never_written_after(tmp_path, capsys, damage):
    path = write_study(tmp_path, n_trials=1)
    reports = str(tmp_path / "reports")
    run_cli(capsys, "run", path, "--reports", reports)
    journal = tmp_path / "reports" / "tiny" / "study.journal"
    lines = journal.read_bytes().count(b"\n")
    with open(journal, "ab") as f:
        f.write(damage)
    before = journal.read_bytes()
    for command in ("run", "status", "report", "export"):
        extra = ["--trial", "0"] if command == "export" else []
        code, _, err = run_cli(capsys, command, write_study(tmp_path, n_trials=2), "--reports", reports, *extra)
        assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert f"{journal}: line {lines + 1} is not a journal record" in err
    assert journal.read_bytes() == before


def test_the_memory_format_is_chosen_once_per_study_so_a_rerun_is_identical(tmp_path, monkeypatch):
    import mbv2_search.devices as devices_module
    import mbv2_search.train as train_module

    ctx = context(tmp_path, n_trials=1, training={"epochs": 2, "batch_size": 64, "device": "cpu"})
    first = {}

    def train_then_sigterm(*args, **kwargs):
        first["result"] = real_train(*args, **kwargs)
        raise Interrupted(signal.SIGTERM)  # the result is lost: the candidate runs again on resume

    real_train = train_module.train
    with monkeypatch.context() as patch:
        patch.setattr(devices_module, "_FORMAT_CACHE", {})
        patch.setattr(devices_module, "_probe_channels_last", lambda spec, batch: True)
        patch.setattr(train_module, "train", train_then_sigterm)
        with pytest.raises(Interrupted):
            work(ctx)
    # resumed on a machine whose probe now says the opposite (say, under load)
    monkeypatch.setattr(devices_module, "_FORMAT_CACHE", {})
    monkeypatch.setattr(devices_module, "_probe_channels_last", lambda spec, batch: False)
    work(ctx)
    rerun = open_study(ctx).get_trials()[1]
    assert rerun.user_attrs["retry_of"] == 0 and first["result"].memory_format == "channels_last"
    assert rerun.user_attrs["memory_format"] == "channels_last"
    assert rerun.user_attrs["val_acc_history"] == [h.get("val_acc") for h in first["result"].history]
    assert rerun.user_attrs["val_acc"] == first["result"].val_acc


def test_a_moved_study_still_exports_its_weights(tmp_path, capsys):
    path = write_study(tmp_path, n_trials=2, constraints={"madds": "2e4"})
    ctx = load_context(path, reports_root=tmp_path / "reports")
    open_study(ctx).enqueue_trial({"width": 0.5, "resolution": 8, "expansion": 2})  # the cheapest: feasible
    open_study(ctx).enqueue_trial({"width": 1.0, "resolution": 12, "expansion": 4})  # the largest: infeasible
    work(ctx)
    shutil.move(tmp_path / "reports", tmp_path / "elsewhere")
    moved = load_context(path, reports_root=tmp_path / "elsewhere")
    trials = open_study(moved).get_trials()
    trained = next(t for t in trials if t.user_attrs.get("trained"))
    assert not trained.user_attrs["checkpoint"].startswith("/")
    written = export_trial(moved, trained.number, out_dir=tmp_path / "out")
    assert torch.load(written["weights"], weights_only=True)
    assert trials[1].user_attrs["feasible"] is False
    code, _, err = run_cli(capsys, "export", path, "--reports", str(tmp_path / "elsewhere"), "--trial", "1")
    assert (
        code == 1 and "trial 1 has no weights: it was infeasible, never trained; its block table was written to" in err
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_timeout_stops_with_trials_left_and_exit_3(tmp_path, capsys, workers):
    path = write_study(tmp_path, n_trials=3, timeout_minutes=0.0001)
    code, _, err = run_cli(capsys, "run", path, "--reports", str(tmp_path / "reports"), "--workers", workers)
    assert code == 3 and "of 3 trials left (timeout_minutes reached); run the same command to resume" in err


def test_a_busy_worker_recovers_a_dead_workers_trial_while_it_trains(tmp_path, monkeypatch):
    ctx = context(tmp_path, n_trials=1, heartbeat_seconds=0.2)
    study = open_study(ctx)
    dead = subprocess.Popen(["true"])
    dead.wait()
    seen = {}

    def training_while_a_worker_dies(*args, **kwargs):
        ghost = study.ask({"width": optuna.distributions.CategoricalDistribution([0.5, 1.0])})
        ghost.set_user_attr(ledger.CANDIDATE, "chosen")
        ghost.set_user_attr(ledger.WORKER, ledger.worker_id(dead.pid))
        time.sleep(1.0)  # a few heartbeats of ours
        seen["ghost"] = study._storage.get_trial(ghost._trial_id).user_attrs.get(ledger.EXCLUDED, "")
        raise RuntimeError("stop here")  # not a candidate's failure: re-queued, and work() stops

    monkeypatch.setattr("mbv2_search.train.train", training_while_a_worker_dies)
    with pytest.raises(RuntimeError):
        work(ctx)
    assert "is gone" in seen["ghost"]


def test_a_trial_taken_over_as_stale_is_left_to_its_retry(tmp_path, monkeypatch):
    import mbv2_search.train as train_module

    ctx = context(tmp_path, n_trials=1)
    real_train, calls = train_module.train, []

    def looked_stale_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # meanwhile another worker decided our heartbeat was stale and re-queued us
            study = open_study(ctx)
            mine = study.get_trials()[0]
            ledger.requeue(study, mine._trial_id, reason="stale: its worker stopped sending heartbeats")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_module, "train", looked_stale_once)
    work(ctx)
    trials = open_study(ctx).get_trials()
    assert len(calls) == 2 and ledger.budget(trials).done == 1
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].state == TrialState.COMPLETE
