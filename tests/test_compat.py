"""Studies stored by an earlier version load, resume, report and export with this one."""

from __future__ import annotations

import shutil
from pathlib import Path

from mbv2_search.cli import main
from mbv2_search.ledger import counts
from mbv2_search.search import load_context
from mbv2_search.storage import open_study

STORED = Path(__file__).parent / "data" / "stored-v0.1"  # written by mbv2-search 0.1.0 (2 trials, journal)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_a_study_stored_by_0_1_loads_resumes_reports_and_exports(tmp_path, capsys, monkeypatch):
    shutil.copytree(STORED, tmp_path / "study")
    monkeypatch.chdir(tmp_path / "study")
    code, out, err = run(capsys, "status", "study.yaml")
    assert code == 0 and "2 of 2 trials counted" in out, err
    code, out, err = run(capsys, "export", "study.yaml", "--trial", "1")
    assert code == 0 and "weights" in out, err
    study_file = Path("study.yaml")
    study_file.write_text(study_file.read_text().replace("n_trials: 2", "n_trials: 3"))
    code, out, err = run(capsys, "run", "study.yaml")  # the same fingerprint: resumes, no mismatch
    assert code == 0, err
    state = counts(open_study(load_context("study.yaml")).get_trials(deepcopy=False))
    assert state["complete"] == 3 and state["excluded"] == 0
    code, out, err = run(capsys, "report", "study.yaml")
    assert code == 0 and Path("reports/stored-v0.1/report.html").is_file(), err
