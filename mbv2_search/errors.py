"""Errors shared across rooms, and failures of the environment (data, disk, storage) as one line each.

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re


class DataError(ValueError):
    """Data the user must provide is missing or malformed; the message says what is expected where."""


class TrainingError(RuntimeError):
    """Training could not finish; the message says why and where."""


class HelperFailed(TrainingError):
    """A helper process of a run on several devices failed or died: the environment's failure (a killed
    process, a lost device), not the candidate's, so its trial runs again and is not counted."""


def mask_url(url: str) -> str:
    """A storage URL with any password replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _storage_error(err: BaseException) -> bool:
    """A database that went away or refused us (SQLAlchemy/psycopg), as opposed to a bug."""
    import optuna
    from sqlalchemy.exc import DBAPIError, OperationalError

    return isinstance(err, (optuna.exceptions.StorageInternalError, OperationalError, DBAPIError))


class NoSupernet(RuntimeError):
    """A worker of a one-shot study found no trained supernet (`run` trains it before the search)."""


def environment_message(err: BaseException) -> str | None:
    """One line for a failure of the environment, or None when the error is not one."""
    from mbv2_search.journal import JournalCorrupt

    if isinstance(err, NoSupernet):
        return str(err)
    if isinstance(err, (DataError, JournalCorrupt)):
        # raised in a DataLoader worker, it comes back with that worker's traceback: keep its last line
        text = str(err).strip()
        return text.splitlines()[-1].removeprefix(f"{DataError.__module__}.DataError: ") if "\n" in text else text
    if isinstance(err, HelperFailed):
        return str(err)
    if isinstance(err, OSError):  # disk full, a file where a folder should be, an unreadable image
        return f"cannot write or read {err.filename or 'a file'}: {err.strerror or err}"
    if _storage_error(err):
        first = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        return f"the study storage is unreachable ({mask_url(first)}); the study is intact: run the same command again to resume"
    return None
