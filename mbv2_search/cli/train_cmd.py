"""The train command: one variant on one dataset, outside any study."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from mbv2_search.arch import ArchSpec, build_spec
from mbv2_search.cli.app import UserError, cli, console
from mbv2_search.cli.flags import arch_options, val_fraction_option
from mbv2_search.datasets import DATASETS
from mbv2_search.recipes import RECIPES


def _recipe(name: str, overrides: tuple[str, ...]) -> Any:
    """A named recipe with KEY=VALUE overrides (values parsed as YAML scalars)."""
    import yaml

    from mbv2_search.recipes import recipe_with

    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set: got {item!r}; allowed: KEY=VALUE with KEY a recipe field")
        values[key.strip()] = yaml.safe_load(text)
    return recipe_with(name, values, path="--set")


@cli.command()
@arch_options
@click.option(
    "--dataset",
    type=click.Choice(list(DATASETS)),
    default="digits",
    show_default=True,
    help="; ".join(f"{d.name}: {d.help}" for d in DATASETS.values()) + ".",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Local folder: " + "; ".join(f"{d.name}: {d.layout}" for d in DATASETS.values() if d.layout) + ".",
)
@val_fraction_option
@click.option("--epochs", type=click.IntRange(1), default=20, show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Images per step on each device: with --devices N the global batch is N times this, and the recipe's "
    "learning rate scales with the global batch.",
)
@click.option(
    "--recipe",
    "recipe_name",
    type=click.Choice(list(RECIPES)),
    default="fast",
    show_default=True,
    help="fast: SGD + one-cycle for short runs; paper: section 6.1.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe field, e.g. --set lr=0.1 --set label_smoothing=0.1.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N, or the GPUs of one run: cuda:2,3."
)
@click.option(
    "--devices",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Train on N devices with DDP: the first N GPUs (or those --device names), or on the CPU N processes that "
    "split the threads. Each rank evaluates the whole val and test sets.",
)
@click.option(
    "--precision",
    default="auto",
    show_default=True,
    help="auto (bf16 mixed on GPUs, fp32 on CPU) or a Lightning precision.",
)
@click.option(
    "--memory-format",
    type=click.Choice(["auto", "channels_last", "contiguous"]),
    default="auto",
    show_default=True,
    help="auto: measured on the CPU, channels_last on GPUs.",
)
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile the model.")
@click.option(
    "--cuda-graphs",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Replay training steps from CUDA graphs (GPUs; auto: where measured faster for this model).",
)
@click.option(
    "--workers", type=click.IntRange(0), default=4, show_default=True, help="DataLoader workers (imagefolder only)."
)
@click.option(
    "--run-dir", type=click.Path(path_type=Path), help="Where metrics.csv and best.ckpt go (default runs/train-<time>)."
)
@click.option(
    "--init",
    "init_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Fine-tune from weights: an exported trial's .pt, torchvision's mobilenet_v2 state_dict, a best.ckpt, or "
    "tonylins/pytorch-mobilenet-v2's state_dict (with --convention tonylins). A classifier of another class count "
    "is re-initialised.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def train(
    spec: ArchSpec,
    dataset: str,
    data_dir: Path | None,
    val_fraction: float | None,
    epochs: int,
    batch_size: int,
    recipe_name: str,
    overrides: tuple[str, ...],
    seed: int,
    device: str,
    devices: int,
    precision: str,
    memory_format: str,
    use_compile: bool,
    cuda_graphs: str,
    workers: int,
    run_dir: Path | None,
    init_path: Path | None,
    as_json: bool,
) -> None:
    """Train one variant (architecture flags as for `cost`) and report accuracy, time and costs."""
    import time

    from mbv2_search.devices import rank_devices
    from mbv2_search.errors import TrainingError
    from mbv2_search.interrupts import SignalGuard
    from mbv2_search.train import train as run_training

    recipe = _recipe(recipe_name, overrides)
    try:
        ranks = rank_devices(device, devices)
    except TrainingError as err:
        raise UserError(f"--{err}") from None
    spec, data = data_for(spec, dataset, data_dir=data_dir, device=device, workers=workers, val_fraction=val_fraction)
    if cuda_graphs == "on" and (ranks[0].type != "cuda" or len(ranks) > 1):
        where = f"--device {device} is not a GPU" if ranks[0].type != "cuda" else f"--devices is {len(ranks)}"
        raise UserError(f"--cuda-graphs: got 'on' but {where}; allowed there: auto, off")
    init, layout = _initial_weights(spec, init_path)
    run_dir = run_dir or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    try:
        with SignalGuard() as guard, guard.interruptible():  # Ctrl-C exits 130, not Lightning's 1
            result = run_training(
                spec,
                data,
                epochs=epochs,
                batch_size=batch_size,
                recipe=recipe,
                seed=seed,
                run_dir=run_dir,
                device=device,
                devices=devices,
                precision=precision,
                memory_format=memory_format,
                compile=use_compile,
                cuda_graphs=cuda_graphs,
                progress=not as_json,
                init=init,
            )
    except TrainingError as err:
        click.echo(f"mbv2-search train: {type(err).__name__}: {err}", err=True)
        sys.exit(1)
    _print_result(spec, result, dataset=dataset, recipe=recipe, as_json=as_json, init=layout)


def _initial_weights(spec: ArchSpec, path: Path | None) -> tuple[Any, str]:
    """The --init weights in our layout, checked against the model before any training (exit 2 if they
    do not fit); and the file's layout, for the output."""
    if path is None:
        return None, ""
    from mbv2_search.model import build_model
    from mbv2_search.weights import WeightsError, load_into, read_weights

    try:
        state, layout = read_weights(path)
        load_into(build_model(spec), state, source=str(path))
    except WeightsError as err:
        raise UserError(f"--init: {err}") from None
    return state, layout


def data_for(
    spec: ArchSpec, dataset: str, *, data_dir: Path | None, device: str, workers: int, val_fraction: float | None
) -> tuple[ArchSpec, Any]:
    """The dataset on the training device, and the spec with the dataset's class count."""
    from dataclasses import replace

    from mbv2_search.data import DataError, load_dataset
    from mbv2_search.devices import rank_devices
    from mbv2_search.errors import TrainingError

    try:
        torch_device = rank_devices(device)[0]  # the first of a run's GPUs ('cuda:2,3') holds the data
        data = load_dataset(
            dataset, spec.resolution, device=torch_device, data_dir=data_dir, workers=workers, val_fraction=val_fraction
        )
    except (DataError, TrainingError, RuntimeError) as err:
        raise UserError(str(err)) from None
    if spec.knobs.num_classes not in (None, data.num_classes):  # given (--classes or the table), and wrong
        raise UserError(
            f"--classes: got {spec.knobs.num_classes}; allowed: {data.num_classes}, the class count of {dataset}"
        )
    if data.num_classes != spec.num_classes:
        spec = build_spec(replace(spec.knobs, num_classes=data.num_classes), spec.table)
    return spec, data


def _print_result(spec: ArchSpec, result: Any, *, dataset: str, recipe: Any, as_json: bool, init: str) -> None:
    from mbv2_search.cost import costs

    cost_ = costs(spec)
    payload = {
        **result.as_dict(),
        "madds": cost_.madds,
        "params": cost_.params,
        "peak_activation_bytes": cost_.peak_activation_bytes,
        "dataset": dataset,
        "recipe": recipe.model_dump(),
        "knobs": spec.knobs.as_dict(),
        "init_layout": init,
    }
    if as_json:
        payload.pop("history")
        click.echo(json.dumps(payload))
        return
    console.print(
        f"val_acc {result.val_acc:.4f}  test_acc {result.test_acc:.4f}  {result.epochs} epochs in {result.train_seconds:.1f} s "
        f"({result.train_images_per_second:,.0f} train images/s, {result.device}, {result.memory_format}"
        f"{', CUDA graphs' if result.cuda_graphs else ''})\n"
        f"{cost_.madds / 1e6:.2f} M MAdds, {cost_.params / 1e6:.3f} M params; run folder {result.run_dir}"
    )
    if init:
        console.print(f"initialised from {init}" + (f"; {result.init}" if result.init else ""))
