"""Every use of Optuna's private API, in one place, so an Optuna upgrade has one file to check.

Each is needed because Optuna's public API has no equivalent: writing a finished or another
worker's trial by id (re-queueing a stopped worker's trial), several attributes in one write,
reading only the trials that changed since the last look, asking for a trial without a scan of
every trial, a trial's parameters and its outcome each in one write with its attributes, and the
lock file that the journal's own append takes.

One write is one journal append (one lock, one fsync) or one RDB transaction (one commit). On
PostgreSQL a commit and Optuna's reads of a trial cost milliseconds each, so a trial that made
about 20 of them spent 50-70 ms in the storage (benchmarks/bench_workers.py).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, check_distribution_compatibility, distribution_to_json
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.storages.journal._file import get_lock_file  # noqa: F401 (used by journal.py)
from optuna.storages.journal._storage import JournalOperation
from optuna.study._tell import _tell_with_warning
from optuna.trial import FrozenTrial, TrialState

Param = tuple[str, float, BaseDistribution]  # name, internal value, distribution (as set_trial_param takes them)


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

    Raises UpdateFinishedTrialError, as Optuna's one-at-a-time calls do, if the trial finished meanwhile.
    """
    if attrs:
        _write(storage_of(study), trial_id_, attrs=attrs)


def _write(
    storage: optuna.storages.BaseStorage,
    trial_id_: int,
    *,
    params: Sequence[Param] = (),
    attrs: dict[str, Any] | None = None,
    finish: tuple[TrialState, Sequence[float] | None] | None = None,
) -> datetime | None:
    """A trial's parameters, user attributes and then its final state and values, in one write: what
    set_trial_param, set_trial_user_attr and set_trial_state_values store, in that order. Returns the
    stored completion time (RDB) or None."""
    attrs = attrs or {}
    rdb = _rdb(storage)
    if isinstance(storage, optuna.storages.JournalStorage):
        _journal_write(storage, trial_id_, params, attrs, finish)
    elif rdb is not None:
        return _rdb_write(storage, rdb, trial_id_, params, attrs, finish)
    else:
        for name, value, distribution in params:
            storage.set_trial_param(trial_id_, name, value, distribution)
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id_, key, value)
        if finish is not None:
            storage.set_trial_state_values(trial_id_, finish[0], finish[1])
    return None


def _rdb_write(
    storage: optuna.storages.BaseStorage,
    rdb: optuna.storages.RDBStorage,
    trial_id_: int,
    params: Sequence[Param],
    attrs: dict[str, Any],
    finish: tuple[TrialState, Sequence[float] | None] | None,
) -> datetime | None:
    """One transaction: Optuna's checks and rows for each part (RDBStorage's *_without_commit steps)."""
    from optuna.storages._rdb import models  # imports SQLAlchemy: only where an RDB is in use

    cache = storage if isinstance(storage, _CachedStorage) else None
    known = _cached_distributions(cache, trial_id_) if params else {}
    completed = None
    with _create_scoped_session(rdb.scoped_session) as session:
        # FOR UPDATE where the state changes, as set_trial_state_values locks the trial
        trial = models.TrialModel.find_or_raise_by_id(trial_id_, session, for_update=finish is not None)
        rdb.check_trial_is_updatable(trial_id_, trial.state)
        if params:
            _rdb_params(session, trial, params, known)
        if attrs:
            _rdb_user_attrs(rdb, session, trial_id_, attrs)
        if finish is not None:
            state, values = finish
            for objective, value in enumerate(values or ()):
                rdb._set_trial_value_without_commit(session, trial, objective, value)
            trial.state = state
            if state.is_finished():
                trial.datetime_complete = completed = datetime.now()
    if cache is not None and params:  # as _CachedStorage.set_trial_param records each parameter's first distribution
        with cache._lock:
            study_id_, _ = cache._trial_id_to_study_id_and_number[trial_id_]
            for name, _, distribution in params:
                cache._studies[study_id_].param_distribution.setdefault(name, distribution)
    return completed


def _cached_distributions(cache: _CachedStorage | None, trial_id_: int) -> dict[str, BaseDistribution]:
    """The distributions Optuna's cache has seen in the trial's study (it checks new ones against them)."""
    if cache is None:
        return {}
    with cache._lock:
        study_id_, _ = cache._trial_id_to_study_id_and_number[trial_id_]
        return dict(cache._studies[study_id_].param_distribution)


def _rdb_params(session: Any, trial: Any, params: Sequence[Param], known: dict[str, BaseDistribution]) -> None:
    """The parameter rows in one insert, each distribution checked against the study's first of its name
    (RDBStorage._set_trial_param_without_commit, which reads the trial again for each parameter)."""
    from optuna.distributions import json_to_distribution
    from optuna.storages._rdb import models

    table = models.TrialParamModel
    for name, _, distribution in params:
        previous = known.get(name)
        if previous is None:
            record = (
                session.query(table)
                .join(models.TrialModel)
                .filter(models.TrialModel.study_id == trial.study_id, table.param_name == name)
                .first()
            )
            previous = json_to_distribution(record.distribution_json) if record is not None else None
        if previous is not None:
            check_distribution_compatibility(previous, distribution)
    rows = [
        {"trial_id": trial.trial_id, "param_name": n, "param_value": v, "distribution_json": distribution_to_json(d)}
        for n, v, d in params
    ]
    from sqlalchemy import insert

    session.execute(insert(table), rows)


def _rdb_user_attrs(rdb: optuna.storages.RDBStorage, session: Any, trial_id_: int, attrs: dict[str, Any]) -> None:
    """One multi-row upsert where the database has one (as Optuna's single upsert)."""
    from optuna.storages._rdb import models
    from sqlalchemy.dialects import mysql, postgresql, sqlite

    table = models.TrialUserAttributeModel
    rows = [{"trial_id": trial_id_, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
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


def _journal_write(
    storage: optuna.storages.JournalStorage,
    trial_id_: int,
    params: Sequence[Param],
    attrs: dict[str, Any],
    finish: tuple[TrialState, Sequence[float] | None] | None,
) -> None:
    """One append of the records Optuna's own calls append (one per parameter and attribute), as its replay reads them."""
    records: list[dict[str, Any]] = [
        {
            "op_code": JournalOperation.SET_TRIAL_PARAM,
            "param_name": name,
            "param_value_internal": value,
            "distribution": distribution_to_json(distribution),
        }
        for name, value, distribution in params
    ]
    records += [{"op_code": JournalOperation.SET_TRIAL_USER_ATTR, "user_attr": {k: v}} for k, v in attrs.items()]
    if finish is not None:
        completed = datetime.now(tz=timezone.utc).isoformat(timespec="microseconds")
        state, values = finish
        records.append(
            {"op_code": JournalOperation.SET_TRIAL_STATE_VALUES, "state": state, "values": values}
            | ({"datetime_complete": completed} if state.is_finished() else {})
        )
    with storage._thread_lock:
        worker = storage._replay_result.worker_id
        storage._backend.append_logs([{**r, "worker_id": worker, "trial_id": trial_id_} for r in records])
        # a record of ours on a finished trial raises as Optuna replays it, and the replay stops
        # there: replay the rest of our records too, then raise the first error
        first: Exception | None = None
        while True:
            try:
                storage._sync_with_backend()
                break
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as err:
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


def ask(study: optuna.Study, *, waiting: list[int], attrs: dict[str, Any] | None = None) -> optuna.Trial:
    """study.ask(), taking the queue from `waiting` (storage ids of the WAITING trials, by number), the
    trial given the user attributes `attrs` (in the same write where it is new).

    Optuna's ask finds the queue by scanning every trial of the study (Study._pop_waiting_trial_id),
    which made each trial cost more as the study grew; this is that method and ask's body (Optuna 5)
    with the scan replaced, and a new trial not read back on an RDB.
    """
    storage = storage_of(study)
    study._thread_local.cached_all_trials = None
    for waiting_id in waiting:
        try:  # False, or an error, where another worker took it first
            if storage.set_trial_state_values(waiting_id, state=TrialState.RUNNING):
                _cache_knows(storage, study_id(study), waiting_id)
                set_trial_attrs(study, waiting_id, attrs=attrs or {})
                return optuna.Trial(study, waiting_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    new_id = storage.create_new_trial(study_id(study), template_trial=_running(attrs) if attrs else None)
    created = _cached_trial(storage, new_id)
    return optuna.Trial(study, new_id) if created is None else _trial(study, created)


def _running(attrs: dict[str, Any]) -> FrozenTrial:
    """A new trial's template (create_new_trial stores it in its one write): running, with user attributes."""
    return optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=dict(attrs))


def _cached_trial(storage: optuna.storages.BaseStorage, trial_id_: int) -> FrozenTrial | None:
    """A copy of the trial as Optuna's RDB cache holds it (create_new_trial puts the new trial there), or None."""
    if not isinstance(storage, _CachedStorage):
        return None
    with storage._lock:
        study_id_, number = storage._trial_id_to_study_id_and_number[trial_id_]
        return copy.deepcopy(storage._studies[study_id_].trials[number])


def _trial(study: optuna.Study, frozen: FrozenTrial) -> optuna.Trial:
    """optuna.Trial(study, id) for a trial this process just created: Trial.__init__ (Optuna 5) without
    its read of the trial, which on an RDB cost a transaction of six queries."""
    trial = optuna.Trial.__new__(optuna.Trial)
    trial.study, trial._trial_id, trial.storage = study, frozen._trial_id, study._storage
    trial._cached_frozen_trial = frozen
    study.sampler.before_trial(optuna.pruners._filter_study(study, frozen), frozen)
    trial.relative_search_space = None
    trial._relative_params = None
    trial._fixed_params = frozen.system_attrs.get("fixed_params", {})
    return trial


class _OneWrite:
    """A storage that holds one trial's parameters and writes them, its attributes and its outcome in
    one write (any other call goes to the storage itself)."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        trial_id_: int,
        attrs: dict[str, Any],
        known: FrozenTrial | None = None,
    ) -> None:
        self.storage, self.trial_id, self.attrs = storage, trial_id_, attrs
        self.known = known  # the trial as this process knows it, read in its place (an RDB read is a transaction)
        self.params: list[Param] = []
        self.read: FrozenTrial | None = None  # the trial as tell read it
        self.snapshot: list[FrozenTrial] | None = None  # the study's trials as the first sampler read saw them
        self.keep_snapshot = False
        self.told: FrozenTrial | None = None  # the trial as the outcome's write stored it (RDB)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)

    def set_trial_param(self, trial_id_: int, name: str, value: float, distribution: BaseDistribution) -> None:
        if trial_id_ != self.trial_id:
            return self.storage.set_trial_param(trial_id_, name, value, distribution)
        self.params.append((name, value, distribution))
        return None

    def get_all_trials(
        self, study_id_: int, deepcopy: bool = True, states: Collection[TrialState] | None = None
    ) -> list[FrozenTrial]:
        if not self.keep_snapshot:
            return self.storage.get_all_trials(study_id_, deepcopy=deepcopy, states=states)
        if self.snapshot is None:
            self.snapshot = self.storage.get_all_trials(study_id_, deepcopy=False)
        trials = [t for t in self.snapshot if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trial(self, trial_id_: int) -> FrozenTrial:
        mine = trial_id_ == self.trial_id
        trial = self.known if mine and self.known is not None else self.storage.get_trial(trial_id_)
        if mine:  # what Optuna's tell read after the attributes were written
            trial = copy.copy(trial)
            trial.user_attrs = {**trial.user_attrs, **self.attrs}
            self.read = trial
        return trial

    def set_trial_state_values(self, trial_id_: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        if trial_id_ != self.trial_id or state == TrialState.RUNNING:
            return self.storage.set_trial_state_values(trial_id_, state, values)
        completed = _write(self.storage, trial_id_, params=self.params, attrs=self.attrs, finish=(state, values))
        if completed is not None and self.read is not None:
            self.told = copy.copy(self.read)
            self.told.state, self.told.values, self.told.datetime_complete = state, values, completed
        return True


@contextlib.contextmanager
def suggestions_in_one_write(trial: optuna.Trial) -> Iterator[dict[str, Any]]:
    """Hold the parameters the trial is given in the block, and write them, with the user attributes put
    in the yielded dict, in one write at its end (also where it raises: what was suggested is stored).

    Optuna writes each suggestion in a write of its own (a transaction on an RDB). The sampler sees
    the trial's earlier parameters as before (Trial keeps them itself), and the study's trials as its
    first read in the block saw them: TPE's default (constant_liar) read every trial at each suggestion,
    where its multivariate mode and the other samplers read once per trial (sample_relative).
    """
    storage, study, held = trial.storage, trial.study, _OneWrite(trial.storage, trial._trial_id, {})
    sampling = copy.copy(study)  # the sampler's view; Study.__getstate__: its own thread-local cache
    sampling._storage, held.keep_snapshot = held, True
    trial.storage, trial.study = held, sampling
    try:
        yield held.attrs
    except BaseException:
        trial.storage, trial.study = storage, study
        with contextlib.suppress(Exception):  # the error raised in the block is the one to report
            _write(storage, held.trial_id, params=held.params)
        raise
    trial.storage, trial.study = storage, study
    if held.params or held.attrs:
        _write(storage, held.trial_id, params=held.params, attrs=held.attrs)
        trial._cached_frozen_trial.user_attrs.update(held.attrs)  # as Trial.set_user_attr keeps its copy


def tell(
    study: optuna.Study,
    trial: optuna.Trial,
    *,
    attrs: dict[str, Any],
    values: Sequence[float] | None = None,
    state: TrialState | None = None,
) -> FrozenTrial:
    """study.tell(trial, values, state, skip_if_finished=True) with the user attributes `attrs` written in
    the same write as the outcome; returns the trial as stored (not read again on an RDB).

    Optuna's tell (its _tell_with_warning: checks, the sampler's after_trial, the state) runs on a copy
    of the study whose storage writes the attributes with the state; the trial it reads and hands to
    the sampler has them, as when they were written first. Optuna's own tell reads the trial again; on
    an RDB this takes the trial as the worker knows it (optuna.Trial's own copy: its parameters, its
    intermediate values and the attributes written through it or these calls) instead of a
    transaction: a trial another worker finished meanwhile is refused by the write itself
    (UpdateFinishedTrialError), where a read would have seen it and skipped the tell.
    """
    storage = storage_of(study)
    known = copy.deepcopy(trial._cached_frozen_trial) if _rdb(storage) is not None else None
    held = _OneWrite(storage, trial_id(trial), dict(attrs), known)
    told = copy.copy(study)  # Study.__getstate__: the copy has its own thread-local cache
    told._storage = held
    study._thread_local.cached_all_trials = None
    _tell_with_warning(told, trial, values, state, skip_if_finished=True)
    return held.told if held.told is not None else storage.get_trial(trial_id(trial))


def _cache_knows(storage: optuna.storages.BaseStorage, sid: int, trial_id_: int) -> None:
    """Optuna's RDB cache maps a trial to its study only once it has read it (its own ask reads the
    queue through it); a trial taken from our index must be read in before it gets parameters."""
    if isinstance(storage, _CachedStorage) and trial_id_ not in storage._trial_id_to_study_id_and_number:
        storage._read_trials_from_remote_storage(sid)  # takes the cache's lock itself
