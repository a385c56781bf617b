"""strategy: one-shot end to end: supernet, inherited search, retrained front, reports, export, resume."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from mbv2_search.search import load_context
from mbv2_search.storage import open_study
from tests.test_cli import run

SPACE = {
    "table": {"stem": {"c": 16, "s": 2}, "rows": [{"t": 1, "c": 8, "n": 1, "s": 1}, {"t": 4, "c": 16, "n": 2, "s": 2}]},
    "knobs": {"num_classes": 10},
    "vary": {
        "width": {"choices": [0.5, 1.0]},
        "resolution": {"choices": [12, 16]},
        "expansion": {"choices": [2, 4]},
        "depth": {"choices": [0.5, 1.0]},
    },
}


def one_shot_study(folder: Path, **changes: object) -> Path:
    study = {
        "name": "oneshot",
        "space": SPACE,
        "data": {"dataset": "digits"},
        "training": {"epochs": 1, "batch_size": 64, "recipe": "fast"},
        "objectives": ["val_acc", "madds"],
        "sampler": {"name": "random", "seed": 0},
        "n_trials": 5,
        "strategy": "one-shot",
        "one_shot": {"epochs": 2, "random_members": 1, "calibration_batches": 2, "retrain": "scratch"},
        **changes,
    }
    path = folder / "oneshot.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, str, str]:
    """A one-shot study run once to the end in its own process: (study file, reports root, stdout, stderr)."""
    folder = tmp_path_factory.mktemp("oneshot")
    path = one_shot_study(folder)
    argv = [sys.executable, "-m", "mbv2_search", "run", str(path), "--reports", str(folder / "reports")]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"}, timeout=600)
    assert done.returncode == 0, done.stderr
    return path, folder / "reports", done.stdout, done.stderr


def stored(path: Path, reports: Path) -> optuna.Study:
    return open_study(load_context(path, reports_root=reports), create=False)


def test_a_one_shot_run_trains_the_supernet_searches_then_retrains_the_front(finished):
    path, reports, out, _ = finished
    assert "training the supernet" in out and "retraining front point 1 of" in out
    assert (reports / "oneshot" / "supernet" / "supernet.pt").is_file()
    assert not list((reports / "oneshot" / "supernet").rglob("*.ckpt"))  # no copy of it beside, nothing to resume
    study = stored(path, reports)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 5
    for trial in trials:
        attrs = trial.user_attrs
        assert attrs["inherited"] is True and attrs["trained"] is False
        assert attrs["inherited_val_acc"] == attrs["val_acc"] == trial.values[0]  # what Optuna and we both show
        assert attrs["calibration_images"] == 128 and 0 < attrs["val_acc_stderr"] < 0.1
    retrained = {int(k.split(":")[1]): v for k, v in study.user_attrs.items() if k.startswith("retrained:")}
    front = {t.number for t in study.best_trials}
    assert set(retrained) == front  # every point of Optuna's own front, and nothing else
    for result in retrained.values():
        assert result["from"] == "scratch" and result["epochs"] == 1 and 0 <= result["val_acc"] <= 1
        assert (reports / "oneshot" / result["checkpoint"]).is_file()
    assert study.user_attrs["supernet"]["epochs"] == 2
    assert "inherited val_acc ± se" in out and "retrained val_acc ± se" in out
    assert "supernet: 2 epochs in" in out


def test_a_second_run_reuses_the_supernet_and_the_retrained_points(finished, capsys):
    path, reports, _, _ = finished
    weights = reports / "oneshot" / "supernet" / "supernet.pt"
    before = weights.stat().st_mtime_ns
    code, out, _ = run(capsys, "run", str(path), "--reports", str(reports))
    assert code == 0
    assert "training the supernet" not in out and "retraining" not in out
    assert weights.stat().st_mtime_ns == before


def test_export_gives_retrained_or_inherited_weights_that_eval_reproduces(finished, capsys, tmp_path):
    path, reports, _, _ = finished
    study = stored(path, reports)
    front = {t.number for t in study.best_trials}
    off_front = next(t for t in study.trials if t.number not in front)
    on_front = min(front)
    for number, source in ((on_front, "retrained"), (off_front.number, "inherited")):
        code, out, _ = run(
            capsys, "export", str(path), "--reports", str(reports), "--trial", str(number), "--out", str(tmp_path)
        )
        assert code == 0 and f"weights_from: {source}" in out
    table, weights = tmp_path / f"trial-{off_front.number:05d}.yaml", tmp_path / f"trial-{off_front.number:05d}.pt"
    code, out, _ = run(
        capsys,
        "eval",
        "--table",
        str(table),
        "--weights",
        str(weights),
        "--dataset",
        "digits",
        "--split",
        "val",
        "--json",
    )
    assert code == 0
    assert json.loads(out)["accuracy"] == pytest.approx(off_front.user_attrs["inherited_val_acc"], abs=1e-12)


def test_the_report_puts_inherited_and_retrained_side_by_side(finished, capsys):
    path, reports, _, _ = finished
    code, _, _ = run(capsys, "report", str(path), "--reports", str(reports))
    assert code == 0
    summary = (reports / "oneshot" / "summary.md").read_text()
    assert "inherited val_acc ± se" in summary and "retrained val_acc ± se" in summary
    assert "one-shot: the search's val_acc is inherited from the supernet" in summary


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        (
            {"space": {**SPACE, "vary": {"stem_stride": {"choices": [1, 2]}}}},
            "space.vary.stem_stride: cannot be elastic",
        ),
        ({"pruning": {"enabled": True}}, "pruning.enabled: got true; allowed with strategy one-shot: false"),
        ({"one_shot": {"retrain": "twice"}}, "one_shot.retrain"),
    ],
)
def test_bad_one_shot_studies_exit_2_in_one_line(tmp_path, capsys, changes, needle):
    code, _, err = run(capsys, "run", str(one_shot_study(tmp_path, **changes)), "--reports", str(tmp_path / "r"))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "oneshot" / "supernet").exists()


def test_a_worker_without_a_trained_supernet_says_how_to_get_one(tmp_path, capsys):
    path = one_shot_study(tmp_path)
    code, _, err = run(capsys, "worker", str(path), "--reports", str(tmp_path / "r"))
    assert code == 1 and "no trained supernet" in err and "mbv2-search run" in err
    assert len(err.strip().splitlines()) == 1


def test_changing_only_how_the_front_is_retrained_retrains_it_that_way(finished, capsys, tmp_path):
    path, reports, _, _ = finished
    study = yaml.safe_load(path.read_text())
    study["one_shot"] = {**study["one_shot"], "retrain": "finetune"}  # no trial changes: the same study
    other = tmp_path / "oneshot.yaml"
    other.write_text(yaml.safe_dump(study))
    code, out, err = run(capsys, "run", str(other), "--reports", str(reports))
    assert code == 0, err
    assert "(finetune)" in out
    retrained = [v for k, v in stored(path, reports).user_attrs.items() if k.startswith("retrained:")]
    assert retrained and all(v["from"] == "finetune" for v in retrained)


def test_a_supernet_trained_for_another_version_of_the_study_is_refused(finished, capsys, tmp_path):
    path, reports, _, _ = finished
    study = yaml.safe_load(path.read_text())
    study["one_shot"] = {**study["one_shot"], "epochs": 3}
    other = tmp_path / "oneshot.yaml"
    other.write_text(yaml.safe_dump(study))
    storage = f"journal:{tmp_path / 'other.journal'}"  # a new storage, the same report folder
    code, _, err = run(capsys, "run", str(other), "--reports", str(reports), "--storage", storage)
    assert code == 2 and "was trained for another version of study 'oneshot'" in err
    assert len(err.strip().splitlines()) == 1


def test_one_process_at_a_time_and_a_dead_holder_is_taken_over(tmp_path):
    from mbv2_search.locks import exclusive

    lock = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import os, time; open({str(lock)!r}, 'w').write(str(os.getpid())); time.sleep(1.5)"]
    )
    while not lock.exists():
        pass
    said = []
    with exclusive(lock, waiting="waiting for {owner}", say=said.append, poll_seconds=0.1):
        assert holder.poll() is not None  # entered only once the holder was gone (its lock left behind)
        assert lock.read_text() == str(os.getpid())
    assert said == [f"waiting for {holder.pid}"] and not lock.exists()


def supernet_digest(path: Path) -> str:
    import hashlib

    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return hashlib.sha1(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()


@pytest.mark.usefixtures("terminal_sigint")
def test_an_interrupted_supernet_resumes_after_its_last_epoch_and_trains_the_same_weights(tmp_path, capsys):
    import signal

    from tests.test_crash import wait_for

    settings = {"epochs": 6, "random_members": 1, "calibration_batches": 2, "retrain": "none"}
    path = one_shot_study(tmp_path, one_shot=settings, n_trials=2)
    reports = tmp_path / "reports"
    argv = [sys.executable, "-m", "mbv2_search", "run", str(path), "--reports", str(reports)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    checkpoint = reports / "oneshot" / "supernet" / "training" / "last.ckpt"
    assert wait_for(checkpoint.is_file), process.communicate()
    process.send_signal(signal.SIGINT)  # after the first epoch, five before the end
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "the supernet's training is kept up to epoch " in err

    changed = one_shot_study(tmp_path)  # another version, in a new storage but the same report folder: refused
    other = f"journal:{tmp_path / 'other.journal'}"
    code, _, err = run(capsys, "run", str(changed), "--reports", str(reports), "--storage", other)
    assert code == 2 and f"{checkpoint} was trained for another version" in err

    path = one_shot_study(tmp_path, one_shot=settings, n_trials=2)
    code, out, _ = run(capsys, "status", str(path), "--reports", str(reports))
    said = " ".join(out.split())  # as the terminal's width wrapped it
    assert code == 0 and re.search(
        r"supernet: \d of 6 epochs trained \(\S+last\.ckpt\); `run` goes on from there", said
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)  # as the first: the same threads
    assert done.returncode == 0, done.stderr
    assert "resuming the supernet's training after epoch" in done.stdout and not checkpoint.exists()
    history = stored(path, reports).user_attrs["supernet"]["history"]
    assert len(history) == 6 and all(0 < h <= 1 for h in history)  # the epochs before the interruption too
    with (checkpoint.parent / "metrics.csv").open() as file:  # Lightning's log, the earlier epochs put back
        assert sorted({int(row["epoch"]) for row in csv.DictReader(file) if row["val_acc"]}) == list(range(6))

    alone = tmp_path / "alone"
    argv = [*argv[:-1], str(alone), "--storage", f"journal:{alone}.journal"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    resumed, uninterrupted = (r / "oneshot" / "supernet" / "supernet.pt" for r in (reports, alone))
    assert supernet_digest(resumed) == supernet_digest(uninterrupted)


@pytest.mark.parametrize("damage", [b"", b"garbage\n"])
@pytest.mark.parametrize(
    ("file", "what"), [("training/last.ckpt", "a training checkpoint"), ("supernet.pt", "a trained supernet")]
)
def test_a_damaged_supernet_checkpoint_is_named_with_what_to_do(tmp_path, capsys, damage, file, what):
    path = one_shot_study(tmp_path)
    checkpoint = tmp_path / "reports" / "oneshot" / "supernet" / file
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(damage)  # a full disk, a failed copy
    code, _, err = run(capsys, "run", str(path), "--reports", str(tmp_path / "reports"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{checkpoint}: cannot be read as {what}" in err and "delete it" in err


def test_a_waiting_worker_waits_for_the_run_that_takes_over_an_interrupted_training(finished, tmp_path):
    from mbv2_search.oneshot import load_supernet, supernet_path

    path, reports, _, _ = finished
    ctx = load_context(path, reports_root=tmp_path / "reports")
    trained = supernet_path(load_context(path, reports_root=reports))
    lock = supernet_path(ctx).with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    hold = (
        "import os, shutil, sys, time; time.sleep({wait}); open({lock!r}, 'w').write(str(os.getpid())); time.sleep(1); "
    )
    interrupted = hold.format(wait=0, lock=str(lock)) + f"os.remove({str(lock)!r})"
    taking_over = hold.format(wait=3.5, lock=str(lock))  # it polls for the lock: it takes it after this one looked
    taking_over += f"shutil.copy({str(trained)!r}, {str(supernet_path(ctx))!r}); os.remove({str(lock)!r})"
    runs = [subprocess.Popen([sys.executable, "-c", code]) for code in (interrupted, taking_over)]
    while not lock.exists():
        pass
    assert load_supernet(ctx, torch.device("cpu")) is not None  # not "no trained supernet" when the first stops
    assert [r.wait() for r in runs] == [0, 0]
