"""SIGINT and SIGTERM as one exception, raised where it is safe.

Lightning's `fit` catches KeyboardInterrupt and calls sys.exit(1), so Ctrl-C inside training would
skip our clean-up and exit 1. Our handler raises `Interrupted` instead (a BaseException Lightning
re-raises after its own teardown). Outside `interruptible()` blocks, the signal is only remembered
and raised at the next `check()`, so the study's bookkeeping is never cut in half.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A signal asked the process to stop; exit with 128 + its number (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.note = ""  # what the interruption leaves behind, for the user (set by the command)
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by this signal."""
        return 128 + self.signum


def ignore_signals() -> None:
    """From here on SIGINT and SIGTERM are ignored: the process is on its way out after an interruption,
    and a second Ctrl-C must not turn a clean exit into a KeyboardInterrupt traceback."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _inside(frame: FrameType | None, packages: tuple[str, ...]) -> bool:
    """Whether any frame of the stack runs code of these packages."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(packages):
            return True
        frame = frame.f_back
    return False


class SignalGuard:
    """Turns SIGINT and SIGTERM into Interrupted: at once inside `interruptible()`, else at `check()`.

    A second signal while the first is being handled exits at once without clean-up (the trial is
    then recovered as stale: its worker is gone). A signal ignored when the guard starts stays
    ignored, as Python itself does for SIGINT: background jobs of scripts, and worker processes whose
    parent turns a terminal's Ctrl-C into SIGTERM for them.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():  # handlers can only live there
            for signum in SIGNALS:
                if signal.getsignal(signum) != signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
            self._previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._retry)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous:
            signal.setitimer(signal.ITIMER_REAL, 0)  # no retry pending once the default SIGALRM is back
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            print(f"second {signal.Signals(signum).name}: exiting without clean-up", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        self._retry(signal.SIGALRM, frame)

    def _retry(self, signum: int, frame: FrameType | None) -> None:
        """Raise now, unless training is inside an Optuna storage call (the pruner reading its peers):
        cut there, the process's replay of the journal would lose a record. Then try again shortly."""
        if not self.armed or self.signum is None:
            return
        if _inside(frame, ("optuna.", "sqlalchemy.")):
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            return
        self.armed = False
        raise Interrupted(self.signum)

    def check(self) -> None:
        """Raise Interrupted if a signal arrived."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block (training) that a signal interrupts at once."""
        self.check()
        self.armed = True
        try:
            yield
        finally:
            self.armed = False
