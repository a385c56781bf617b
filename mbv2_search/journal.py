"""Optuna's journal file, made safe against torn writes (a full disk, a killed writer).

Optuna appends each record as a JSON line; a write that fails halfway leaves a torn last line.
Optuna's reader tolerates a torn *last* line but not one in the middle, and the next append would
put it there, leaving the whole study unreadable. So before each append, under the same lock, the
torn tail (a record whose write raised, never acknowledged) is cut off.
"""

from __future__ import annotations

import json
import os
from typing import Any

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file  # the lock Optuna's own append takes

_CHUNK = 1 << 16


def drop_torn_tail(path: str) -> int:
    """Truncate the file after its last newline; returns the bytes dropped (0 when it ends cleanly)."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0  # the usual case: a clean end, one byte read
        end = size
        while end > 0:
            start = max(0, end - _CHUNK)
            f.seek(start)
            chunk = f.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                f.truncate(start + newline + 1)
                return size - (start + newline + 1)
            end = start
        f.truncate(0)
        return size


class SafeJournalFile(JournalFileBackend):
    """JournalFileBackend whose appends first cut off a torn tail left by a failed write."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with get_lock_file(self._lock):
            if os.path.exists(self._file_path):
                drop_torn_tail(self._file_path)
            text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
            with open(self._file_path, "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
