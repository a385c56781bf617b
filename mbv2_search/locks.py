"""Lock files that let one process at a time train a study's supernet or retrain a front point (oneshot.py).

A lock is a file created exclusively, holding its process's pid; a lock whose process is gone is taken
over. They are local to a machine (README: several machines copy the trained supernet).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from mbv2_search.ledger import process_alive

LOCK_POLL_SECONDS = 2.0  # how often a process waiting for a lock looks again


class Held(Exception):
    """exclusive(wait=False) found the lock held by a live process."""


@contextlib.contextmanager
def exclusive(
    lock: Path, *, waiting: str = "", say: Any = print, poll_seconds: float = LOCK_POLL_SECONDS, wait: bool = True
):
    """One process at a time (training the supernet, retraining a point); others wait, saying `waiting` once
    ({owner}: the holder's pid), or with wait=False raise Held; a lock left by a process that is gone is
    taken over."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            owner = _owner(lock, poll_seconds)
            if owner is None:  # gone: its holder died, or released it meanwhile
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            if not wait:
                raise Held(lock) from None
            if waiting and owner and not told:
                say(waiting.format(owner=owner))
                told = True
            time.sleep(poll_seconds)
    try:
        os.write(descriptor, str(os.getpid()).encode())
        os.close(descriptor)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _owner(lock: Path, grace_seconds: float) -> int | None:
    """The live process holding a lock file (0 while its holder has not written its pid yet), or None where
    none does: the file is gone, its process ended, or it names this process (which holds no lock it is
    asking for: a dead holder had the same pid, as in a container) or nothing for longer than the grace."""
    try:
        text, age = lock.read_text().strip(), time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    if not text.isdigit():  # empty while its holder writes its pid; left so where the holder died then
        return 0 if age < grace_seconds else None
    owner = int(text)
    return owner if owner != os.getpid() and process_alive(owner) else None


def taken_over(lock: Path, seconds: float = 2 * LOCK_POLL_SECONDS + 1) -> bool:
    """Whether another process takes the lock within `seconds` (a run that waited for the interrupted one:
    it polls for the lock, so it may not hold it yet)."""
    deadline = time.monotonic() + seconds
    while not lock.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
