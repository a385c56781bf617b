"""A trial's attributes reach the storage in one write (one journal append, one RDB transaction),
which Optuna's own readers read back, and a finished trial's are refused as Optuna refuses them."""

from __future__ import annotations

import os
import time
import uuid

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from mbv2_search import ledger
from mbv2_search import optuna_private as private
from mbv2_search.storage import make_storage

SPACE = {"width": CategoricalDistribution([0.5, 1.0]), "resolution": CategoricalDistribution([8, 12, 16])}


def two_workers(url: str) -> tuple[optuna.Study, optuna.Study]:
    """One study opened twice, as two worker processes open it (each its own storage object)."""
    name, directions = f"shared-{uuid.uuid4().hex[:8]}", ["maximize", "minimize"]
    first = optuna.create_study(study_name=name, storage=make_storage(url), directions=directions)
    return first, optuna.load_study(study_name=name, storage=make_storage(url))


def storages(tmp_path) -> dict[str, str | None]:
    """The storages a worker may use: journal file, SQLite, and PostgreSQL where MBV2_TEST_POSTGRES names one."""
    postgres = os.environ.get("MBV2_TEST_POSTGRES")
    return {
        "journal": f"journal:{tmp_path / 'study.journal'}",
        "sqlite": f"sqlite:///{tmp_path / 'study.db'}",
        "postgresql": postgres,
    }


def test_a_finished_trials_attributes_are_refused_and_the_storage_stays_usable(tmp_path):
    study, _ = two_workers(f"journal:{tmp_path / 'study.journal'}")
    trial = study.ask(SPACE)
    study.tell(trial, state=TrialState.FAIL)  # another worker took it over
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        ledger.set_attrs(study, private.trial_id(trial), attrs={f"attr{i}": i for i in range(5)})
    later = study.ask(SPACE)  # no record of ours left half-replayed
    ledger.set_attrs(study, private.trial_id(later), attrs={"a": 1, "b": 2})
    assert study.get_trials()[1].user_attrs == {"a": 1, "b": 2}


def test_attributes_reach_a_journal_in_one_append_that_optuna_reads(tmp_path, monkeypatch):
    path = tmp_path / "study.journal"
    study, _ = two_workers(f"journal:{path}")
    trial = study.ask(SPACE)
    backend = private.storage_of(study)._backend
    appends = []
    real = backend.append_logs
    monkeypatch.setattr(backend, "append_logs", lambda logs: appends.append(len(logs)) or real(logs))
    attrs = {f"attr{i}": [i, {"nested": i}] for i in range(30)}
    ledger.set_attrs(study, private.trial_id(trial), attrs=attrs)
    assert appends == [30]  # one lock, one fsync
    plain = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    assert optuna.load_study(study_name=study.study_name, storage=plain).get_trials()[0].user_attrs == attrs


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_attributes_reach_an_rdb_in_one_transaction(tmp_path, kind):
    from sqlalchemy import event

    if storages(tmp_path)[kind] is None:
        pytest.skip("no PostgreSQL configured: set MBV2_TEST_POSTGRES (bash scripts/with-postgres.sh starts one)")
    study, _ = two_workers(storages(tmp_path)[kind])
    trial = study.ask(SPACE)
    ledger.set_attrs(study, private.trial_id(trial), attrs={"attr0": "overwritten", "kept": [1, {"a": 2}]})
    engine = private.storage_of(study)._backend.engine
    commits = []
    event.listen(engine, "commit", lambda conn: commits.append(time.time()))
    attrs = {f"attr{i}": i for i in range(30)}
    ledger.set_attrs(study, private.trial_id(trial), attrs=attrs)
    assert len(commits) == 1
    assert study.get_trials()[0].user_attrs == {**attrs, "kept": [1, {"a": 2}]}  # upserted
    study.tell(trial, state=TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        ledger.set_attrs(study, private.trial_id(trial), attrs={"late": 1})


def a_trial_as_workers_record_it(study: optuna.Study, *, one_write: bool) -> None:
    """Ask, suggest, attributes and tell: through the one-write calls, or through Optuna's own one at a time."""
    from mbv2_search import trial_index

    beat = {ledger.WORKER: "host:ns:1", "heartbeat": 1.5}  # the first beat: in the ask's write, or after it
    trial = trial_index.ask(study, attrs=beat) if one_write else study.ask()
    if not one_write:
        ledger.set_attrs(study, private.trial_id(trial), attrs=beat)
    results = {"val_acc": 0.9, "trained": True, "history": [0.5, 0.9]}
    if one_write:
        with private.suggestions_in_one_write(trial) as attrs:
            for name, distribution in SPACE.items():
                trial.suggest_categorical(name, distribution.choices)
            attrs[ledger.CANDIDATE] = ledger.candidate_key(trial.params)
        private.tell(study, trial, attrs=results, values=[0.9, 1.0])
    else:
        for name, distribution in SPACE.items():
            trial.suggest_categorical(name, distribution.choices)
        trial.set_user_attr(ledger.CANDIDATE, ledger.candidate_key(trial.params))
        ledger.set_attrs(study, private.trial_id(trial), attrs=results)
        study.tell(trial, [0.9, 1.0])


def stored(url: str, name: str) -> list[tuple]:
    """What Optuna reads back from a fresh storage object (as its CLI and optuna-dashboard do)."""
    study = optuna.load_study(study_name=name, storage=make_storage(url))
    fields = ("number", "state", "values", "params", "distributions", "user_attrs", "system_attrs")
    return [tuple(getattr(t, f) for f in fields) for t in study.get_trials()]


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_one_write_calls_store_what_optunas_own_calls_store(tmp_path, kind):
    url = storages(tmp_path)[kind]
    if url is None:
        pytest.skip("no PostgreSQL configured: set MBV2_TEST_POSTGRES (bash scripts/with-postgres.sh starts one)")
    names = []
    for one_write in (False, True):
        name = f"same-{uuid.uuid4().hex[:8]}"
        sampler = optuna.samplers.TPESampler(seed=3, n_startup_trials=2)  # reads every trial at each suggestion
        study = optuna.create_study(
            study_name=name, storage=make_storage(url), sampler=sampler, directions=["maximize", "minimize"]
        )
        study.enqueue_trial({"width": 1.0, "resolution": 8}, user_attrs={"retry_of": 0})
        for _ in range(5):
            a_trial_as_workers_record_it(study, one_write=one_write)
        names.append(name)
    assert stored(url, names[0]) == stored(url, names[1])


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_trials_parameters_and_its_outcome_take_one_transaction_each(tmp_path, kind):
    from sqlalchemy import event

    url = storages(tmp_path)[kind]
    if url is None:
        pytest.skip("no PostgreSQL configured: set MBV2_TEST_POSTGRES (bash scripts/with-postgres.sh starts one)")
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=1)
    study = optuna.create_study(storage=make_storage(url), sampler=sampler, directions=["maximize", "minimize"])
    a_trial_as_workers_record_it(study, one_write=True)
    trial = private.ask(study, waiting=[])
    engine = private.storage_of(study)._backend.engine
    commits: list[float] = []
    event.listen(engine, "commit", lambda conn: commits.append(time.time()))
    with private.suggestions_in_one_write(trial) as attrs:
        for name, distribution in SPACE.items():
            trial.suggest_categorical(name, distribution.choices)
        attrs[ledger.CANDIDATE] = ledger.candidate_key(trial.params)
    assert len(commits) == 2  # TPE's one read of the study's trials, then one write (Optuna: a read and a write each)
    told = private.tell(study, trial, attrs={f"attr{i}": i for i in range(30)}, values=[0.5, 2.0])
    assert len(commits) == 3  # one write, the trial not read (Optuna: 30 writes, tell's two reads and its write)
    assert told == study.get_trials()[-1]  # as stored, without reading it again


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_telling_a_trial_another_worker_finished_stores_nothing(tmp_path, kind):
    url = storages(tmp_path)[kind]
    if url is None:
        pytest.skip("no PostgreSQL configured: set MBV2_TEST_POSTGRES (bash scripts/with-postgres.sh starts one)")
    ours, theirs = two_workers(url)
    trial = private.ask(ours, waiting=[], attrs={"heartbeat": 1.0})
    trial.suggest_categorical("width", [0.5, 1.0])
    theirs.tell(trial.number, state=TrialState.FAIL)  # it looked stale to them: re-queued
    if kind == "journal":  # tell's read sees it finished and skips it
        assert private.tell(ours, trial, attrs={"val_acc": 0.9}, values=[0.9, 1.0]).state == TrialState.FAIL
    else:  # tell takes the trial as this worker knows it: the write refuses it
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            private.tell(ours, trial, attrs={"val_acc": 0.9}, values=[0.9, 1.0])
    (stored_trial,) = optuna.load_study(study_name=ours.study_name, storage=make_storage(url)).get_trials()
    assert stored_trial.state == TrialState.FAIL and "val_acc" not in stored_trial.user_attrs


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_new_trial_and_its_first_beat_take_one_transaction(tmp_path, kind):
    from sqlalchemy import event

    url = storages(tmp_path)[kind]
    if url is None:
        pytest.skip("no PostgreSQL configured: set MBV2_TEST_POSTGRES (bash scripts/with-postgres.sh starts one)")
    study = optuna.create_study(storage=make_storage(url), directions=["maximize", "minimize"])
    commits: list[float] = []
    event.listen(private.storage_of(study)._backend.engine, "commit", lambda conn: commits.append(time.time()))
    trial = private.ask(study, waiting=[], attrs={ledger.WORKER: "host:ns:1", "heartbeat": 2.5})
    assert len(commits) == 1
    assert trial.user_attrs == {ledger.WORKER: "host:ns:1", "heartbeat": 2.5}
    (read,) = optuna.load_study(study_name=study.study_name, storage=make_storage(url)).get_trials()
    assert read.state == TrialState.RUNNING and read.user_attrs == trial.user_attrs and read.datetime_start


def test_a_trial_this_process_created_is_the_trial_optuna_would_read(tmp_path):
    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path / 'study.db'}"))
    mine = private.ask(study, waiting=[])  # not read back
    theirs = optuna.Trial(study, private.trial_id(mine))  # Trial.__init__ reads it
    assert vars(mine).keys() == vars(theirs).keys()
    assert {k: v for k, v in vars(mine).items() if k != "_cached_frozen_trial"} == {
        k: v for k, v in vars(theirs).items() if k != "_cached_frozen_trial"
    }
    assert mine._cached_frozen_trial == theirs._cached_frozen_trial
