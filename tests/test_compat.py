"""Studies stored by an earlier version load, resume, report and export with this one."""

from __future__ import annotations

import shutil
from pathlib import Path

from mbv2_search.ledger import counts
from mbv2_search.search import load_context
from mbv2_search.storage import open_study
from tests.test_cli import run

STORED = Path(__file__).parent / "data" / "stored-v0.1"  # written by mbv2-search 0.1.0 (2 trials, journal)


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


FINGERPRINTS_0_1 = {  # sha256 prefixes of space_fingerprint as mbv2-search 0.1.0 computed them
    "ablation_bottleneck.yaml": "cecb32ce8a060bd0",
    "cifar10_gpu.yaml": "17e8d2f29e72c939",
    "paper_grid_digits.yaml": "236be1dd6e718446",
    "paper_grid_imagenet.yaml": "b7f00ffd72188eaa",
    "quickstart.yaml": "5f47979a02bbd8f1",
}


def test_shipped_studies_keep_the_fingerprints_of_0_1():
    """New knobs (per-row widths, repeats, squeeze-excite) and the convention's dropout leave them alone."""
    import hashlib

    from mbv2_search.storage import space_fingerprint

    studies = Path(__file__).parent.parent / "studies"
    for name, expected in FINGERPRINTS_0_1.items():
        fingerprint = space_fingerprint(load_context(studies / name))
        assert hashlib.sha256(fingerprint.encode()).hexdigest()[:16] == expected, name


def test_a_set_val_fraction_changes_the_fingerprint_and_unset_keeps_it(tmp_path):
    """Another validation split changes what val_acc means: a study that sets one is another study."""
    from mbv2_search.storage import space_fingerprint

    studies = Path(__file__).parent.parent / "studies"
    text = (studies / "quickstart.yaml").read_text().replace("../search_spaces/", f"{studies.parent}/search_spaces/")
    shifted = tmp_path / "shifted.yaml"
    shifted.write_text(text.replace("data: {dataset: digits}", "data: {dataset: digits, val_fraction: 0.2}"))
    fingerprint = space_fingerprint(load_context(shifted))
    assert '"val_fraction": 0.2' in fingerprint
    assert fingerprint.replace(', "val_fraction": 0.2', "") == space_fingerprint(
        load_context(studies / "quickstart.yaml")
    )
