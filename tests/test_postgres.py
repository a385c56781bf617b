"""The RDB storage on a real PostgreSQL server: several workers share one study exactly."""

from __future__ import annotations

import os
import uuid
from collections import Counter

import pytest
from optuna.trial import TrialState

from mbv2_search.ledger import EXCLUDED, counts
from mbv2_search.search import load_context
from mbv2_search.storage import open_study
from mbv2_search.supervisor import start_workers
from tests.test_search import SPACE, write_study

URL = os.environ.get("MBV2_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(
    not URL,
    reason="no PostgreSQL configured: set MBV2_TEST_POSTGRES (bash scripts/with-postgres.sh starts one, as CI does)",
)


def run_workers(tmp_path, workers, **changes):
    path = write_study(tmp_path, name=f"pg-{uuid.uuid4().hex[:8]}", **changes)
    ctx = load_context(path, URL, reports_root=tmp_path / "reports")
    for process in start_workers(ctx, workers, reports_root=tmp_path / "reports"):
        process.join(timeout=600)
        assert process.exitcode == 0
    return ctx, open_study(ctx).get_trials()


def test_three_workers_reach_exactly_n_trials(tmp_path):
    ctx, trials = run_workers(tmp_path, 3, n_trials=6)
    state = counts(trials)
    assert state["complete"] == 6 and state["failed"] == 0 and state["running"] == 0
    numbers = [t.number for t in trials if t.state == TrialState.COMPLETE and EXCLUDED not in t.user_attrs]
    assert len(set(numbers)) == 6  # no duplicates


def test_grid_points_each_run_exactly_once(tmp_path):
    _, trials = run_workers(tmp_path, 2, n_trials=8, sampler={"name": "grid"})
    done = [t for t in trials if t.state == TrialState.COMPLETE and EXCLUDED not in t.user_attrs]
    points = Counter(tuple(sorted(t.params.items())) for t in done)
    grid = {
        (w, r, e)
        for w in SPACE["vary"]["width"]["choices"]
        for r in SPACE["vary"]["resolution"]["choices"]
        for e in SPACE["vary"]["expansion"]["choices"]
    }
    assert len(done) == 8 and set(points.values()) == {1}
    assert {(p["width"], p["resolution"], p["expansion"]) for p in (t.params for t in done)} == grid


def test_password_never_reaches_reports_or_attrs(tmp_path):
    ctx, trials = run_workers(tmp_path, 1, n_trials=1)
    stored = str(open_study(ctx).user_attrs) + str([t.user_attrs for t in trials])
    assert "postgresql" not in stored  # the storage URL is never written into the study


@pytest.mark.skipif(
    not os.environ.get("MBV2_TEST_PG_STOP"),
    reason="needs a server this test may stop and start (scripts/with-postgres.sh)",
)
def test_storage_going_away_mid_study_is_one_line_and_resumable(tmp_path):
    import subprocess
    import sys
    import time

    from tests.test_crash import wait_for

    path = write_study(
        tmp_path,
        name=f"pg-{uuid.uuid4().hex[:8]}",
        n_trials=4,
        training={"epochs": 3, "batch_size": 256, "device": "cpu"},
    )
    ctx = load_context(path, URL, reports_root=tmp_path / "reports")
    command = [
        sys.executable,
        "-m",
        "mbv2_search",
        "run",
        path,
        "--storage",
        URL,
        "--reports",
        str(tmp_path / "reports"),
    ]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def one_done_one_running():
        try:
            states = [t.state for t in open_study(ctx, create=False).get_trials(deepcopy=False)]
        except Exception:
            return False
        return TrialState.COMPLETE in states and states[-1] == TrialState.RUNNING

    assert wait_for(one_done_one_running)
    before = {t.number: t.datetime_complete for t in open_study(ctx).get_trials() if t.state == TrialState.COMPLETE}
    subprocess.run(os.environ["MBV2_TEST_PG_STOP"], shell=True, check=True)
    try:
        _, err = run.communicate(timeout=120)
    finally:
        subprocess.run(os.environ["MBV2_TEST_PG_START"], shell=True, check=True)
    assert run.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert "storage is unreachable" in err and "run the same command again to resume" in err
    time.sleep(3 * ctx.study.heartbeat_seconds + 0.5)
    from mbv2_search.workers import work

    work(ctx)
    trials = open_study(ctx).get_trials()
    assert counts(trials)["complete"] == 4
    assert all(t.datetime_complete == before[t.number] for t in trials if t.number in before)  # nothing lost or redone
