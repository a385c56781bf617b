"""Crash safety, tested: SIGKILL mid-trial, resume; memory across many trials; unwritable output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from optuna.trial import TrialState

from mbv2_search.ledger import CANDIDATE, EXCLUDED, counts
from mbv2_search.search import load_context
from mbv2_search.storage import open_study
from mbv2_search.workers import work
from tests.test_search import write_study


def storages():
    """The default journal file always; PostgreSQL where MBV2_TEST_POSTGRES names one."""
    url = os.environ.get("MBV2_TEST_POSTGRES")
    reason = "no PostgreSQL configured: set MBV2_TEST_POSTGRES (bash scripts/with-postgres.sh starts one, as CI does)"
    return [None, pytest.param(url, marks=pytest.mark.skipif(not url, reason=reason), id="postgresql")]


def wait_for(predicate, timeout=120.0, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


@pytest.mark.parametrize("storage", storages(), ids=["journal", "postgresql"])
def test_sigkill_mid_trial_then_resume(tmp_path, storage):
    name = f"crash-{uuid.uuid4().hex[:8]}"
    path = write_study(tmp_path, name=name, n_trials=4, training={"epochs": 4, "batch_size": 256, "device": "cpu"})
    reports = tmp_path / "reports"
    ctx = load_context(path, storage, reports_root=reports)
    command = [sys.executable, "-m", "mbv2_search", "worker", path, "--reports", str(reports)] + (
        ["--storage", storage] if storage else []
    )
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:

        def one_done_one_running():
            try:
                trials = open_study(ctx, create=False).get_trials(deepcopy=False)
            except Exception:  # not created yet
                return False
            states = [t.state for t in trials]
            return (
                TrialState.COMPLETE in states
                and states[-1] == TrialState.RUNNING
                and CANDIDATE in trials[-1].user_attrs  # its knobs are chosen: it is training
            )

        assert wait_for(one_done_one_running), (
            worker.stderr.read().decode() if worker.poll() is not None else "timed out"
        )
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
    before = {t.number: t for t in open_study(ctx).get_trials()}
    killed = [t for t in before.values() if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    time.sleep(3 * ctx.study.heartbeat_seconds + 0.5)  # its heartbeat goes stale
    report = work(ctx)
    after = {t.number: t for t in open_study(ctx).get_trials()}
    assert report.recovered == 1
    for number, trial in before.items():
        if trial.state == TrialState.COMPLETE:  # not lost, not retrained
            assert (
                after[number].state == TrialState.COMPLETE
                and after[number].datetime_complete == trial.datetime_complete
            )
    victim = after[killed[0].number]
    assert victim.state == TrialState.FAIL and "stale" in victim.user_attrs[EXCLUDED]
    retries = [t for t in after.values() if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == victim.params
    assert counts(list(after.values()))["complete"] == 4


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.slow
def test_many_trials_in_one_process_do_not_leak(tmp_path):
    space = {
        "knobs": {"num_classes": 10},
        "vary": {"width": {"choices": [0.25, 0.35]}, "resolution": {"choices": [17, 20]}},
    }
    ctx = load_context(
        write_study(tmp_path, space=space, n_trials=5, training={"epochs": 1, "batch_size": 512, "device": "cpu"}),
        reports_root=tmp_path / "r",
    )
    work(ctx)
    after_5 = _rss_kib()
    ctx.study = ctx.study.model_copy(update={"n_trials": 30})
    work(ctx)
    after_30 = _rss_kib()
    assert after_30 <= after_5 * 1.10, (
        f"resident memory grew from {after_5} KiB after 5 trials to {after_30} KiB after 30"
    )


def test_unwritable_report_folder_is_a_clear_error(tmp_path, capsys):
    from mbv2_search.cli import main

    blocker = tmp_path / "reports"
    blocker.write_text("a file where the report folder should be")
    with pytest.raises(SystemExit) as exit_:
        main(["run", write_study(tmp_path), "--reports", str(blocker)])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and len(err.strip().splitlines()) == 1 and "cannot write" in err


def test_drop_torn_tail_cuts_only_an_unfinished_record(tmp_path):
    from mbv2_search.journal import drop_torn_tail

    path = tmp_path / "journal"
    path.write_bytes(b'{"a":1}\n{"b":2}\n')
    assert drop_torn_tail(str(path)) == 0 and path.read_bytes() == b'{"a":1}\n{"b":2}\n'
    path.write_bytes(b'{"a":1}\n{"b":' + b"x" * 200_000)  # torn record longer than the read chunk
    assert drop_torn_tail(str(path)) == 200_005 and path.read_bytes() == b'{"a":1}\n'
    path.write_bytes(b'{"a":')
    assert drop_torn_tail(str(path)) == 5 and path.read_bytes() == b""


def test_a_torn_journal_record_is_dropped_and_the_study_resumes(tmp_path):
    path = write_study(tmp_path, n_trials=2)
    ctx = load_context(path, reports_root=tmp_path / "reports")
    work(ctx)
    before = {t.number: t.datetime_complete for t in open_study(ctx).get_trials()}
    journal = ctx.report_dir / "study.journal"
    with open(journal, "ab") as f:  # what a write cut short by a full disk leaves
        f.write(b'{"op_code":8,"worker_id":"w","trial_id":1,"user_attr":{"ver')
    ctx = load_context(write_study(tmp_path, n_trials=3), reports_root=tmp_path / "reports")
    work(ctx)
    after = open_study(ctx).get_trials()
    assert counts(after)["complete"] == 3
    assert {t.number: t.datetime_complete for t in after if t.number in before} == before


def test_disk_full_mid_study_exits_1_and_resumes_when_space_is_back(tmp_path, capsys):
    from mbv2_search.cli import main

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root) to fill a disk")
    try:
        reports = str(disk / "reports")
        main(["run", write_study(tmp_path, n_trials=2), "--reports", reports])
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
        with pytest.raises(SystemExit) as exit_:
            main(["run", write_study(tmp_path, n_trials=4), "--reports", reports])
        assert exit_.value.code == 1 and "No space left on device" in capsys.readouterr().err
        filler.unlink()
        time.sleep(2)  # past the heartbeat grace (3 x 0.5 s): a trial left running is stale
        main(["run", write_study(tmp_path, n_trials=4), "--reports", reports])
        ctx = load_context(write_study(tmp_path, n_trials=4), reports_root=reports)
        assert counts(open_study(ctx).get_trials())["complete"] == 4
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
