"""The trial objective: one Optuna trial to costs, a feasibility verdict and, if feasible, a trained result."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import MISSING, fields, replace
from typing import Any

import optuna

from mbv2_search import __version__, ledger, space
from mbv2_search import optuna_private as private
from mbv2_search.arch import ArchSpec, Block, build_spec, table_rows
from mbv2_search.cost import costs
from mbv2_search.datasets import DATASETS
from mbv2_search.search import Context, load_data


class DuplicateCandidate(Exception):
    """An earlier trial evaluated (or is evaluating) the same knobs and seed."""

    def __init__(self, original: int) -> None:
        self.original = original
        super().__init__(f"duplicate of trial {original}")


def values(objectives: list[str], *, val_acc: float, measured: dict[str, float]) -> list[float]:
    """The objective values Optuna is told, in the study's order."""
    return [val_acc if name == "val_acc" else measured[name] for name in objectives]


def candidate_attrs(
    spec: ArchSpec, cost: Any, *, seed: int, measured: dict[str, float], latency_source: str | None
) -> dict[str, Any]:
    """What is known of a candidate before training: knobs, block layout, costs, seed, code version."""
    return {
        "knobs": spec.knobs.as_dict(),
        "block_table": table_rows(spec),  # named; knobs + the space's table rebuild every block
        "bn_params": cost.bn_params,
        "version": __version__,
        "seed": seed,
        "latency_source": latency_source,
        **measured,
    }


def _block_shape(block: Block) -> list[Any]:
    """A block in the memory-format key: the fields of 0.1.0 (so its stored choices still apply), then every
    field added since with a default (squeeze-excite, expansion shortcut, any later one) where it is set."""
    shape: list[Any] = [
        block.t,
        block.in_channels,
        block.hidden_channels,
        block.out_channels,
        block.stride,
        block.kernel,
    ]
    added = {
        f.name: getattr(block, f.name) for f in fields(block) if f.default not in (MISSING, getattr(block, f.name))
    }
    return [*shape, added] if added else shape


class Evaluator:
    """Turns one Optuna trial into costs, a feasibility verdict and, if feasible, a trained result."""

    def __init__(self, ctx: Context, device: str) -> None:
        from mbv2_search.devices import hardware_name, rank_devices

        self.ctx = ctx
        # resolved once, before any trial: a missing GPU is the environment's fault, not a candidate's
        ranks = rank_devices(
            device if device != "auto" else ctx.study.training.device, ctx.study.training.devices_per_trial
        )
        self.device, self.ranks = ranks[0], len(ranks)  # the first holds the data; train() reaches the others
        self.trial_device = ",".join(map(str, ranks)) if self.device.type == "cuda" else str(self.device)
        self.hardware = hardware_name(self.device)  # after the worker set its thread count
        self._data: dict[int, Any] = {}
        self._supernet: Any = None  # one-shot studies: the trained supernet, loaded once per worker
        if ctx.study.strategy == "one-shot":
            from mbv2_search.oneshot import load_supernet

            self._supernet = load_supernet(ctx, self.device)  # now: a missing one stops the worker before a trial

    def _latency_table(self) -> Any:
        """The study's latency table (a path relative to the study file), loaded once."""
        from mbv2_search.latency import LatencyTable

        path = self.ctx.study.latency.table
        if path is None:
            return None
        if not hasattr(self, "_table"):
            self._table = LatencyTable.load(self.ctx.path.parent / path)
        return self._table

    def _dataset(self, resolution: int) -> Any:
        if resolution not in self._data:  # one resolution kept at a time: a dataset can be large
            self._data = {resolution: load_data(self.ctx, resolution, self.device)}
        return self._data[resolution]

    def candidate(self, trial: optuna.Trial) -> tuple[ArchSpec, int]:
        """The trial's architecture and training seed; raises DuplicateCandidate for a repeated one."""
        study = self.ctx.study
        with private.suggestions_in_one_write(trial) as attrs:  # Optuna writes each parameter on its own
            knobs = space.suggest_knobs(trial, self.ctx.arch_file)
            seed = space.suggest_seed(trial, self.ctx.arch_file, default=study.training.seed)
            attrs[ledger.CANDIDATE] = ledger.candidate_key(trial.params)  # with the parameters, in one write
        wait = 3 * study.heartbeat_seconds * ledger.SAMPLING_GRACE  # until an earlier trial's sampler is done or stale
        twin = ledger.earlier_twin(trial.study, trial.number, params=trial.params, wait_seconds=wait)
        if twin is not None:  # samplers re-propose points; parallel workers propose the same ones
            raise DuplicateCandidate(twin.number)
        # the class count without loading data where it is known: infeasible candidates load nothing
        classes = DATASETS[study.data.dataset].classes or self._dataset(knobs.resolution).num_classes
        return build_spec(replace(knobs, num_classes=classes), self.ctx.arch_file.to_table()), seed

    def measure(self, spec: ArchSpec, cost: Any) -> tuple[dict[str, float], str | None]:
        """The analytic costs, and latency (predicted from the study's table or measured) where asked for."""
        from mbv2_search.cost import measure_latency_ms

        study = self.ctx.study
        measured: dict[str, float] = {
            "madds": cost.madds,
            "params": cost.params,
            "peak_activation_bytes": cost.peak_activation_bytes,
        }
        if "latency_ms" not in study.objectives and "latency_ms" not in study.constraints:
            return measured, None
        lookup = self._latency_table()
        if lookup is not None and not lookup.missing(spec):
            measured["latency_ms"] = lookup.predict(spec)
            return measured, "predicted"
        # no table, or it lacks a unit of this candidate: measure the whole network
        measured["latency_ms"] = measure_latency_ms(
            spec, str(self.device), repeats=study.latency.repeats, warmup=study.latency.warmup
        )
        return measured, "measured"

    def __call__(self, trial: optuna.Trial) -> list[float]:
        """The trial's objective values; costs and results are stored as user attributes on the way."""
        study = self.ctx.study
        spec, seed = self.candidate(trial)
        cost = costs(spec)
        measured, latency_source = self.measure(spec, cost)
        attrs = candidate_attrs(spec, cost, seed=seed, measured=measured, latency_source=latency_source)
        attrs["feasible"] = feasible = self.constrain(trial, measured)
        if not feasible:  # known before building anything: never trained
            ledger.set_attrs_at_tell(trial, {**attrs, "trained": False})  # with the outcome, in one write
            return values(study.objectives, val_acc=0.0, measured=measured)
        if study.strategy == "one-shot":
            return self._inherit(trial, spec, measured, attrs)
        return self._train(trial, spec, seed, measured, attrs)

    def constrain(self, trial: optuna.Trial, measured: dict[str, float]) -> bool:
        """Tell Optuna each constraint's margin; True where every measured cost is within its bound."""
        feasible = True
        for name, bound in self.ctx.study.constraints.items():
            trial.set_constraint(name, measured[name] - bound)  # <= 0 is feasible (Optuna 5)
            feasible &= measured[name] <= bound
        return feasible

    def _train(self, trial: optuna.Trial, spec: ArchSpec, seed: int, measured: dict, attrs: dict) -> list[float]:
        data = self._dataset(spec.resolution)
        pruner = self._pruner(trial, measured)
        result = self._fit(trial, spec, data, seed=seed, callbacks=[pruner] if pruner else ())
        attrs.update(self._trained_attrs(result))
        pruned = pruner is not None and pruner.stopped_at is not None
        if pruned:
            attrs["prune_reason"] = pruner.reason
        ledger.set_attrs_at_tell(trial, attrs)  # with the outcome, in one write: see optuna_private
        if pruned:
            raise optuna.TrialPruned(pruner.reason)
        return values(self.ctx.study.objectives, val_acc=result.val_acc, measured=measured)

    def _inherit(self, trial: optuna.Trial, spec: ArchSpec, measured: dict, attrs: dict) -> list[float]:
        """One-shot: the candidate's accuracy with the supernet's weights (loaded once per worker)."""
        from mbv2_search.noise import binomial_stderr
        from mbv2_search.oneshot import inherit

        data = self._dataset(spec.resolution)
        result, _ = inherit(self.ctx, self._supernet, spec, data)
        attrs.update(
            trained=False,
            inherited=True,  # evaluated: the front and the reports take it as they take a trained one
            val_acc=result.val_acc,  # the search's accuracy axis; `status` and the report add the retrained one
            inherited_val_acc=result.val_acc,
            val_acc_stderr=binomial_stderr(result.val_acc, result.images),
            split_sizes=data.split_sizes(),
            calibration_images=result.calibration_images,
            eval_seconds=result.seconds,
            device=str(self.device),
            hardware=self.hardware,
        )
        ledger.set_attrs_at_tell(trial, attrs)  # with the outcome, in one write
        return values(self.ctx.study.objectives, val_acc=result.val_acc, measured=measured)

    def _pruner(self, trial: optuna.Trial, measured: dict[str, float]) -> Any:
        """The rung pruner where the study asks for early stopping and has costs to weigh accuracy against."""
        study = self.ctx.study
        cost_objectives = {name: measured[name] for name in study.objectives if name != "val_acc"}
        if not (study.pruning.enabled and cost_objectives):
            return None
        from mbv2_search.pruning import RungPruner

        return RungPruner(trial.study, trial, costs=cost_objectives, config=study.pruning, epochs=study.training.epochs)

    def _fit(self, trial: optuna.Trial, spec: ArchSpec, data: Any, *, seed: int, callbacks: Sequence[Any]) -> Any:
        """Train the candidate with the study's budget in its own run folder."""
        from mbv2_search.train import train

        training = self.ctx.study.training
        return train(
            spec,
            data,
            epochs=training.epochs,
            batch_size=training.batch_size,
            recipe=training.recipe_model(),
            seed=seed,
            run_dir=self.ctx.report_dir / "trials" / f"{trial.number:05d}",
            device=self.trial_device,
            devices=self.ranks,
            precision=training.precision,
            memory_format=self.memory_format(trial.study, spec),
            cuda_graphs=self.cuda_graphs(trial.study, spec),
            max_minutes=training.max_minutes,
            callbacks=callbacks,
        )

    def _trained_attrs(self, result: Any) -> dict[str, Any]:
        """What training measured, with paths relative to the report folder.

        fvcore's independent count is not among them: building and tracing the module took about 0.1 s
        of every trial; `export` writes it for the trial taken out, `cost --fvcore` for any variant.
        """
        return {
            "trained": True,
            "val_acc": result.val_acc,
            "val_acc_stderr": result.val_acc_stderr,  # how noisy val_acc is: binomial, over split_sizes["val"]
            "split_sizes": result.split_sizes,
            "test_acc": result.test_acc,
            "epochs": result.epochs,
            "train_seconds": result.train_seconds,
            "train_images_per_second": result.train_images_per_second,
            "train_step_seconds": result.train_step_seconds,
            "eval_seconds": result.eval_seconds,
            "device": result.device,
            "hardware": self.hardware,
            "memory_format": result.memory_format,
            "cuda_graphs": result.cuda_graphs,
            # relative to the report folder, so a moved or copied study still finds its weights
            "run_dir": os.path.relpath(result.run_dir, self.ctx.report_dir),
            "checkpoint": os.path.relpath(result.checkpoint, self.ctx.report_dir) if result.checkpoint else "",
            "val_acc_history": [h.get("val_acc") for h in result.history],
        }

    def memory_format(self, study: optuna.Study, spec: ArchSpec) -> str:
        """The memory format for this hardware and architecture shape: measured once, stored with the study.

        Formats differ in floating-point order, so a choice made by timing in each process would give
        the same knobs and seed different results under load; the first measurement is kept for all.
        """
        from mbv2_search.devices import prefers_channels_last

        batch_size = self.ctx.study.training.batch_size
        if self.device.type == "cuda":
            return "channels_last"

        def measure() -> str:
            return "channels_last" if prefers_channels_last(spec, self.device, batch_size=batch_size) else "contiguous"

        return _stored_choice(study, "memory_format", self._shape(spec), measure)

    def cuda_graphs(self, study: optuna.Study, spec: ArchSpec) -> str:
        """'on' where replaying CUDA graphs trains this shape faster on this GPU (measured once, stored with
        the study, as the memory format), 'off' on the CPU or where the study says so."""
        from mbv2_search.devices import resolve_precision
        from mbv2_search.graphs import prefers_cuda_graphs

        training = self.ctx.study.training
        if self.device.type != "cuda" or self.ranks > 1:  # the CPU, and DDP, train eagerly
            return "off"
        if training.cuda_graphs != "auto":
            return training.cuda_graphs
        precision = resolve_precision(training.precision, self.device)

        def measure() -> str:
            faster = prefers_cuda_graphs(spec, self.device, batch_size=training.batch_size, precision=precision)
            return "on" if faster else "off"

        return _stored_choice(study, "cuda_graphs", [*self._shape(spec), precision], measure)

    def _shape(self, spec: ArchSpec) -> list[Any]:
        """What a measured choice depends on: the hardware, the batch and the architecture's shape (the
        memory format's key, as 0.1.0 wrote it, so its stored choices still apply)."""
        shape = [self.hardware, self.ctx.study.training.batch_size, spec.resolution, spec.stem_channels]
        return [*shape, spec.head_channels, [_block_shape(b) for b in spec.blocks]]


def _stored_choice(study: optuna.Study, name: str, shape: list[Any], measure: Any) -> str:
    """The study's stored choice for this shape, measured and stored by the first worker that needs it."""
    key = f"{name}:" + hashlib.sha1(json.dumps(shape).encode()).hexdigest()[:16]
    stored = study.user_attrs.get(key)
    if stored is None:
        study.set_user_attr(key, measure())
        stored = study.user_attrs[key]  # a worker that probed at the same moment may have written last
    return stored
