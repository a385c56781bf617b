"""Optuna's journal file, made safe against torn writes (a full disk, a killed writer) and damaged records.

Optuna appends each record as a JSON line; a write that fails halfway leaves a torn last line.
Optuna's reader tolerates a torn *last* line but not one in the middle, and the next append would
put it there, leaving the whole study unreadable. So before each append, under the same lock, the
torn tail (a record whose write raised, never acknowledged) is cut off. Any other bad record
(garbage, non-UTF-8 bytes, a finished line that is not a record) stops every reader and writer
with one line naming the file and the line: nothing is ever appended after it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from optuna.storages.journal import JournalFileBackend

from mbv2_search.optuna_private import get_lock_file  # the lock Optuna's own append takes

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


class JournalCorrupt(Exception):
    """A record in the middle of a journal file is not a journal record (the environment's fault: exit 1)."""

    def __init__(self, path: str, line: int, why: str) -> None:
        super().__init__(
            f"{path}: line {line} is not a journal record ({why}); nothing was written to the file. "
            f"Keep a copy, delete that line, and run again"
        )


def _record(line: bytes) -> dict[str, Any]:
    """One journal record, or ValueError (JSON, UTF-8 or shape) saying why not."""
    record = json.loads(line)
    if not isinstance(record, dict) or "op_code" not in record:
        raise ValueError("valid JSON but no op_code")
    return record


class SafeJournalFile(JournalFileBackend):
    """JournalFileBackend whose appends first cut off a torn tail left by a failed write, and whose
    reader refuses a damaged record instead of replaying around it."""

    _last_read = 0  # the highest record number whose offset is known (max() of the offsets is O(records))

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        with open(self._file_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size  # records appended while we read are for the next call
            start = self._log_number_offset.get(log_number_from)
            number, offset = (log_number_from, start) if start is not None else (0, 0)
            f.seek(offset)
            for line in f:
                if offset + len(line) > size or not line.endswith(b"\n"):
                    return  # a record being written right now, or torn by a failed write (cut before the next append)
                try:
                    record = _record(line)
                except ValueError as err:
                    raise JournalCorrupt(self._file_path, number + 1, f"{type(err).__name__}: {err}") from None
                offset += len(line)
                self._log_number_offset[number + 1] = offset
                self._last_read = max(self._last_read, number + 1)
                if number >= log_number_from:
                    yield record
                number += 1

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with get_lock_file(self._lock):
            if os.path.exists(self._file_path):
                drop_torn_tail(self._file_path)
                self._check_unread()
            text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
            with open(self._file_path, "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())

    def _check_unread(self) -> None:
        """Raise JournalCorrupt if a record past what this process has read is damaged (under the lock)."""
        last_read = self._last_read
        with open(self._file_path, "rb") as f:
            f.seek(self._log_number_offset[last_read])
            for number, line in enumerate(f, start=last_read + 1):
                try:
                    _record(line)
                except ValueError as err:
                    raise JournalCorrupt(self._file_path, number, f"{type(err).__name__}: {err}") from None
