"""Taking a trial out of a study: its block table, its weights in torchvision's layout, and ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from mbv2_search import ledger, space
from mbv2_search.arch import build_spec
from mbv2_search.cost import fvcore_count
from mbv2_search.preprocessing import INPUT_NAME, OUTPUT_NAME
from mbv2_search.search import Context, load_data
from mbv2_search.storage import open_study
from mbv2_search.weights import from_checkpoint


class NoWeights(ValueError):
    """The trial has no weights to export; its block table was written."""

    def __init__(self, table: str, why: str) -> None:
        self.table = table
        super().__init__(f"{why}; its block table was written to {table}")


def _stored_path(ctx: Context, trial: optuna.trial.FrozenTrial) -> Path | None:
    """The trial's checkpoint: stored relative to the report folder (absolute in studies before 0.2)."""
    stored = trial.user_attrs.get("checkpoint")
    if not stored:
        return None
    path = ctx.report_dir / stored
    return path if path.is_file() or not Path(stored).is_file() else Path(stored)


def _source(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    """The trial whose training produced this trial's result (a duplicate's original)."""
    original = trial.user_attrs.get(ledger.DUPLICATE)
    return study.get_trials(deepcopy=False)[original] if original is not None else trial


def _checkpoint(ctx: Context, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> Path | None:
    path = _stored_path(ctx, _source(study, trial))
    return path if path is not None and path.is_file() else None


def _weights(ctx: Context, study: optuna.Study, trial: optuna.trial.FrozenTrial, written: dict) -> dict | None:
    """The trial's trained weights (its checkpoint; a one-shot trial's retrained or inherited ones), or None."""
    import torch

    from mbv2_search.ledger import evaluated

    source = _source(study, trial)  # a duplicate's weights are its original's
    if ctx.study.strategy == "one-shot" and evaluated(source.user_attrs):
        from mbv2_search.oneshot import trial_weights

        weights, written["weights_from"] = trial_weights(ctx, study, source)
        return weights
    checkpoint = _checkpoint(ctx, study, trial)
    if checkpoint is None:
        return None
    return from_checkpoint(torch.load(checkpoint, map_location="cpu", weights_only=True))


def _why_no_weights(ctx: Context, trial: optuna.trial.FrozenTrial) -> str:
    path = _stored_path(ctx, trial)
    if path is not None:
        return f"trial {trial.number}: its weights are missing: no file {path}"
    if trial.user_attrs.get("feasible") is False:
        return f"trial {trial.number} has no weights: it was infeasible, never trained"
    return f"trial {trial.number} has no weights: it was never trained (state {trial.state.name})"


def export_trial(ctx: Context, number: int, *, out_dir: Path | None = None, onnx: bool = False) -> dict[str, Any]:
    """Write a trial's block table (YAML that cost/arch/train accept), its weights (torchvision layout)
    and, with onnx, an ONNX model of the trained network (batch dimension dynamic); returns the paths
    written and fvcore's count of the network's MAdds (`fvcore_madds`, the independent check of the
    trial's `madds`)."""
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
        "preprocessing": _preprocessing(ctx, knobs.resolution),
    }
    table_path.write_text(yaml.safe_dump(document, sort_keys=False))
    written: dict[str, Any] = {"table": str(table_path)}
    weights = _weights(ctx, study, trial, written)
    if weights is not None:
        weights_path = out_dir / f"trial-{number:05d}.pt"
        torch.save(weights, weights_path)
        written["weights"] = str(weights_path)
    if "weights" not in written:
        raise NoWeights(written["table"], _why_no_weights(ctx, _source(study, trial)))
    spec = build_spec(knobs_from_document(document), ctx.arch_file.to_table())
    written["fvcore_madds"] = fvcore_count(spec).madds  # counted here, off every trial's path
    if onnx:
        from mbv2_search.model import build_model

        model = build_model(spec).eval()
        model.load_state_dict(torch.load(written["weights"], weights_only=True))
        onnx_path = out_dir / f"trial-{number:05d}.onnx"
        export_onnx(model, spec.resolution, path=onnx_path)
        written["onnx"] = str(onnx_path)
    return written


def _preprocessing(ctx: Context, resolution: int) -> dict[str, Any]:
    """How the study's data became the model's input at this resolution, from the loader's own values
    (digits' mean and std are measured on its training split)."""
    import torch

    return load_data(ctx, resolution, torch.device("cpu"), workers=0).preprocessing()


def knobs_from_document(document: dict[str, Any]) -> Any:
    """Knobs from an exported block-table document."""
    from mbv2_search.config import KnobsModel

    return KnobsModel.model_validate(document["knobs"]).to_knobs()


def export_onnx(model: Any, resolution: int, *, path: Path) -> None:
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
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
            dynamo=True,
            external_data=False,
        )
