"""One-shot studies when things go wrong: locks left behind, a failing retrain, a lost study record, a copied
study without its retrained weights, duplicates, and calibration images of an image folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import optuna
import pytest
import torch

from mbv2_search import ledger
from mbv2_search.locks import Held, exclusive
from mbv2_search.oneshot import ensure_supernet, retrain_front
from mbv2_search.search import load_context
from mbv2_search.storage import open_study
from tests.test_cli import run
from tests.test_oneshot import finished, one_shot_study, stored  # noqa: F401 (a module fixture)


@pytest.fixture
def copied(finished, tmp_path):  # noqa: F811
    """A copy of the finished one-shot study (file and report folder), to change freely."""
    path, reports, _, _ = finished
    shutil.copytree(reports, tmp_path / "reports")
    shutil.copy(path, tmp_path / path.name)
    return tmp_path / path.name, tmp_path / "reports"


def test_a_lock_naming_this_process_or_nothing_for_long_is_taken_over(tmp_path):
    mine = tmp_path / "mine.lock"
    mine.write_text(str(os.getpid()))  # left by a dead process with our pid (pid 1 in a container)
    empty = tmp_path / "empty.lock"
    empty.write_text("")  # its holder died between creating it and writing its pid
    old = time.time() - 60
    os.utime(empty, (old, old))
    for lock in (mine, empty):
        with exclusive(lock, poll_seconds=0.1):
            assert lock.read_text() == str(os.getpid())


def test_a_lock_held_by_a_live_process_is_refused_without_waiting(tmp_path):
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock.write_text(str(holder.pid))
        with pytest.raises(Held), exclusive(lock, wait=False):
            pass
        assert lock.read_text() == str(holder.pid)  # left to its holder
    finally:
        holder.kill()
        holder.wait()


def test_a_retrained_point_that_fails_is_recorded_and_the_others_go_on(copied, monkeypatch):
    import mbv2_search.oneshot as oneshot
    from mbv2_search.train import TrainingDiverged

    path, reports = copied
    path.write_text(path.read_text().replace("retrain: scratch", "retrain: scratch\n  retrain_epochs: 2"))
    ctx = load_context(path, reports_root=reports)
    study = open_study(ctx, create=False)
    first = oneshot.front_trials(ctx, study)[0]
    real = oneshot._retrain

    def diverging(ctx, spec, device, **kwargs):
        if kwargs["folder"].name == f"{first.number:05d}":
            raise TrainingDiverged("loss became nan at epoch 1")
        return real(ctx, spec, device, **kwargs)

    monkeypatch.setattr(oneshot, "_retrain", diverging)
    said = []
    assert retrain_front(ctx, study, torch.device("cpu"), say=said.append) == len(oneshot.front_trials(ctx, study))
    records = {
        n: study.user_attrs[f"{ledger.RETRAINED}{n}"] for n in (t.number for t in oneshot.front_trials(ctx, study))
    }
    assert records[first.number]["failed"] == "TrainingDiverged: loss became nan at epoch 1"
    assert all(r["budget"] == 2 and ("val_acc" in r) == (n != first.number) for n, r in records.items())
    assert retrain_front(ctx, study, torch.device("cpu"), say=said.append) == 0  # a failure is not retried


def test_the_supernets_record_is_restored_from_its_file(copied):
    path, reports = copied
    ctx = load_context(path, reports_root=reports)
    trained = open_study(ctx, create=False).user_attrs["supernet"]
    fresh = optuna.create_study()  # as a study whose run stopped between writing the file and the record
    assert ensure_supernet(ctx, fresh, torch.device("cpu"), say=lambda _: None) is False
    assert fresh.user_attrs["supernet"] == trained


def test_a_retrained_point_without_its_checkpoint_is_not_exported_as_inherited(copied, capsys):
    path, reports = copied
    study = stored(path, reports)
    number = min(t.number for t in study.best_trials)
    shutil.rmtree(reports / "oneshot" / "retrained")  # a study folder copied without it
    code, _, err = run(capsys, "export", str(path), "--reports", str(reports), "--trial", str(number))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "retrained checkpoint is missing" in err and f"retrained/{number:05d}" in err


def test_a_duplicate_exports_its_originals_weights(copied, capsys, tmp_path):
    path, reports = copied
    study = stored(path, reports)
    original = next(t for t in study.trials if t.number not in {b.number for b in study.best_trials})
    duplicate = optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL,
        params=original.params,
        distributions=original.distributions,
        user_attrs={ledger.DUPLICATE: original.number},
    )
    study.add_trial(duplicate)
    number = len(study.trials) - 1
    for trial in (original.number, number):
        out = tmp_path / str(trial)
        code, said, _ = run(
            capsys, "export", str(path), "--reports", str(reports), "--trial", str(trial), "--out", str(out)
        )
        assert code == 0 and "weights_from: inherited" in said
    theirs, ours = (torch.load(tmp_path / str(n) / f"trial-{n:05d}.pt") for n in (original.number, number))
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)


def test_calibration_images_of_an_image_folder_come_from_every_class(tmp_path):
    from mbv2_search.data import load_dataset
    from mbv2_search.supernet import calibration_batches
    from tests.test_export import write_folder

    folder = write_folder(tmp_path / "images")  # train/ in class order: 10 cats, then 10 dogs
    data = load_dataset("imagefolder", 16, device=torch.device("cpu"), data_dir=folder, workers=0)
    first = [labels.tolist() for _, labels in calibration_batches(data, 4, 2)]
    again = [labels.tolist() for _, labels in calibration_batches(data, 4, 2)]
    assert first == again  # the same images for every candidate
    assert len({label for batch in first for label in batch}) == 2
    assert [labels.tolist() for _, labels in list(data.loader("train", 4))[:2]] == [[0] * 4, [0] * 4]  # unshuffled


def test_the_agreement_of_inherited_and_retrained_accuracy_is_a_rank_correlation():
    import pandas as pd

    from mbv2_search.report.build import one_shot_agreement

    front = pd.DataFrame({"val_acc": [0.7, 0.8, 0.9, 0.95], "retrained_val_acc": [0.9, 0.95, 0.97, None]})
    assert one_shot_agreement(front) == (pytest.approx(1.0), 3)  # a point not retrained yet is left out
    front["retrained_val_acc"] = [0.97, 0.95, 0.9, 0.8]
    assert one_shot_agreement(front) == (pytest.approx(-1.0), 4)
    assert one_shot_agreement(front.iloc[:2]) is None  # too few to rank
