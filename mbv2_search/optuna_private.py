"""Every use of Optuna's private API, in one place, so an Optuna upgrade has one file to check.

Each is needed because Optuna's public API has no equivalent: writing a finished or another
worker's trial by id (re-queueing a stopped worker's trial), several attributes in one write,
reading only the trials that changed since the last look, asking for a trial without a scan of
every trial, and the lock file that the journal's own append takes.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import optuna
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.storages.journal._file import get_lock_file  # noqa: F401 (used by journal.py)
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import FrozenTrial


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage behind a study (Study has no public accessor)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """A study's storage id, which the storage's methods take."""
    return study._study_id


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's storage id, which the storage's methods take (the number is per study)."""
    return trial._trial_id


def _rdb(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    """The RDB storage behind a storage (Optuna wraps RDBStorage in a cache), or None."""
    inner = storage._backend if isinstance(storage, _CachedStorage) else storage
    return inner if isinstance(inner, optuna.storages.RDBStorage) else None


def set_trial_attrs(study: optuna.Study, trial_id_: int, *, attrs: dict[str, Any]) -> None:
    """Write user attributes of any trial of the study, by storage id, in one storage write.

    Journal: one append (one lock, one fsync) of one record per attribute, as Optuna's replay reads
    them. RDB: one transaction of one upsert. Raises UpdateFinishedTrialError, as Optuna's one-at-a-time calls do,
    if the trial finished meanwhile.
    """
    storage = storage_of(study)
    rdb = _rdb(storage)
    if not attrs:
        return
    if isinstance(storage, optuna.storages.JournalStorage):
        _journal_user_attrs(storage, trial_id_, attrs)
    elif rdb is not None:
        _rdb_user_attrs(rdb, trial_id_, attrs)
    else:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id_, key, value)


def _rdb_user_attrs(rdb: optuna.storages.RDBStorage, trial_id_: int, attrs: dict[str, Any]) -> None:
    """One transaction, one multi-row upsert where the database has one (as Optuna's single upsert)."""
    from optuna.storages._rdb import models  # imports SQLAlchemy: only where an RDB is in use
    from sqlalchemy.dialects import mysql, postgresql, sqlite

    table = models.TrialUserAttributeModel
    rows = [{"trial_id": trial_id_, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
    with _create_scoped_session(rdb.scoped_session, True) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id_, session)
        rdb.check_trial_is_updatable(trial_id_, trial.state)
        if rdb.engine.name in ("postgresql", "sqlite"):
            insert = (postgresql if rdb.engine.name == "postgresql" else sqlite).insert(table).values(rows)
            update = {"value_json": insert.excluded.value_json}
            session.execute(insert.on_conflict_do_update(index_elements=[table.trial_id, table.key], set_=update))
        elif rdb.engine.name == "mysql":
            insert = mysql.insert(table).values(rows)
            session.execute(insert.on_duplicate_key_update(value_json=insert.inserted.value_json))
        else:
            for key, value in attrs.items():
                rdb._set_trial_attr_without_commit(session, table, trial_id_, key, value)


def _journal_user_attrs(storage: optuna.storages.JournalStorage, trial_id_: int, attrs: dict[str, Any]) -> None:
    with storage._thread_lock:
        worker = storage._replay_result.worker_id
        op = JournalOperation.SET_TRIAL_USER_ATTR
        storage._backend.append_logs(
            [{"op_code": op, "worker_id": worker, "trial_id": trial_id_, "user_attr": {k: v}} for k, v in attrs.items()]
        )
        # a record of ours on a finished trial raises as Optuna replays it, and the replay stops
        # there: replay the rest of our records too, then raise the first error
        first: Exception | None = None
        while True:
            try:
                storage._sync_with_backend()
                break
            except optuna.exceptions.UpdateFinishedTrialError as err:
                first = first or err
        if first is not None:
            raise first


def changed_trials(
    study: optuna.Study, *, unfinished: Collection[int], known: int, last_finished: int
) -> list[FrozenTrial]:
    """The study's trials that may have changed since a look that saw `known` trials: those then
    unfinished (storage ids) and every newer one; other storages return every trial.

    Finished trials never change (Optuna refuses writes to them), so they need reading once.
    Journal: one replay of the new records, then dictionary look-ups. RDB: one query for the
    unfinished trials and those above the last finished id (what Optuna's own cache reads).
    """
    storage, sid = storage_of(study), study_id(study)
    rdb = _rdb(storage)
    if isinstance(storage, optuna.storages.JournalStorage):
        with storage._thread_lock:
            storage._sync_with_backend()
            replay = storage._replay_result
            ids = replay._study_id_to_trial_ids[sid]
            return [replay._trials[i] for i in unfinished] + [replay._trials[i] for i in ids[known:]]
    if rdb is not None:
        return rdb._get_trials(sid, None, set(unfinished), last_finished)
    return storage.get_all_trials(sid, deepcopy=False)


def ask(study: optuna.Study, *, waiting: list[int]) -> optuna.Trial:
    """study.ask(), taking the queue from `waiting` (storage ids of the WAITING trials, by number).

    Optuna's ask finds the queue by scanning every trial of the study (Study._pop_waiting_trial_id),
    which made each trial cost more as the study grew; this is that method and ask's body (Optuna 5)
    with the scan replaced.
    """
    storage = storage_of(study)
    study._thread_local.cached_all_trials = None
    for waiting_id in waiting:
        try:  # False, or an error, where another worker took it first
            if storage.set_trial_state_values(waiting_id, state=optuna.trial.TrialState.RUNNING):
                _cache_knows(storage, study_id(study), waiting_id)
                return optuna.Trial(study, waiting_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return optuna.Trial(study, storage.create_new_trial(study_id(study)))


def _cache_knows(storage: optuna.storages.BaseStorage, sid: int, trial_id_: int) -> None:
    """Optuna's RDB cache maps a trial to its study only once it has read it (its own ask reads the
    queue through it); a trial taken from our index must be read in before it gets parameters."""
    if isinstance(storage, _CachedStorage) and trial_id_ not in storage._trial_id_to_study_id_and_number:
        storage._read_trials_from_remote_storage(sid)  # takes the cache's lock itself
