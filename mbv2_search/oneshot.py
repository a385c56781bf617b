"""strategy: one-shot: the study's supernet (trained once, stored with the study and reused on resume), the
inherited accuracy of a candidate, and retraining the front's points (stored per trial in the study's attrs).
"""

from __future__ import annotations

import errno
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch

from mbv2_search import space
from mbv2_search.arch import ArchSpec, build_spec
from mbv2_search.datasets import DATASETS
from mbv2_search.elastic import corner_knobs, random_params
from mbv2_search.errors import NoSupernet
from mbv2_search.ledger import RETRAINED
from mbv2_search.locks import Held, exclusive, taken_over
from mbv2_search.noise import binomial_stderr
from mbv2_search.schema import ConfigError
from mbv2_search.search import Context, load_data
from mbv2_search.supernet import SuperNet, extract, recalibrate, zero_residual_branches

SUPERNET = Path("supernet") / "supernet.pt"  # under the study's report folder


@dataclass(frozen=True)
class Members:
    """The study's space as supernet members: specs from Optuna parameters, its corners and random draws."""

    ctx: Context
    num_classes: int

    def spec(self, params: dict[str, Any]) -> ArchSpec:
        """A member from a trial's parameters."""
        return self._build(space.knobs_from_params(params, self.ctx.arch_file))

    def _build(self, knobs: Any) -> ArchSpec:
        return build_spec(replace(knobs, num_classes=self.num_classes), self.ctx.arch_file.to_table())

    def corner(self, *, largest: bool) -> ArchSpec:
        """The largest member (the supernet) or the smallest."""
        return self._build(corner_knobs(self.ctx.arch_file, largest=largest))

    def draw(self, rng: random.Random) -> ArchSpec:
        """A uniformly random member."""
        return self.spec(random_params(self.ctx.arch_file, rng))


def members(ctx: Context) -> Members:
    """The study's members, with the class count read from the data only where the registry lacks it."""
    classes = DATASETS[ctx.study.data.dataset].classes
    if not classes:
        classes = load_data(ctx, 8, torch.device("cpu")).num_classes
    return Members(ctx, classes)


def supernet_path(ctx: Context) -> Path:
    """Where the study's trained supernet lives."""
    return ctx.report_dir / SUPERNET


class StaleSupernet(ConfigError):
    """A stored supernet trained for another version of the study (space, data, training or one-shot settings)."""


def _fingerprint(ctx: Context) -> str:
    from mbv2_search.storage import space_fingerprint

    return space_fingerprint(ctx)


def check_supernet(ctx: Context, stored: dict[str, Any], path: Path | None = None) -> None:
    """Refuse a supernet file (or its training's checkpoint, `path`) made for another version of the study
    (the report folder is the name's)."""
    if stored.get("fingerprint") != _fingerprint(ctx):
        raise StaleSupernet(
            ctx.path,
            "",
            f"{path or supernet_path(ctx)} was trained for another version of study '{ctx.study.name}' "
            "(its space, data, training or one_shot settings differ); rename the study, or move that folder away",
        )


def training_checkpoint(ctx: Context) -> Path:
    """The last finished epoch of the supernet's training, which an interrupted run resumes from."""
    from mbv2_search.supernet_train import LAST

    return supernet_path(ctx).parent / "training" / LAST


def supernet_epochs(ctx: Context) -> int:
    """How many epochs the study's supernet trains."""
    return ctx.study.one_shot.epochs or ctx.study.training.epochs


def resumed_epochs(ctx: Context) -> dict[str, Any] | None:
    """What the supernet's training checkpoint holds (callbacks.resume_point), None where there is none;
    a file that cannot be read (emptied, cut short, overwritten) is named, with what to do."""
    from mbv2_search.callbacks import resume_point

    fix = "delete it to train the supernet from its first epoch"
    return _read(ctx, training_checkpoint(ctx), resume_point, what="a training checkpoint", fix=fix)


def _read(ctx: Context, path: Path, read: Any, *, what: str, fix: str) -> Any:
    """read(path), a damaged file (emptied, cut short, overwritten) named in one line with what to do."""
    try:
        return read(path)
    except Exception as err:  # torch.load's errors for a damaged file vary: EOFError, RuntimeError, pickle's
        raise ConfigError(ctx.path, "", f"{path}: cannot be read as {what} ({type(err).__name__}); {fix}") from None


def _stored_supernet(ctx: Context) -> dict[str, Any]:
    """The study's supernet file, checked against the study."""
    path = supernet_path(ctx)
    fix = "delete it to train the supernet again, or copy it whole from the machine that trained it"
    load = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
    stored = _read(ctx, path, load, what="a trained supernet", fix=fix)
    check_supernet(ctx, stored)
    return stored


def ensure_supernet(
    ctx: Context, study: optuna.Study, device: torch.device, *, progress: bool = False, say: Any = print
) -> bool:
    """Train the study's supernet unless it is stored already; True if it was trained now.

    The file is written whole (a temporary file renamed), so an interrupted training leaves nothing that
    looks finished, only the checkpoint of its last finished epoch, which the next run resumes from; a
    second `run` waits for the first one's training instead of repeating it.
    """
    from mbv2_search.supernet_train import Sandwich, train_supernet

    path = supernet_path(ctx)
    with exclusive(path.with_suffix(".lock"), waiting=f"waiting for process {{owner}} to train {path}", say=say):
        if path.is_file():
            stored = _stored_supernet(ctx)
            training_checkpoint(ctx).unlink(missing_ok=True)  # left where a run stopped between the two
            if "supernet" not in study.user_attrs and "result" in stored:  # the run that trained it stopped first
                study.set_user_attr("supernet", stored["result"])
            return False
        resumed = resumed_epochs(ctx)
        if resumed is not None:
            check_supernet(ctx, resumed, training_checkpoint(ctx))
            say(f"resuming the supernet's training after epoch {resumed['epochs']} ({training_checkpoint(ctx)})")
        else:
            say(f"training the supernet on {device}: it is stored in {path} and reused on resume")
        config, training, space_members = ctx.study.one_shot, ctx.study.training, members(ctx)
        recipe = training.recipe_model()
        dropout = {} if recipe.dropout is None else {"dropout": recipe.dropout}
        largest, smallest = (replace(space_members.corner(largest=big), **dropout) for big in (True, False))
        torch.manual_seed(training.seed)  # the supernet's initial weights
        supernet = SuperNet(largest)
        zero_residual_branches(supernet.net)  # BigNAS's initialisation: ranks members better (README)
        sandwich = Sandwich(
            largest,
            smallest,
            draw=lambda rng: replace(space_members.draw(rng), **dropout),
            random_members=config.random_members,
            distill=config.distill,
            calibration_batches=config.calibration_batches,
        )
        result = train_supernet(
            supernet,
            load_data(ctx, largest.resolution, device),
            sandwich,
            recipe=recipe,
            epochs=supernet_epochs(ctx),
            batch_size=training.batch_size,
            seed=training.seed,
            run_dir=training_checkpoint(ctx).parent,
            device=device,
            precision=training.precision,
            progress=progress,
            stamp={"fingerprint": _fingerprint(ctx)},
            resume=resumed,
        )
        record = {
            "path": str(SUPERNET),
            "val_acc": result.val_acc,
            "epochs": result.epochs,
            "train_seconds": result.train_seconds,
            "device": result.device,
            "history": [h.get("val_acc") for h in result.history],
        }
        partial = path.with_suffix(".partial")
        stored = {"state_dict": supernet.net.state_dict(), "knobs": largest.knobs.as_dict(), "result": record}
        torch.save({**stored, "fingerprint": _fingerprint(ctx)}, partial)
        os.replace(partial, path)
        training_checkpoint(ctx).unlink()  # its optimizer state served only a resume: supernet.pt is the result
    study.set_user_attr("supernet", record)
    return True


def load_supernet(ctx: Context, device: torch.device) -> SuperNet:
    """The study's trained supernet on a device, in eval mode; NoSupernet where it was not trained yet."""
    path = supernet_path(ctx)
    lock, waited = path.with_suffix(".lock"), False
    while not path.is_file() and (lock.exists() or (waited and taken_over(lock))):  # a `run` trains it: wait
        with exclusive(lock, waiting=f"waiting for process {{owner}} to train {path}"):
            waited = True
    if not path.is_file():  # checked by every worker before its first trial (Evaluator)
        done = resumed_epochs(ctx)
        kept = f"; its training stopped after epoch {done['epochs']}" if done else ""
        raise NoSupernet(
            f"{path}: no trained supernet{kept}; `mbv2-search run {ctx.path}` trains it before the search starts "
            "(a worker on another machine, or a copied study folder, needs a copy of that file)"
        )
    stored = _stored_supernet(ctx)
    supernet = SuperNet(members(ctx).corner(largest=True))
    supernet.net.load_state_dict(stored["state_dict"])
    return supernet.to(device).eval()


@dataclass(frozen=True)
class Inherited:
    """A candidate evaluated with the supernet's weights."""

    val_acc: float
    images: int
    calibration_images: int
    seconds: float


def inherited_accuracy(
    supernet: SuperNet, spec: ArchSpec, data: Any, *, calibration_batches: int, batch_size: int
) -> tuple[Inherited, torch.nn.Module]:
    """Validation accuracy of a member with inherited weights, its BatchNorm statistics recomputed on a fixed
    random sample of training batches (supernet.calibration_batches); returns the standalone model too."""
    from mbv2_search.evaluate import evaluate
    from mbv2_search.supernet import calibration_batches as calibration

    start = time.perf_counter()
    device = next(supernet.parameters()).device
    model = extract(supernet, spec)
    batches = calibration(data, batch_size, calibration_batches)
    seen = recalibrate(model, ((images.to(device), labels) for images, labels in batches))
    result = evaluate(model, data, split="val", device=device, batch_size=batch_size * 2)
    return Inherited(result.accuracy, result.images, seen, time.perf_counter() - start), model


def inherit(ctx: Context, supernet: SuperNet, spec: ArchSpec, data: Any) -> tuple[Inherited, torch.nn.Module]:
    """inherited_accuracy with the study's calibration batches and batch size (the search's measurement)."""
    return inherited_accuracy(
        supernet,
        spec,
        data,
        calibration_batches=ctx.study.one_shot.calibration_batches,
        batch_size=ctx.study.training.batch_size,
    )


def front_trials(ctx: Context, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's Pareto-optimal evaluated trials (on the accuracies the search saw), cheapest first."""
    from mbv2_search import ledger
    from mbv2_search.pareto import minimised, non_dominated

    objectives = ctx.study.objectives
    trials = [t for t in study.get_trials(deepcopy=False) if ledger.eligible(t)]
    if not trials:
        return []
    rows = minimised({name: [t.user_attrs[name] for t in trials] for name in objectives}, objectives)
    front = [t for t, keep in zip(trials, non_dominated(rows)) if keep]
    cost = next((name for name in objectives if name != "val_acc"), "val_acc")
    return sorted(front, key=lambda t: (t.user_attrs[cost], t.number))


def _plan(ctx: Context) -> dict[str, Any]:
    """How the front's points are retrained: a stored result made another way is retrained again."""
    return {
        "from": ctx.study.one_shot.retrain,
        "budget": ctx.study.one_shot.retrain_epochs or ctx.study.training.epochs,
    }


def _retrained(study: optuna.Study, number: int, plan: dict[str, Any]) -> bool:
    stored = study.user_attrs.get(f"{RETRAINED}{number}") or {}
    return all(stored.get(key) == value for key, value in plan.items())


def retrain_front(ctx: Context, study: optuna.Study, device: torch.device, *, say: Any = print) -> int:
    """Train each front point not yet retrained as the study says (from scratch, or from its inherited
    weights) and store its stand-alone accuracy in the study's attrs (`retrained:<trial>`); returns how many
    were trained here. Each point is locked while it trains: a second `run` takes the others, or waits."""
    plan, space_members = _plan(ctx), members(ctx)
    todo = [t for t in front_trials(ctx, study) if not _retrained(study, t.number, plan)]
    supernet = load_supernet(ctx, device) if plan["from"] == "finetune" and todo else None
    trained, count = 0, len(todo)
    while todo:
        held = []  # points another run is retraining: taken up again once the free ones are done
        for trial in todo:
            folder = _point_folder(ctx, trial.number)
            try:
                with exclusive(folder.with_suffix(".lock"), wait=False):
                    if _retrained(study, trial.number, plan):  # another run did it meanwhile
                        continue
                    trained += 1
                    say(f"retraining front point {trained} of {count}: trial {trial.number} ({plan['from']})")
                    spec = space_members.spec(trial.params)
                    record = _retrain_point(ctx, trial, spec, device, plan=plan, folder=folder, supernet=supernet)
                    study.set_user_attr(f"{RETRAINED}{trial.number}", {**plan, **record})
            except Held:
                held.append(trial)
        if held and len(held) == len(todo):  # each held by another run: wait for the first, then look again
            lock, number = _point_folder(ctx, held[0].number).with_suffix(".lock"), held[0].number
            with exclusive(lock, waiting=f"waiting for process {{owner}} to retrain trial {number}", say=say):
                pass
        todo = [t for t in held if not _retrained(study, t.number, plan)]
    return trained


def _point_folder(ctx: Context, number: int) -> Path:
    """A retrained front point's run folder (its lock file beside it)."""
    return ctx.report_dir / "retrained" / f"{number:05d}"


def _retrain_point(
    ctx: Context,
    trial: optuna.trial.FrozenTrial,
    spec: ArchSpec,
    device: torch.device,
    *,
    plan: dict[str, Any],
    folder: Path,
    supernet: SuperNet | None,
) -> dict[str, Any]:
    """What retraining one front point measured; a candidate's own failure (diverged, out of memory) is
    recorded as `failed`, not retried: the other points go on."""
    from mbv2_search.train import TrainingDiverged, TrainingOutOfMemory

    inherited = {"inherited_val_acc": trial.user_attrs["inherited_val_acc"]}
    try:
        result = _retrain(ctx, spec, device, epochs=plan["budget"], folder=folder, supernet=supernet)
    except (TrainingDiverged, TrainingOutOfMemory) as err:
        return {**inherited, "failed": f"{type(err).__name__}: {err}"}
    return {
        **inherited,
        "val_acc": result.val_acc,
        "val_acc_stderr": binomial_stderr(result.val_acc, result.split_sizes["val"]),
        "test_acc": result.test_acc,
        "epochs": result.epochs,
        "train_seconds": result.train_seconds,
        "checkpoint": os.path.relpath(result.checkpoint, ctx.report_dir) if result.checkpoint else "",
    }


def _retrain(
    ctx: Context, spec: ArchSpec, device: torch.device, *, epochs: int, folder: Path, supernet: SuperNet | None
) -> Any:
    """Train one front point with the study's training settings (from its inherited weights with a supernet)."""
    from mbv2_search.train import train

    training = ctx.study.training
    data = load_data(ctx, spec.resolution, device)
    init = None
    if supernet is not None:
        _, model = inherit(ctx, supernet, spec, data)
        init = {k: v.cpu() for k, v in model.state_dict().items()}
    return train(
        spec,
        data,
        epochs=epochs,
        batch_size=training.batch_size,
        recipe=training.recipe_model(),
        seed=training.seed,
        run_dir=folder,
        device=str(device),
        precision=training.precision,
        init=init,
    )


def trial_weights(ctx: Context, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> tuple[dict[str, Any], str]:
    """A one-shot trial's weights in torchvision's layout and where they come from: its retrained checkpoint
    where it was retrained, else the supernet's slices with BatchNorm recalibrated (as its search measured)."""
    from mbv2_search.weights import from_checkpoint

    again = study.user_attrs.get(f"{RETRAINED}{trial.number}") or {}
    if again.get("checkpoint"):
        path = ctx.report_dir / again["checkpoint"]
        if not path.is_file():  # its inherited weights are another network: not a stand-in
            why = "its retrained checkpoint is missing: copy the study's retrained/ folder from the machine that retrained it"
            raise FileNotFoundError(errno.ENOENT, why, str(path))
        return from_checkpoint(torch.load(path, map_location="cpu", weights_only=True)), "retrained"
    device, spec = torch.device("cpu"), members(ctx).spec(trial.params)
    _, model = inherit(ctx, load_supernet(ctx, device), spec, load_data(ctx, spec.resolution, device))
    return model.state_dict(), "inherited"
