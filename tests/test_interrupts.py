"""SignalGuard: SIGINT and SIGTERM raise Interrupted inside interruptible blocks, wait for check() outside."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mbv2_search.interrupts import Interrupted, SignalGuard


def test_a_signal_inside_an_interruptible_block_raises_at_once():
    with SignalGuard() as guard, pytest.raises(Interrupted) as raised, guard.interruptible():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert raised.value.exit_code == 143


def test_a_signal_outside_waits_for_the_next_check(terminal_sigint):
    with SignalGuard() as guard:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # bookkeeping goes on undisturbed
        assert guard.signum == signal.SIGINT
        with pytest.raises(Interrupted) as raised:
            guard.check()
    assert raised.value.exit_code == 130


def test_handlers_are_restored_and_an_ignored_signal_stays_ignored():
    before = signal.getsignal(signal.SIGTERM)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a script's background job, or a worker process
    try:
        with SignalGuard():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) != before
        assert signal.getsignal(signal.SIGTERM) == before
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_signal_during_a_storage_call_waits_until_the_call_returns():
    finished = []
    storage_call = {"__name__": "optuna.storages.fake", "os": os, "signal": signal, "time": time, "finished": finished}
    exec(  # a function that Python sees as Optuna's own code, like a journal replay in the pruner
        "def write():\n    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(0.2)\n    finished.append(True)\n",
        storage_call,
    )
    with SignalGuard() as guard, pytest.raises(Interrupted), guard.interruptible():
        storage_call["write"]()
        assert finished == [True]  # the call ran to its end
        time.sleep(5)  # the retry raises here
