"""Real processes, real signals: Ctrl-C and SIGTERM inside Lightning's loop, a killed worker, several workers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
from optuna.trial import TrialState

from mbv2_search import ledger
from mbv2_search.search import load_context
from mbv2_search.storage import open_study
from tests.test_crash import storages, wait_for
from tests.test_search import SPACE, write_study

pytestmark = pytest.mark.usefixtures("terminal_sigint")  # children inherit a SIGINT that is not ignored

SLOW = {"epochs": 200, "batch_size": 32, "device": "cpu"}  # minutes of training: a signal always lands inside it


def start_run(tmp_path, *extra, storage=None, **changes):
    """`mbv2-search run` in its own process group, as a terminal starts it; returns (process, context)."""
    path = write_study(tmp_path, **changes)
    reports = tmp_path / "reports"
    command = [sys.executable, "-m", "mbv2_search", "run", path, "--reports", str(reports), *extra]
    command += ["--storage", storage] if storage else []
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    return process, load_context(path, storage, reports_root=reports)


def trials(ctx):
    try:
        return open_study(ctx, create=False).get_trials(deepcopy=False)
    except Exception:  # not created yet, or a record being written
        return []


def training(ctx, count):
    """`count` trials are RUNNING and inside training (their run folders exist)."""
    running = [t for t in trials(ctx) if t.state == TrialState.RUNNING and ledger.counted(t)]
    return len(running) >= count and all((ctx.report_dir / "trials" / f"{t.number:05d}").exists() for t in running)


def finish(process, timeout=120):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_inside_training_requeues_the_trial_and_exits_128_plus_n(tmp_path, signum, code):
    process, ctx = start_run(tmp_path, n_trials=2, training=SLOW)
    assert wait_for(lambda: training(ctx, 1)), process.stderr.read() if process.poll() is not None else "timed out"
    os.killpg(process.pid, signum)  # Ctrl-C reaches the whole foreground group
    returncode, _, err = finish(process)
    assert returncode == code
    assert f"interrupted by {signal.Signals(signum).name}: running trials will run again when you resume" in err
    assert "Traceback" not in err
    stored = trials(ctx)
    assert not [t for t in stored if t.state == TrialState.RUNNING]
    interrupted = stored[0]
    assert interrupted.state == TrialState.FAIL and not ledger.counted(interrupted)
    assert f"interrupted by {signal.Signals(signum).name}" in interrupted.user_attrs[ledger.EXCLUDED]
    retry = stored[1]
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0
    assert ledger.budget(stored).done == 0


@pytest.mark.parametrize(
    ("signum", "group", "code"), [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)], ids=["ctrl-c", "sigterm"]
)
def test_interrupting_several_workers_leaves_nothing_running(tmp_path, signum, group, code):
    process, ctx = start_run(tmp_path, "--workers", "2", n_trials=4, training=SLOW)
    assert wait_for(lambda: training(ctx, 2)), process.stderr.read() if process.poll() is not None else "timed out"
    if group:
        os.killpg(process.pid, signum)  # a terminal's Ctrl-C: parent and workers alike
    else:
        os.kill(process.pid, signum)  # kill PID, a scheduler's stop: the parent alone
    returncode, _, err = finish(process)
    assert returncode == code and "Traceback" not in err
    stored = trials(ctx)
    assert not [t for t in stored if t.state == TrialState.RUNNING]
    assert ledger.budget(stored).done == 0 and ledger.counts(stored)["waiting"] == 2
    no_orphans = lambda: subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True).returncode == 1  # noqa: E731
    assert wait_for(no_orphans, timeout=10)


@pytest.mark.parametrize("storage", storages(), ids=["journal", "postgresql"])
def test_a_killed_worker_is_noticed_at_once_and_its_trial_runs_in_the_same_run(tmp_path, storage):
    space = {
        **SPACE,
        "vary": {
            "width": {"choices": [0.5, 1.0]},
            "resolution": {"choices": [8, 12]},
            "expansion": {"choices": [2, 4]},
        },
    }
    process, ctx = start_run(
        tmp_path,
        "--workers",
        "2",
        storage=storage,
        name=f"killed-{uuid.uuid4().hex[:8]}",
        n_trials=5,
        space=space,
        training={"epochs": 6, "batch_size": 64, "device": "cpu"},
    )
    assert wait_for(lambda: training(ctx, 1)), process.stderr.read() if process.poll() is not None else "timed out"
    victim = next(
        t
        for t in trials(ctx)
        if t.state == TrialState.RUNNING and (ctx.report_dir / "trials" / f"{t.number:05d}").exists()
    )  # a worker in the middle of training
    pid = int(victim.user_attrs[ledger.WORKER].rpartition(":")[2])
    os.kill(pid, signal.SIGKILL)
    returncode, out, err = finish(process, timeout=300)
    assert returncode == 0, err
    assert f"worker {pid} was killed by SIGKILL; trial {victim.number} will run again" in out
    stored = trials(ctx)
    counted = [t for t in stored if ledger.counted(t)]
    assert len(counted) == 5 and all(t.state == TrialState.COMPLETE for t in counted)
    assert len({ledger.candidate_key(t.params) for t in counted}) == 5  # two workers, no candidate twice
    trained = [t for t in stored if t.user_attrs.get("trained")]
    assert len(trained) == 5  # nothing trained twice: duplicates stood down before training
    retry = next(t for t in stored if t.user_attrs.get("retry_of") == victim.number)
    assert retry.params == victim.params and retry.state == TrialState.COMPLETE


def test_data_vanishing_under_several_workers_stops_the_run_with_nothing_counted(tmp_path):
    from tests.test_data import write_cifar

    data = write_cifar(tmp_path / "data")
    process, ctx = start_run(tmp_path, "--workers", "2", data={"dataset": "cifar10", "dir": str(data)})
    journal = ctx.report_dir / "study.journal"
    assert wait_for(journal.exists, every=0.01)  # checked and created: the workers are starting
    shutil.rmtree(data)  # the disk holding the data is unmounted
    returncode, _, err = finish(process)
    assert returncode == 1 and "Traceback" not in err
    assert "error: " in err and "cifar-10-batches-py" in err
    assert "3 of 3 trials left (worker " in err and "exited with code 1); run the same command to resume" in err
    stored = trials(ctx)
    assert ledger.budget(stored).done == 0 and not [t for t in stored if t.state == TrialState.RUNNING]


def test_a_second_ctrl_c_exits_130_without_a_traceback_and_leaves_a_recoverable_study(tmp_path):
    process, ctx = start_run(tmp_path, n_trials=2, training=SLOW)
    assert wait_for(lambda: training(ctx, 1)), process.stderr.read() if process.poll() is not None else "timed out"
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.01)  # an impatient user: the second lands during the clean-up, or after it
    os.killpg(process.pid, signal.SIGINT)
    returncode, _, err = finish(process)
    assert returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err
    ledger.recover_stale(open_study(ctx), grace_seconds=3600)  # what the next run does first
    stored = trials(ctx)
    assert not [t for t in stored if t.state == TrialState.RUNNING]
    assert [t.user_attrs.get("retry_of") for t in stored if t.state == TrialState.WAITING] == [0]


def test_workers_stop_and_requeue_when_their_parent_is_killed(tmp_path):
    process, ctx = start_run(tmp_path, "--workers", "2", n_trials=4, training=SLOW)
    assert wait_for(lambda: training(ctx, 2)), process.stderr.read() if process.poll() is not None else "timed out"
    os.kill(process.pid, signal.SIGKILL)  # the OOM killer, or kill -9, takes the parent
    process.wait()
    no_orphans = lambda: subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True).returncode == 1  # noqa: E731
    assert wait_for(no_orphans, timeout=30)
    stored = trials(ctx)
    assert not [t for t in stored if t.state == TrialState.RUNNING] and ledger.counts(stored)["waiting"] == 2
