"""The incremental trial index gives exactly what full scans gave, and reads only what changed."""

from __future__ import annotations

import random
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from mbv2_search import ledger, trial_index
from mbv2_search import optuna_private as private
from mbv2_search.report.analysis import pareto_mask, trials_frame
from mbv2_search.search import snapshot
from tests.test_storage_writes import SPACE, storages, two_workers

OBJECTIVES = ["val_acc", "madds"]


def scanned_twin(trials, number, key):
    """The duplicate look-up as a full scan (what earlier_twin did before the index), without waiting."""
    for other in trials:
        if other.number >= number or not ledger.counted(other):
            continue
        if other.state == TrialState.RUNNING and ledger.CANDIDATE not in other.user_attrs:
            continue
        if ledger.candidate_key(other.params) == key:
            return other.number
    return None


def finish(study: optuna.Study, trial: optuna.Trial, rng: random.Random) -> None:
    """Finish a running trial the ways a worker does."""
    kind = rng.choice(["trained", "infeasible", "duplicate", "failed", "pruned", "requeued"])
    madds = trial.params["width"] * trial.params["resolution"] ** 2
    tid = private.trial_id(trial)
    if kind == "requeued":
        ledger.requeue(study, tid, reason="interrupted by SIGTERM; it runs again on resume")
    elif kind == "duplicate":
        trial.set_user_attr(ledger.DUPLICATE, 0)
        study.tell(trial, state=TrialState.FAIL)
    elif kind in ("failed", "pruned"):
        study.tell(trial, state=TrialState.FAIL if kind == "failed" else TrialState.PRUNED)
    else:
        accuracy = rng.choice([0.5, 0.7, 0.9])  # ties and dominated points both occur
        attrs = {"feasible": kind == "trained", "trained": kind == "trained", "madds": madds, "val_acc": accuracy}
        ledger.set_attrs(study, tid, attrs=attrs)
        study.tell(trial, [accuracy, madds])


def check_against_full_scans(study: optuna.Study) -> None:
    trials = study.get_trials(deepcopy=False)
    for number in range(len(trials) + 1):  # first, from an index the other worker's changes left stale
        earlier = ledger.budget(trials, below=number)
        for n_trials in range(max(1, earlier.done + earlier.running - 1), earlier.done + earlier.running + 2):
            assert ledger.surplus(study, number, n_trials) == (earlier.done + earlier.running >= n_trials)
    assert ledger.spent(study) == ledger.budget(trials)
    for number in range(len(trials) + 1):
        earlier = ledger.budget(trials, below=number)
        assert ledger.held_before(study, number) == earlier.done + earlier.running
    for trial in trials:
        key = ledger.candidate_key(trial.params)
        twin = ledger.earlier_twin(study, trial.number, params=trial.params, wait_seconds=0)
        assert (twin.number if twin else None) == scanned_twin(trials, trial.number, key)
    seen = ledger.seen(study)
    counted = {ledger.candidate_key(t.params) for t in trials if ledger.counted(t)}
    for width in (0.5, 1.0, 2.0):
        for resolution in (8, 12, 16):
            key = ledger.candidate_key({"width": width, "resolution": resolution})
            assert (key in seen.candidates) == (key in counted)
    assert seen.trials == len(trials)
    ctx = SimpleNamespace(study=SimpleNamespace(objectives=OBJECTIVES, n_trials=50, workers=1))
    progress, frame = snapshot(study, ctx), trials_frame(trials)
    assert {k: progress[k] for k in ledger.counts(trials)} == ledger.counts(trials)
    assert progress["front"] == (int(pareto_mask(frame, OBJECTIVES).sum()) if len(frame) else 0)
    running = [dict(t.params) for t in trials if t.state == TrialState.RUNNING and ledger.counted(t)]
    assert progress["running_params"] == running


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_the_index_answers_as_full_scans_while_two_workers_change_the_study(tmp_path, kind):
    url = storages(tmp_path)[kind]
    if url is None:
        pytest.skip("no PostgreSQL configured: set MBV2_TEST_POSTGRES (bash scripts/with-postgres.sh starts one)")
    studies, rng, running = two_workers(url), random.Random(14), []
    for step in range(70):
        study = rng.choice(studies)
        action = rng.random()
        if action < 0.45 or not running:
            trial = study.ask() if rng.random() < 0.5 else trial_index.ask(study)  # may pop a queued retry
            for name, distribution in SPACE.items():
                trial.suggest_categorical(name, distribution.choices)
            if rng.random() < 0.8:  # else still choosing its knobs
                trial.set_user_attr(ledger.CANDIDATE, ledger.candidate_key(trial.params))
            running.append((study, trial))
        elif action < 0.9:
            finish(*running.pop(rng.randrange(len(running))), rng)
        else:
            study.enqueue_trial({"width": rng.choice([0.5, 1.0]), "resolution": rng.choice([8, 12, 16])})
        check_against_full_scans(studies[step % 2])


def test_a_look_reads_only_the_trials_that_changed(tmp_path, monkeypatch):
    study, other = two_workers(f"journal:{tmp_path / 'study.journal'}")
    for _ in range(40):
        trial = study.ask(SPACE)
        study.tell(trial, [0.5, 1.0])
    read, real = [], private.changed_trials

    def counting(*args, **kwargs):
        trials = real(*args, **kwargs)
        read.append(len(trials))
        return trials

    monkeypatch.setattr(private, "changed_trials", counting)
    ledger.spent(study)
    assert read == [40]  # the first look reads every trial once
    ledger.spent(study)
    assert read[-1] == 0  # nothing changed: nothing read
    waiting = other.ask(SPACE)  # another worker's trial
    ledger.spent(study)
    assert read[-1] == 1
    other.tell(waiting, [0.5, 1.0])
    ledger.spent(study)
    assert read[-1] == 1 and ledger.spent(study).done == 41 and read[-1] == 0


def test_indexes_are_per_study_object_and_freed_with_it(tmp_path):
    import gc
    import weakref

    study, other = two_workers(f"journal:{tmp_path / 'study.journal'}")
    with trial_index.look(study) as index, trial_index.look(other) as second:
        assert index is not second
    freed = weakref.ref(index)
    del study, index
    gc.collect()
    assert freed() is None


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_ask_takes_the_queue_in_order_without_scanning_every_trial(tmp_path, monkeypatch, kind):
    if storages(tmp_path)[kind] is None:
        pytest.skip("no PostgreSQL configured: set MBV2_TEST_POSTGRES (bash scripts/with-postgres.sh starts one)")
    study, other = two_workers(storages(tmp_path)[kind])
    for resolution in (8, 12, 16):  # queued by another worker: this one has never read them
        other.enqueue_trial({"width": 0.5, "resolution": resolution})
    taken = other.ask()  # and it takes the first
    storage = private.storage_of(study)
    monkeypatch.setattr(storage, "get_all_trials", lambda *a, **k: pytest.fail("ask scanned every trial"))
    asked = [trial_index.ask(study) for _ in range(3)]
    assert [t.number for t in asked] == [1, 2, 3] and taken.number == 0
    assert [t.suggest_categorical("resolution", [8, 12, 16]) for t in asked[:2]] == [12, 16]  # queued knobs
    assert asked[2].params == {} and storage.get_trial(asked[2]._trial_id).state == TrialState.RUNNING
