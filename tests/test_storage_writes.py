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
