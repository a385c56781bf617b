"""Where a study lives: the Optuna storage from a URL, and opening a study whose stored trials stay comparable."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from mbv2_search.config import ArchFile
from mbv2_search.conventions import CONVENTIONS
from mbv2_search.knobs import KNOBS, Knobs
from mbv2_search.sampler import make_sampler

if TYPE_CHECKING:
    from mbv2_search.search import Context


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL: 'journal:PATH' or an RDB URL (postgresql://, sqlite://)."""
    if url.startswith("journal:"):
        from mbv2_search.journal import SafeJournalFile

        file_path = Path(url.removeprefix("journal:"))
        file_path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(SafeJournalFile(str(file_path)))
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def space_fingerprint(ctx: Context) -> str:
    """What makes trials comparable: the space, data, training budget and objectives."""
    study = ctx.study
    identity = {
        "space": _space_identity(ctx.arch_file),
        "data": study.data.dataset,
        "training": study.training.model_dump(exclude={"device", "precision", "cuda_graphs", "devices_per_trial"}),
        "objectives": study.objectives,
        "constraints": study.constraints,
    }
    if study.training.devices_per_trial != 1:  # another global batch changes results; unset keeps old studies'
        identity["training"]["devices_per_trial"] = study.training.devices_per_trial
    if study.strategy != "per-candidate":  # what the accuracies are; unset keeps older studies' fingerprints
        # how the front is retrained afterwards changes no trial: retrain_front redoes points made otherwise
        identity["one_shot"] = study.one_shot.model_dump(exclude={"retrain", "retrain_epochs"})
    if study.data.val_fraction is not None:  # another split changes what val_acc means; unset keeps 0.1's
        identity["val_fraction"] = study.data.val_fraction
    return json.dumps(identity, sort_keys=True)


def _space_identity(arch_file: ArchFile) -> dict[str, Any]:
    """The space as stored trials depend on it; knobs added after 0.1.0 count only where set, so the
    fingerprints of studies stored by 0.1.0 still match."""
    space = arch_file.model_dump(exclude={"name", "description", "preprocessing"})
    if space["knobs"]["dropout"] is None:  # the convention's, as 0.1.0 wrote it out (0.2 for its conventions)
        space["knobs"]["dropout"] = CONVENTIONS[space["knobs"]["convention"]].dropout
    defaults = Knobs()
    space["knobs"] = {
        name: value
        for name, value in space["knobs"].items()
        if KNOBS[name].since == "0.1.0" or value != getattr(defaults, name)
    }
    return space


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
        return optuna.load_study(
            study_name=name, storage=storage, sampler=make_sampler(ctx.study.sampler, ctx.arch_file)
        )
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(ctx.study.sampler, ctx.arch_file),
        directions=ctx.directions,
        load_if_exists=True,
    )
    fingerprint = space_fingerprint(ctx)
    stored = study.user_attrs.get("fingerprint")
    if stored is not None and stored != fingerprint:
        raise StudyMismatch(
            f"{ctx.path}: the stored study '{name}' was run with a different space, data, budget, objectives, constraints or one-shot settings; "
            f"rename the study (name:) or choose another storage to start a new one"
        )
    if stored is None:
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("study_file", ctx.study.model_dump(mode="json", exclude={"storage"}))
        for baseline in ctx.study.baselines:
            study.enqueue_trial(baseline, user_attrs={"baseline": True}, skip_if_exists=True)
    if study.metric_names != list(ctx.study.objectives):  # optuna-dashboard and Optuna's CLI show our names
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(ctx.study.objectives))
    return study
