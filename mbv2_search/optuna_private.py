"""Every use of Optuna's private API, in one place, so an Optuna upgrade has one file to check.

Each is needed because Optuna's public API has no equivalent: writing a finished or another
worker's trial by id (re-queueing a stopped worker's trial, attributes written after a trial's
`tell`), and the lock file that the journal's own append takes.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages.journal._file import get_lock_file  # noqa: F401 (used by journal.py)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage behind a study (Study has no public accessor)."""
    return study._storage


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's storage id, which the storage's methods take (the number is per study)."""
    return trial._trial_id


def set_trial_attrs(study: optuna.Study, trial_id_: int, *, attrs: dict[str, Any]) -> None:
    """Write user attributes of any trial of the study, by storage id."""
    storage = storage_of(study)
    for key, value in attrs.items():
        storage.set_trial_user_attr(trial_id_, key, value)
