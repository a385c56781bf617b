"""The search: storage, sampler, objective, constraints, workers, heartbeats and resume."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mbv2_search import __version__, space
from mbv2_search.arch import ArchError, build_spec
from mbv2_search.config import DATASET_CLASSES, OBJECTIVES, ArchFile, StudyFile, load_study
from mbv2_search.cost import costs

optuna.logging.set_verbosity(optuna.logging.WARNING)

EXCLUDED = "excluded"  # user attr on trials that do not count: stale, interrupted or surplus (reason as value)
DUPLICATE = "duplicate_of"  # user attr on trials whose knobs and seed an earlier trial already trained
# what a duplicate takes from the trial it repeats (its costs it computes itself)
REUSED = ("val_acc", "test_acc", "val_acc_history", "device", "hardware", "memory_format", "run_dir", "checkpoint")


@dataclass
class Context:
    """A loaded study file and where its study lives."""

    path: Path
    study: StudyFile
    arch_file: ArchFile
    storage_url: str
    report_dir: Path

    @property
    def directions(self) -> list[str]:
        """Optuna directions of the objectives."""
        return [OBJECTIVES[name] for name in self.study.objectives]


def default_storage(report_dir: Path) -> str:
    """A journal file: safe for several local processes at once (file lock), no 'database is locked'."""
    return f"journal:{report_dir / 'study.journal'}"


def load_context(path: str | Path, storage: str | None = None, reports_root: str | Path = "reports") -> Context:
    """Load a study file; storage comes from the flag, then MBV2_STORAGE, then the file, then the default."""
    study, arch_file = load_study(path)
    report_dir = Path(reports_root) / study.name
    url = storage or os.environ.get("MBV2_STORAGE") or study.storage or default_storage(report_dir)
    return Context(Path(path), study, arch_file, url, report_dir)


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL: 'journal:PATH' or an RDB URL (postgresql://, sqlite://)."""
    if url.startswith("journal:"):
        from mbv2_search.journal import SafeJournalFile

        file_path = Path(url.removeprefix("journal:"))
        file_path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(SafeJournalFile(str(file_path)))
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def make_sampler(ctx: Context) -> optuna.samplers.BaseSampler:
    """The study's sampler; Optuna 5 reads constraints from trial.set_constraint, not constraints_func."""
    config = ctx.study.sampler
    options = dict(config.options)
    if config.name == "grid":
        return _GridSampler(options.get("grid") or space.grid(ctx.arch_file), seed=config.seed)
    if config.name == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    if config.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=config.seed, **options)
    if config.name == "gp":
        return optuna.samplers.GPSampler(seed=config.seed, **options)
    return optuna.samplers.TPESampler(seed=config.seed, **options)


def space_fingerprint(ctx: Context) -> str:
    """What makes trials comparable: the space, data, training budget and objectives."""
    study = ctx.study
    return json.dumps(
        {
            "space": ctx.arch_file.model_dump(exclude={"name", "description"}),
            "data": study.data.dataset,
            "training": study.training.model_dump(exclude={"device", "precision"}),
            "objectives": study.objectives,
            "constraints": study.constraints,
        },
        sort_keys=True,
    )


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler for an ask/tell loop: it calls study.stop() when the grid is done, which only works
    inside study.optimize; our workers stop at n_trials instead."""

    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[override]
        with contextlib.suppress(RuntimeError):  # study.stop() is its last statement
            super().after_trial(study, trial, state, values)


class StudyMismatch(ValueError):
    """The study file changed in a way that makes stored trials incomparable."""


def open_study(ctx: Context, *, create: bool = True) -> optuna.Study:
    """Create or load the study; refuse a stored study whose space differs from the file's."""
    name = ctx.study.name
    if (
        not create
        and ctx.storage_url.startswith("journal:")
        and not Path(ctx.storage_url.removeprefix("journal:")).exists()
    ):
        raise KeyError(name)  # reading a study that was never run must not create its folder
    storage = make_storage(ctx.storage_url)
    if not create:
        return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(ctx))
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=make_sampler(ctx), directions=ctx.directions, load_if_exists=True
    )
    fingerprint = space_fingerprint(ctx)
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("study_file", ctx.study.model_dump(mode="json", exclude={"storage"}))
        for baseline in ctx.study.baselines:
            study.enqueue_trial(baseline, user_attrs={"baseline": True}, skip_if_exists=True)
    elif stored != fingerprint:
        raise StudyMismatch(
            f"{ctx.path}: the stored study '{name}' was run with a different space, data, budget, objectives or constraints; "
            f"rename the study (name:) or choose another storage to start a new one"
        )
    return study


def counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """Trials by state, with excluded ones (stale, interrupted, surplus) apart; of the complete ones,
    how many were infeasible (never trained) and how many duplicates (an earlier trial's result reused)."""
    out = {
        key: 0 for key in ("complete", "infeasible", "duplicate", "pruned", "failed", "running", "waiting", "excluded")
    }
    for t in trials:
        if EXCLUDED in t.user_attrs:
            out["excluded"] += 1
        elif t.state == TrialState.COMPLETE:
            out["complete"] += 1
            out["infeasible"] += not t.user_attrs.get("feasible", True)
            out["duplicate"] += DUPLICATE in t.user_attrs
        elif t.state == TrialState.PRUNED:
            out["pruned"] += 1
        elif t.state == TrialState.FAIL:
            out["failed"] += 1
        elif t.state == TrialState.RUNNING:
            out["running"] += 1
        elif t.state == TrialState.WAITING:
            out["waiting"] += 1
    return out


def _budget_used(trials: list[optuna.trial.FrozenTrial], below: int | None = None) -> int:
    """Trials that count towards n_trials: finished or running, not excluded."""
    live = (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING, TrialState.PRUNED)
    return sum(
        1 for t in trials if t.state in live and EXCLUDED not in t.user_attrs and (below is None or t.number < below)
    )


def recover_stale(study: optuna.Study, grace_seconds: float) -> list[int]:
    """Fail RUNNING trials whose heartbeat stopped (a killed worker) and enqueue them to run again."""
    now = time.time()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else now)
        if now - beat > grace_seconds:
            _exclude(study, t._trial_id, "stale: its worker stopped sending heartbeats")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            recovered.append(t.number)
    return recovered


def _exclude(study: optuna.Study, trial_id: int, reason: str) -> None:
    study._storage.set_trial_user_attr(trial_id, EXCLUDED, reason)


class Heartbeat:
    """Writes a timestamp to the running trial every few seconds, so other workers can tell it is alive."""

    def __init__(self, trial: optuna.Trial, seconds: float) -> None:
        self.trial, self.seconds = trial, seconds
        self.stop_event = threading.Event()
        trial.set_user_attr("heartbeat", time.time())
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stop_event.wait(self.seconds):
            with contextlib.suppress(Exception):  # a storage hiccup must not kill training; the next beat retries
                self.trial.set_user_attr("heartbeat", time.time())

    def stop(self) -> None:
        """Stop beating."""
        self.stop_event.set()
        self.thread.join()


class Evaluator:
    """Turns one Optuna trial into costs, a feasibility verdict and, if feasible, a trained result."""

    def __init__(self, ctx: Context, device: str) -> None:
        self.ctx, self.device = ctx, device
        self._data: dict[int, Any] = {}

    def _latency_table(self) -> Any:
        """The study's latency table (a path relative to the study file), loaded once."""
        from mbv2_search.latency import LatencyTable

        path = self.ctx.study.latency.table
        if path is None:
            return None
        if not hasattr(self, "_table"):
            self._table = LatencyTable.load(self.ctx.path.parent / path)
        return self._table

    def _dataset(self, resolution: int, torch_device: Any) -> Any:
        from mbv2_search.data import load_dataset

        if resolution not in self._data:
            config = self.ctx.study.data
            self._data = {
                resolution: load_dataset(config.dataset, resolution, torch_device, config.dir, config.workers)
            }
        return self._data[resolution]

    def __call__(self, trial: optuna.Trial) -> list[float]:
        from dataclasses import replace

        from mbv2_search.cost import fvcore_count, measure_latency_ms
        from mbv2_search.train import hardware_name, resolve_device, train

        study = self.ctx.study
        knobs = space.suggest_knobs(trial, self.ctx.arch_file)
        seed = space.suggest_seed(trial, self.ctx.arch_file, study.training.seed)
        torch_device = resolve_device(self.device if self.device != "auto" else study.training.device)
        # the class count without loading data where it is known: infeasible candidates load nothing
        classes = DATASET_CLASSES.get(study.data.dataset) or self._dataset(knobs.resolution, torch_device).num_classes
        spec = build_spec(replace(knobs, num_classes=classes), self.ctx.arch_file.to_table())
        cost = costs(spec)
        measured: dict[str, float] = {
            "madds": cost.madds,
            "params": cost.params,
            "peak_activation_bytes": cost.peak_activation_bytes,
        }
        latency_source = None
        if "latency_ms" in study.objectives or "latency_ms" in study.constraints:
            lookup = self._latency_table()
            if lookup is not None and not lookup.missing(spec):
                measured["latency_ms"], latency_source = lookup.predict(spec), "predicted"
            else:  # no table, or it lacks a unit of this candidate: measure the whole network
                measured["latency_ms"] = measure_latency_ms(
                    spec, str(torch_device), study.latency.repeats, study.latency.warmup
                )
                latency_source = "measured"
        attrs = {
            "knobs": spec.knobs.as_dict(),
            "blocks": [
                [b.row, b.t, b.in_channels, b.hidden_channels, b.out_channels, b.stride, b.kernel, b.in_size]
                for b in spec.blocks
            ],
            "bn_params": cost.bn_params,
            "version": __version__,
            "seed": seed,
            "latency_source": latency_source,
            **measured,
        }
        feasible = True
        for name, bound in study.constraints.items():
            trial.set_constraint(name, measured[name] - bound)  # <= 0 is feasible (Optuna 5)
            feasible &= measured[name] <= bound
        attrs["feasible"] = feasible
        if not feasible:  # known before building anything: never trained
            attrs["trained"] = False
            _set_attrs(trial, attrs)
            return _values(study.objectives, 0.0, measured)

        original = _trained_twin(trial)
        if original is not None:  # samplers re-propose points in small spaces: reuse, never retrain
            return self._reuse(trial, original, attrs, measured)

        data = self._dataset(knobs.resolution, torch_device)
        run_dir = self.ctx.report_dir / "trials" / f"{trial.number:05d}"
        pruner = None
        cost_objectives = {name: measured[name] for name in study.objectives if name != "val_acc"}
        if study.pruning.enabled and cost_objectives:
            from mbv2_search.pruning import RungPruner

            pruner = RungPruner(trial.study, trial, cost_objectives, study.pruning, study.training.epochs)
        result = train(
            spec,
            data,
            epochs=study.training.epochs,
            batch_size=study.training.batch_size,
            recipe=study.training.recipe_model(),
            seed=seed,
            run_dir=run_dir,
            device=str(torch_device),
            precision=study.training.precision,
            max_minutes=study.training.max_minutes,
            callbacks=[pruner] if pruner else (),
        )
        counted = fvcore_count(spec)  # the independent count, stored beside the analytic one
        attrs.update(
            trained=True,
            val_acc=result.val_acc,
            test_acc=result.test_acc,
            epochs=result.epochs,
            train_seconds=result.train_seconds,
            train_images_per_second=result.train_images_per_second,
            train_step_seconds=result.train_step_seconds,
            eval_seconds=result.eval_seconds,
            device=result.device,
            hardware=hardware_name(torch_device),
            memory_format=result.memory_format,
            run_dir=result.run_dir,
            checkpoint=result.checkpoint,
            val_acc_history=[h.get("val_acc") for h in result.history],
            fvcore_madds=counted.madds,
            fvcore_by_operator=counted.by_operator,
        )
        _set_attrs(trial, attrs)
        if pruner is not None and pruner.stopped_at is not None:
            _stop(trial, pruner.reason)
        return _values(study.objectives, result.val_acc, measured)

    def _reuse(
        self, trial: optuna.Trial, original: optuna.trial.FrozenTrial, attrs: dict, measured: dict
    ) -> list[float]:
        """Record a duplicate with the result of the trial it repeats, at no training cost."""
        reused = {key: original.user_attrs[key] for key in REUSED if key in original.user_attrs}
        _set_attrs(
            trial, {**attrs, **reused, "trained": True, DUPLICATE: original.number, "epochs": 0, "train_seconds": 0.0}
        )
        if original.state == TrialState.PRUNED:
            _stop(
                trial,
                f"duplicate of trial {original.number}, which was stopped early: {original.user_attrs.get('prune_reason')}",
            )
        return _values(self.ctx.study.objectives, original.user_attrs["val_acc"], measured)


def _values(objectives: list[str], val_acc: float, measured: dict[str, float]) -> list[float]:
    """The objective values Optuna is told, in the study's order."""
    return [val_acc if name == "val_acc" else measured[name] for name in objectives]


def _stop(trial: optuna.Trial, reason: str) -> None:
    """End the trial as stopped early (PRUNED), its reason stored."""
    trial.set_user_attr("prune_reason", reason)
    raise optuna.TrialPruned(reason)


def _trained_twin(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """The earliest finished, trained, counted trial with the same knobs and seed, if any."""
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        attrs = other.user_attrs
        if (
            other.params == trial.params
            and attrs.get("trained")
            and "val_acc" in attrs
            and DUPLICATE not in attrs
            and EXCLUDED not in attrs
        ):
            return other
    return None


def _set_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


@dataclass
class WorkerReport:
    """What one worker did."""

    ran: int = 0
    failed: int = 0
    pruned: int = 0
    recovered: int = 0


def work(
    ctx: Context,
    *,
    device: str = "auto",
    threads: int | None = None,
    on_event: Callable[[str, Any], None] | None = None,
    stop: threading.Event | None = None,
) -> WorkerReport:
    """Run trials until the study has n_trials counted ones, the timeout passes or stop is set.

    Args:
        ctx: the loaded study.
        device: training device for this worker ('auto', 'cpu', 'cuda:N').
        threads: CPU threads for this worker (workers split the cores).
        on_event: called with ('start', trial) and ('end', frozen trial) for progress displays.
        stop: set to stop after the running trial.
    """
    from mbv2_search.train import TrainingError, configure_cpu

    configure_cpu(threads)
    study = open_study(ctx)
    report = WorkerReport(recovered=len(recover_stale(study, 3 * ctx.study.heartbeat_seconds)))
    evaluate = Evaluator(ctx, device)
    deadline = time.time() + ctx.study.timeout_minutes * 60 if ctx.study.timeout_minutes else None
    n_trials = ctx.study.n_trials
    while not (stop and stop.is_set()) and (deadline is None or time.time() < deadline):
        if _budget_used(study.get_trials(deepcopy=False)) >= n_trials:
            break
        trial = study.ask()
        if _budget_used(study.get_trials(deepcopy=False), below=trial.number) >= n_trials:
            # another worker took the last slot between our count and our ask: give this one back
            _exclude(study, trial._trial_id, "surplus: the study had reached n_trials")
            study.tell(trial, state=TrialState.FAIL)
            break
        heartbeat = Heartbeat(trial, ctx.study.heartbeat_seconds)
        try:
            if on_event:
                on_event("start", trial)
            values = evaluate(trial)
        except (KeyboardInterrupt, OSError) as err:  # Ctrl-C, a full disk: the trial runs again on resume
            why = "Ctrl-C" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
            # the storage may be what failed (a full disk); then its missing heartbeat marks it stale later
            with contextlib.suppress(Exception):
                trial.set_user_attr(EXCLUDED, f"interrupted: {why}; it runs again on resume")
                study.tell(trial, state=TrialState.FAIL)
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            report.pruned += 1
        except (TrainingError, ArchError, RuntimeError, ValueError) as err:
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
            study.tell(trial, state=TrialState.FAIL)
            report.failed += 1
        else:
            study.tell(trial, values)
            report.ran += 1
        finally:
            heartbeat.stop()
        if on_event:
            on_event("end", study._storage.get_trial(trial._trial_id))
    return report


def _worker_process(path: str, storage_url: str, reports_root: str, device: str, threads: int) -> None:
    """Entry point of a spawned worker process."""
    ctx = load_context(path, storage_url, reports_root)
    with contextlib.suppress(KeyboardInterrupt):  # the trial was marked for rerun; exit quietly
        work(ctx, device=device, threads=threads)


def worker_devices(device: str, workers: int) -> list[str]:
    """One GPU per worker where there are GPUs (round robin), else the CPU for all."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    return [device if device != "auto" else "cpu"] * workers


def start_workers(ctx: Context, workers: int, reports_root: str | Path = "reports") -> list[multiprocessing.Process]:
    """Spawn local worker processes that split the CPU cores (or take one GPU each)."""
    from mbv2_search.train import available_cores

    open_study(ctx)  # create it once, before workers race to
    threads = max(1, available_cores() // workers)
    context = multiprocessing.get_context("spawn")
    processes = []
    for device in worker_devices(ctx.study.training.device, workers):
        process = context.Process(
            target=_worker_process,
            args=(str(ctx.path), ctx.storage_url, str(reports_root), device, threads),
            daemon=False,
        )
        process.start()
        processes.append(process)
    return processes


def snapshot(study: optuna.Study, ctx: Context) -> dict[str, Any]:
    """Progress numbers from storage: counts, the running trials' knobs, Pareto size, ETA."""
    from mbv2_search.report.analysis import pareto_mask, trials_frame

    trials = study.get_trials(deepcopy=False)
    state = counts(trials)
    frame = trials_frame(trials)
    front = int(pareto_mask(frame, ctx.study.objectives).sum()) if len(frame) else 0
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.state == TrialState.COMPLETE and t.datetime_complete and t.datetime_start and EXCLUDED not in t.user_attrs
    ]
    done = state["complete"] + state["failed"] + state["pruned"]
    remaining = max(0, ctx.study.n_trials - done)
    mean = sum(durations) / len(durations) if durations else None
    running = [
        {k: v for k, v in t.params.items()}
        for t in trials
        if t.state == TrialState.RUNNING and EXCLUDED not in t.user_attrs
    ]
    return {
        "done": done,
        "total": ctx.study.n_trials,
        "front": front,
        "running_params": running,
        "eta_seconds": mean * remaining / max(1, ctx.study.workers) if mean else None,
        **state,
    }


def export_trial(ctx: Context, number: int, out_dir: Path | None = None, onnx: bool = False) -> dict[str, str]:
    """Write a trial's block table (YAML that cost/arch/train accept), its weights (torchvision layout)
    and, with onnx, an ONNX model of the trained network (batch dimension dynamic)."""
    import torch
    import yaml

    study = open_study(ctx, create=False)
    matches = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not matches:
        raise ValueError(
            f"--trial: got {number}; allowed: a trial number of study '{ctx.study.name}' (0..{len(study.trials) - 1})"
        )
    trial = matches[0]
    knobs = space.knobs_from_params(trial.params, ctx.arch_file)
    knobs_dict = trial.user_attrs.get("knobs") or knobs.as_dict()
    out_dir = out_dir or ctx.report_dir / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / f"trial-{number:05d}.yaml"
    document = {
        "name": f"{ctx.study.name}-trial-{number}",
        "description": f"exported from study {ctx.study.name}, trial {number}",
        "table": ctx.arch_file.table.model_dump(),
        "knobs": {k: v for k, v in knobs_dict.items() if v is not None},
    }
    table_path.write_text(yaml.safe_dump(document, sort_keys=False))
    written = {"table": str(table_path)}
    checkpoint = trial.user_attrs.get("checkpoint")
    if checkpoint and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        prefix = "ema.module." if any(k.startswith("ema.module.") for k in state) else "model."
        weights = {
            k.removeprefix(prefix).replace("_orig_mod.", ""): v for k, v in state.items() if k.startswith(prefix)
        }
        weights_path = out_dir / f"trial-{number:05d}.pt"
        torch.save(weights, weights_path)
        written["weights"] = str(weights_path)
    if onnx:
        if "weights" not in written:
            raise ValueError(
                f"--onnx: trial {number} has no trained weights (state {trial.state.name}, trained {trial.user_attrs.get('trained')})"
            )
        from mbv2_search.model import build_model

        spec = build_spec(knobs_from_document(document), ctx.arch_file.to_table())
        model = build_model(spec).eval()
        model.load_state_dict(torch.load(written["weights"], weights_only=True))
        onnx_path = out_dir / f"trial-{number:05d}.onnx"
        export_onnx(model, spec.resolution, onnx_path)
        written["onnx"] = str(onnx_path)
    return written


def knobs_from_document(document: dict[str, Any]) -> Any:
    """Knobs from an exported block-table document."""
    from mbv2_search.config import KnobsModel

    return KnobsModel.model_validate(document["knobs"]).to_knobs()


def export_onnx(model: Any, resolution: int, path: Path) -> None:
    """ONNX export of an eval-mode model, input 'images' (N x 3 x R x R), output 'logits'."""
    import warnings

    import torch

    example = torch.randn(1, 3, resolution, resolution)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
            dynamo=True,
            external_data=False,
        )


def trial_summary(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """JSON-ready view of one trial."""
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": trial.params,
        "values": trial.values,
        **{k: v for k, v in trial.user_attrs.items() if k not in ("blocks", "fvcore_by_operator")},
    }
