"""The eval command: given weights, the accuracy of one variant on a dataset split."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mbv2_search.arch import ArchSpec
from mbv2_search.cli.app import UserError, cli, console
from mbv2_search.cli.flags import arch_options, val_fraction_option
from mbv2_search.cli.train_cmd import data_for
from mbv2_search.datasets import DATASETS


@cli.command("eval")
@arch_options
@click.option("--weights", "weights_path", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="An exported trial's .pt, torchvision's mobilenet_v2 state_dict, a best.ckpt, or tonylins' "
              "state_dict (with --convention tonylins).")  # fmt: skip
@click.option("--dataset", type=click.Choice(list(DATASETS)), default="digits", show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), help="Local folder of the dataset (as for train).")
@val_fraction_option
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--workers", type=click.IntRange(0), default=4, show_default=True, help="DataLoader workers (imagefolder)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_command(
    spec: ArchSpec,
    weights_path: Path,
    dataset: str,
    data_dir: Path | None,
    val_fraction: float | None,
    split: str,
    batch_size: int,
    device: str,
    workers: int,
    as_json: bool,
) -> None:
    """Accuracy (top-1, top-5) of given weights on a dataset split, with the variant's exact costs."""
    from mbv2_search.cost import costs
    from mbv2_search.devices import resolve_device
    from mbv2_search.evaluate import evaluate
    from mbv2_search.model import build_model
    from mbv2_search.weights import WeightsError, load_into, read_weights

    spec, data = data_for(spec, dataset, data_dir=data_dir, device=device, workers=workers, val_fraction=val_fraction)
    model = build_model(spec)
    try:
        state, layout = read_weights(weights_path)
        load_into(model, state, source=str(weights_path), new_classifier=False)
    except WeightsError as err:
        raise UserError(f"--weights: {err}") from None
    result = evaluate(model, data, split=split, device=resolve_device(device), batch_size=batch_size)
    cost = costs(spec)
    payload = {"accuracy": result.accuracy, "top5": result.top5, "split": split, "images": result.images}
    payload |= {"correct": result.correct, "madds": cost.madds, "params": cost.params, "weights_layout": layout}
    if as_json:
        click.echo(json.dumps(payload))
        return
    console.print(
        f"{split} accuracy {result.accuracy:.4f} ({result.correct:,} of {result.images:,}), top-5 {result.top5:.4f}; "
        f"{cost.madds / 1e6:.2f} M MAdds, {cost.params / 1e6:.3f} M params; weights in {layout}"
    )
