"""Malformed study and space files: one line naming the file and key, exit 2, nothing stored."""

from __future__ import annotations

import pytest
import yaml

from mbv2_search.cli import main

GOOD_SPACE = {"knobs": {"num_classes": 10}, "vary": {"width": {"choices": [0.5, 1.0]}, "resolution": {"choices": [32]}}}
GOOD_STUDY = {
    "name": "hostile",
    "space": GOOD_SPACE,
    "data": {"dataset": "digits"},
    "training": {"epochs": 1},
    "n_trials": 2,
}


def study_with(**changes):
    study = {**GOOD_STUDY, **changes}
    return yaml.safe_dump({k: v for k, v in study.items() if v is not None}).encode()


def space_with(**changes):
    return study_with(space={**GOOD_SPACE, **changes})


BOMB = b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n"

CASES = {
    "empty file": (b"", "empty file"),
    "top-level list": (b"- name: x\n", "expected a YAML mapping"),
    "invalid YAML": (b"name: [x\n", "invalid YAML"),
    "non-UTF-8 bytes": (b"name: \xff\xfe\n", "not UTF-8"),
    "alias bomb": (BOMB, "aliases expand to more than 100,000 values"),
    "python tag": (b"name: !!python/object/apply:os.system [echo pwned]\n", "invalid YAML"),
    "study name '..'": (study_with(name=".."), "name: got '..'; allowed: 1 to 100 letters"),
    "study name '.'": (study_with(name="."), "name: got '.'; allowed"),
    "empty study name": (study_with(name=""), "name: got ''; allowed"),
    "study name with a slash": (study_with(name="a/b"), "name: got 'a/b'; allowed"),
    "unknown top-level key": (
        study_with(trainig={"epochs": 1}),
        "trainig: unknown key 'trainig'; did you mean 'training'?",
    ),
    "n_trials as text": (study_with(n_trials="ten"), "n_trials: got 'ten'"),
    "n_trials zero": (study_with(n_trials=0), "n_trials: got 0"),
    "negative epochs": (study_with(training={"epochs": -1}), "training.epochs: got -1"),
    "zero batch": (study_with(training={"batch_size": 0}), "training.batch_size: got 0"),
    "unknown recipe": (study_with(training={"recipe": "magic"}), "training.recipe: got 'magic'"),
    "unknown recipe override": (
        study_with(training={"overrides": {"learning_rate": 0.1}}),
        "training.overrides.learning_rate: unknown key",
    ),
    "no objectives": (study_with(objectives=[]), "objectives: got []"),
    "duplicate objectives": (study_with(objectives=["val_acc", "val_acc"]), "each objective may appear once"),
    "unknown objective": (study_with(objectives=["val_acc", "flops"]), "objectives[1]: got 'flops'"),
    "constraint on unknown cost": (study_with(constraints={"flops": 1e6}), "constraints.flops: unknown key 'flops'"),
    "negative constraint": (study_with(constraints={"madds": -5}), "a positive upper bound"),
    "constraint not a number": (study_with(constraints={"madds": "lots"}), "constraints: madds: got 'lots'"),
    "impossible constraint": (
        study_with(constraints={"madds": 1000}),
        "constraints.madds: no candidate in the space has madds <= 1000",
    ),
    "width zero": (space_with(knobs={"width": 0}), "space.knobs.width: got 0"),
    "resolution below total stride": (
        space_with(knobs={"resolution": 8}, vary={"width": {"choices": [1.0]}}),
        "space.knobs.resolution: got 8; allowed: >= 17",
    ),
    "empty choices": (space_with(vary={"width": {"choices": []}}), "choices: must list at least one value"),
    "low above high": (space_with(vary={"width": {"low": 1.0, "high": 0.5}}), "low 1.0 is above high 0.5"),
    "per_row on width": (
        space_with(vary={"width": {"choices": [1.0], "per_row": True}}),
        "per_row is allowed only for expansion, strides, kernels, row_widths, repeats",
    ),
    "unknown varied knob": (
        space_with(vary={"widht": {"choices": [1.0]}}),
        "space.vary.widht: unknown key 'widht'; did you mean 'width'?",
    ),
    "stride 3 in table": (
        space_with(table={"rows": [{"t": 6, "c": 16, "n": 1, "s": 3}]}),
        "space.table.rows[0].s: got 3; allowed: 1 or 2",
    ),
    "unknown sampler": (study_with(sampler={"name": "cmaes"}), "sampler.name: got 'cmaes'"),
    "unknown sampler option": (
        study_with(sampler={"name": "tpe", "options": {"n_startup": 5}}),
        "sampler.options.n_startup: unknown key 'n_startup'; did you mean 'n_startup_trials'?",
    ),
    "baseline outside the space": (study_with(baselines=[{"width": 3.0}]), "baselines[0].width: got 3.0"),
    "baseline unknown knob": (study_with(baselines=[{"depth": 1.0}]), "baselines[0].depth: unknown key 'depth'"),
    "space file missing": (study_with(space="nowhere.yaml"), "space: got 'nowhere.yaml'; no such file"),
    "space of the wrong type": (study_with(space=42), "space: got 42"),
    "name with a path": (study_with(name="../escape"), "name: got '../escape'"),
    "unknown dataset": (study_with(data={"dataset": "mnist"}), "data.dataset: got 'mnist'"),
    "zero heartbeat": (study_with(heartbeat_seconds=0), "heartbeat_seconds: got 0"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_malformed_study_is_one_line_exit_2_and_nothing_stored(tmp_path, capsys, case):
    text, needle = CASES[case]
    path = tmp_path / "study.yaml"
    path.write_bytes(text)
    reports = tmp_path / "reports"
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(path), "--reports", str(reports)])
    captured = capsys.readouterr()
    assert exit_.value.code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert str(path) in lines[0] and needle in lines[0], lines[0]
    assert not reports.exists()  # nothing written to any storage


def test_a_directory_instead_of_a_study(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(tmp_path), "--reports", str(tmp_path / "reports")])
    assert exit_.value.code == 2 and "is a directory" in capsys.readouterr().err


def test_password_in_a_study_file_is_refused_and_not_echoed(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_bytes(study_with(storage="postgresql://user:hunter2@db.example/mbv2"))
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(path), "--reports", str(tmp_path / "reports")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "storage: a password in a study file is refused" in err and "hunter2" not in err


def test_storage_urls_are_masked():
    from mbv2_search.errors import mask_url as _mask

    assert _mask("postgresql+psycopg://mbv2:s3cret@host:5432/db") == "postgresql+psycopg://mbv2:***@host:5432/db"
    assert _mask("journal:reports/x/study.journal") == "journal:reports/x/study.journal"
