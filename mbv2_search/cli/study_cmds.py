"""Commands on a study: run, worker, status, export, report."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from mbv2_search.cli.app import UserError, cli, console
from mbv2_search.cli.flags import no_study, stored_study, study_args, study_context
from mbv2_search.cli.views import SearchProgress, print_status


@cli.command()
@study_args
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    help="Local worker processes (default: the study's workers:); they split the CPU cores or take one GPU each.",
)
@click.option(
    "--workers-per-gpu",
    type=click.IntRange(1, 64),
    help="Workers on each visible GPU (default: the study's workers_per_gpu:); small candidates leave a GPU "
    "mostly idle. A worker that runs out of GPU memory beside others re-queues its trial and is not replaced. "
    "Overrides --workers where there are GPUs; ignored without one.",
)
def run(study_file: Path, storage: str | None, reports: Path, workers: int | None, workers_per_gpu: int | None) -> None:
    """Run a study to n_trials (resuming where it stopped), then print its Pareto front.

    A one-shot study (strategy: one-shot) first trains its supernet (once: it is stored with the study),
    searches over inherited accuracies, then retrains the front's points.

    Exit codes: 0 complete (or the space exhausted), 1 a failure of the environment (data, disk,
    storage) or a worker, 2 bad input, 3 trials left (timeout), 130 Ctrl-C, 143 SIGTERM; the running
    trials of an interrupted run are run again when you resume.
    """
    from mbv2_search.errors import TrainingError
    from mbv2_search.search import check_data, finish_line
    from mbv2_search.storage import StudyMismatch, open_study
    from mbv2_search.supervisor import supervise, worker_devices
    from mbv2_search.workers import work

    ctx = study_context(study_file, storage, reports=reports)
    check_data(ctx)
    try:
        study = open_study(ctx)
    except StudyMismatch as err:
        raise UserError(str(err)) from None
    workers, per_gpu = workers or ctx.study.workers, workers_per_gpu or ctx.study.workers_per_gpu
    training = ctx.study.training
    try:
        devices = worker_devices(training.device, workers, per_gpu=per_gpu, per_trial=training.devices_per_trial)
    except TrainingError as err:
        raise UserError(f"{study_file}: {err}") from None
    workers = len(devices)
    if ctx.study.strategy == "one-shot":
        _one_shot_phase(ctx, study, "supernet", workers=workers)
    view = SearchProgress(ctx, study)
    stopped, failures = "", []
    with view.progress, resumable():
        view.refresh()
        if workers == 1:
            stopped = work(ctx, on_event=view.on_event).stopped
        else:
            failures, stopped = supervise(
                ctx, workers, per_gpu=per_gpu, reports_root=reports, on_tick=view.refresh, on_note=console.print
            )
        view.refresh([])
    code, line = finish_line(ctx, study, stopped=stopped, failures=failures)
    if code == 0 and ctx.study.strategy == "one-shot" and ctx.study.one_shot.retrain != "none":
        _one_shot_phase(ctx, study, "retrain", workers=workers)
    print_status(ctx, study)
    finish(code, line)


def _one_shot_phase(ctx, study, phase: str, *, workers: int) -> None:
    """Before the search, train the supernet (unless stored); after it, retrain the front's points (those not
    retrained yet). Ctrl-C stops either with exit 130; the same command resumes."""
    from mbv2_search.devices import configure_cpu, rank_devices
    from mbv2_search.errors import TrainingError
    from mbv2_search.interrupts import Interrupted, SignalGuard, ignore_signals
    from mbv2_search.oneshot import ensure_supernet, retrain_front
    from mbv2_search.supervisor import worker_threads

    device = rank_devices(ctx.study.training.device)[0]
    if device.type == "cpu":  # a worker's share of the cores: small models train no faster on more (README)
        configure_cpu(worker_threads(workers))
    try:
        with SignalGuard() as guard, guard.interruptible():
            if phase == "retrain":
                retrain_front(ctx, study, device, say=console.print)
            else:
                ensure_supernet(ctx, study, device, progress=True, say=console.print)
    except Interrupted as err:
        ignore_signals()
        err.note = f": {_kept(ctx, phase)}; the same command goes on from there"
        raise
    except TrainingError as err:  # a retrained point's own failure is stored with it; others stop the phase
        what = "retraining the front" if phase == "retrain" else "the supernet's training"
        finish(1, f"{what} failed: {type(err).__name__}: {err}; {_kept(ctx, phase)}")


def _kept(ctx, phase: str) -> str:
    """What an interrupted one-shot phase leaves for the next run."""
    from mbv2_search.oneshot import resumed_epochs

    if phase == "retrain":
        return "the points retrained so far are kept"
    done = resumed_epochs(ctx)
    return f"the supernet's training is kept up to epoch {done['epochs']}" if done else "no supernet epoch had finished"


@contextlib.contextmanager
def resumable() -> Iterator[None]:
    """An interruption of a search says that its running trials will run again."""
    from mbv2_search.interrupts import Interrupted, ignore_signals

    try:
        yield
    except Interrupted as err:
        ignore_signals()
        err.note = ": running trials will run again when you resume"
        raise


def finish(code: int, line: str) -> None:
    """Print the run's closing line (if any) and exit with its code."""
    if line:
        click.echo(f"mbv2-search: {line}", err=True)
    if code:
        sys.exit(code)


@cli.command()
@study_args
@click.option("--device", default=None, help="Training device for this worker (default: the study's training.device).")
def worker(study_file: Path, storage: str | None, reports: Path, device: str | None) -> None:
    """Join an existing study as one more worker (from another shell or machine); exit codes as for run."""
    from mbv2_search.search import check_data, finish_line
    from mbv2_search.storage import StudyMismatch, open_study
    from mbv2_search.workers import work

    ctx = study_context(study_file, storage, reports=reports)
    check_data(ctx)
    try:
        with resumable():
            report = work(ctx, device=device or ctx.study.training.device)
    except StudyMismatch as err:
        raise UserError(str(err)) from None
    console.print(
        f"worker done: {report.ran} trials run, {report.failed} failed, {report.pruned} stopped early, "
        f"{report.duplicates} duplicates skipped, {report.recovered} trials of stopped workers re-queued"
    )
    finish(*finish_line(ctx, open_study(ctx), stopped=report.stopped))


@cli.command()
@study_args
def status(study_file: Path, storage: str | None, reports: Path) -> None:
    """Counts by state, the infeasible fraction and the Pareto front of a study."""

    ctx, study = stored_study(study_file, storage, reports=reports)
    print_status(ctx, study)


@cli.command()
@study_args
@click.option("--trial", "number", type=int, required=True, help="The trial number to export.")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default reports/<study>/export).")
@click.option(
    "--onnx",
    is_flag=True,
    help="Also write an ONNX model (needs the onnx and onnxscript packages: pip install 'mbv2-search[export]').",
)
def export(study_file: Path, storage: str | None, reports: Path, number: int, out: Path | None, onnx: bool) -> None:
    """Write a trial's block table (YAML for cost/arch/train --table), weights (torchvision layout), optionally ONNX."""
    from mbv2_search.export import NoWeights, export_trial

    ctx = study_context(study_file, storage, reports=reports)
    try:
        written = export_trial(ctx, number, out_dir=out, onnx=onnx)
    except NoWeights as err:
        click.echo(f"mbv2-search: error: {err}", err=True)
        sys.exit(1)
    except ImportError as err:
        raise UserError(f"--onnx needs the {err.name} package: pip install 'mbv2-search[export]'") from None
    except KeyError:
        raise no_study(study_file, ctx) from None
    except ValueError as err:
        raise UserError(str(err)) from None
    for kind, path in written.items():
        console.print(f"{kind}: {path}")


@cli.command()
@click.argument("study_files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=True))
@click.option("--storage", help="Optuna storage URL for every study (default: each study's own).")
@click.option(
    "--reports",
    type=click.Path(path_type=Path),
    default=Path("reports"),
    show_default=True,
    help="Root of the report folders.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Folder for report.html and summary.md (default reports/<study>, or reports/compare-<a>-<b> for several).",
)
def report(study_files: tuple[Path, ...], storage: str | None, reports: Path, out: Path | None) -> None:
    """Write report.html, trials.csv, pareto.csv and summary.md for one study, or overlay several."""
    from mbv2_search.report.build import study_data, write_report
    from mbv2_search.space import param_names

    studies, folders = [], []
    for path in study_files:
        ctx, study = stored_study(path, storage, reports=reports)
        config = ctx.study.model_dump(mode="json", exclude={"storage"})
        studies.append(
            study_data(
                ctx.study.name,
                study.get_trials(deepcopy=False),
                objectives=ctx.study.objectives,
                knobs=param_names(ctx.arch_file),
                config=config,
                study_attrs=study.user_attrs,
            )
        )
        folders.append(ctx.report_dir)
    names = [s.name for s in studies]
    out = out or (folders[0] if len(studies) == 1 else reports / ("compare-" + "-".join(names)))
    try:
        written = write_report(studies, study_dirs=folders, out_dir=out)
    except OSError as err:
        raise UserError(f"{err.filename or out}: cannot write the report ({err.strerror})") from None
    click.echo(f"wrote {len(written)} files:")  # plain lines: a long path is never wrapped
    for path in written.values():
        click.echo(f"  {path}")
