"""Commands on one architecture or the paper's grid: cost, arch, table, latency-table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table as RichTable

from mbv2_search.arch import ArchSpec, build_spec
from mbv2_search.cli.app import UserError, cli, console, format_option, print_frame
from mbv2_search.cli.flags import arch_options, stored_study
from mbv2_search.cli.views import print_fvcore
from mbv2_search.conventions import CONVENTIONS
from mbv2_search.knobs import Knobs


@cli.command()
@arch_options
@click.option(
    "--precision-bytes",
    default=2,
    show_default=True,
    type=click.IntRange(1, 8),
    help="Bytes per activation value (2 = 16-bit, as paper Table 3).",
)
@click.option(
    "--fvcore", "with_fvcore", is_flag=True, help="Also build the module and count it with fvcore, per operator."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def cost(spec: ArchSpec, precision_bytes: int, with_fvcore: bool, as_json: bool) -> None:
    """Exact MAdds, parameters and peak activation memory of one variant, before building it."""
    from mbv2_search.cost import costs, fvcore_count

    result = costs(spec, precision_bytes)
    counted = fvcore_count(spec) if with_fvcore else None
    if as_json:
        payload: dict[str, Any] = {
            "madds": result.madds,
            "params": result.params,
            "peak_activation_bytes": result.peak_activation_bytes,
            "bn_params": result.bn_params,
            "bn_params_counted": spec.count_bn_params,
            "precision_bytes": precision_bytes,
            "knobs": spec.knobs.as_dict(),
        }
        if counted:  # fvcore_madds and module_params equal madds and params (+ BatchNorm where uncounted)
            payload["fvcore_madds"] = counted.madds
            payload["module_params"] = counted.module_params
            payload["fvcore"] = {  # kept as before, for scripts that read it
                "by_operator": counted.by_operator,
                "madds": counted.madds,
                "module_params": counted.module_params,
            }
        click.echo(json.dumps(payload))
        return
    table = RichTable(title=f"MobileNetV2 {spec.knobs.width:g} @ {spec.resolution} ({spec.convention})")
    table.add_column("cost")
    table.add_column("exact", justify="right")
    table.add_column("", justify="right")
    table.add_row("MAdds (conv + linear)", f"{result.madds:,}", f"{result.madds / 1e6:.2f} M")
    bn_note = "counted" if spec.count_bn_params else "not counted"
    table.add_row(f"parameters (BatchNorm {bn_note})", f"{result.params:,}", f"{result.params / 1e6:.2f} M")
    table.add_row(
        f"peak activation ({8 * precision_bytes}-bit, Table 3)",
        f"{result.peak_activation_bytes:,} B",
        f"{result.peak_activation_bytes / 1024:.0f} KiB",
    )
    console.print(table)
    if counted:
        print_fvcore(spec, result.madds, params=result.params, bn_params=result.bn_params, counted=counted)


@cli.command()
@arch_options
@format_option
@click.option(
    "--memory", is_flag=True, help="Also print the Table 3 view: widest materialized tensor per spatial size (16-bit)."
)
def arch(spec: ArchSpec, fmt: str, memory: bool) -> None:
    """The expanded layer table of a variant in the paper's Table 2 form, with per-row costs."""
    from mbv2_search.cost import costs
    from mbv2_search.report.arch_table import arch_table, memory_table

    print_frame(
        arch_table(spec), fmt, title=f"MobileNetV2 {spec.knobs.width:g} @ {spec.resolution} ({spec.convention})"
    )
    if memory:
        print_frame(memory_table(spec), fmt, title="activation memory per spatial size (16-bit, paper Table 3)")
    if fmt == "table":
        total = costs(spec)
        console.print(f"total: {total.madds:,} MAdds, {total.params:,} parameters")


_GRID_HEADERS = {
    "madds_m": "MAdds M",
    "madds_m_published": "published",
    "madds_m_diff": "Δ",
    "params_m": "params M",
    "params_m_published": "published ",
    "params_m_diff": "Δ ",
    "top1_published": "top-1 published",
    "tv_params": "torchvision params",
    "tv_params_diff": "Δ  ",
    "measured_acc": "study val acc",
    "measured_runs": "runs",
    "latency_ms": "latency ms (here)",
    "pixel1_ms_published": "Pixel-1 ms",
}


@cli.command()
@click.option(
    "--convention",
    type=click.Choice(list(CONVENTIONS)),
    default="tf-slim",
    show_default=True,
    help="tf-slim reproduces the published checkpoints exactly.",
)
@format_option
@click.option(
    "--study",
    "study_file",
    type=click.Path(path_type=Path, dir_okay=True),
    help="Add the accuracy this study measured per grid point, and its rank correlation with the published top-1.",
)
@click.option("--storage", help="Storage URL of --study (default: the study's own).")
@click.option(
    "--latency",
    is_flag=True,
    help="Measure batch-1 latency of each grid point on this host, beside the published Pixel-1 latency.",
)
@click.option(
    "--repeats",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Timed runs per point for --latency (after 5 warm-up runs).",
)
def table(convention: str, fmt: str, study_file: Path | None, storage: str | None, latency: bool, repeats: int) -> None:
    """The paper's width x resolution grid: reproduced MAdds and params beside the 22 published checkpoints."""
    from mbv2_search.report.paper import paper_grid, with_latency, with_study

    frame = paper_grid(convention)
    notes = []
    if study_file is not None:
        from mbv2_search.report.analysis import trials_frame

        ctx, study = stored_study(study_file, storage, reports=Path("reports"))
        trials = study.get_trials(deepcopy=False)
        frame, note = with_study(frame, trials_frame(trials))
        notes.append(note)
    if latency:
        import torch

        from mbv2_search.cost import measure_latency_ms
        from mbv2_search.devices import configure_cpu, hardware_name

        configure_cpu()
        measured = {}
        for width, resolution in zip(frame["width"], frame["resolution"]):
            spec = build_spec(Knobs(width=float(width), resolution=int(resolution), convention=convention))
            measured[(width, resolution)] = round(measure_latency_ms(spec, "cpu", repeats=repeats, warmup=5), 2)
        frame, note = with_latency(frame, measured, host=hardware_name(torch.device("cpu")))
        notes.append(note)
    shown = frame.drop(columns=["madds", "params"]).rename(columns=_GRID_HEADERS) if fmt == "table" else frame
    print_frame(
        shown, fmt, title=f"MobileNetV2 width x resolution, {convention} convention vs published TF-Slim checkpoints"
    )
    if fmt == "table":
        exact = int(((frame["madds_m_diff"] == 0) & (frame["params_m_diff"] == 0)).sum())
        console.print(
            f"{exact}/{len(frame)} rows match the published TF-Slim MAdds and parameters exactly (they follow --convention tf-slim)"
        )
        if "tv_params_diff" in frame:
            known = frame["tv_params_diff"].dropna()
            console.print(
                f"{int((known == 0).sum())}/{len(known)} rows match torchvision's own parameter counts exactly"
            )
    for note in notes:  # on stderr for md/csv, so the table itself stays clean to redirect
        if fmt == "table":
            console.print(note)
        else:
            click.echo(note, err=True)


@cli.command("latency-table")
@click.argument("space_file", type=click.Path(path_type=Path, dir_okay=True))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--classes",
    type=click.IntRange(1),
    help="Classifier size (default: the space's num_classes, else the convention's).",
)
@click.option(
    "--samples",
    type=click.IntRange(1),
    default=300,
    show_default=True,
    help="Random candidates when the space's grid is too large to enumerate.",
)
@click.option(
    "--repeats",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Timed runs per unit (after 5 warm-up runs).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Where to write the table (default reports/latency/<space>-<device>.json).",
)
def latency_table(
    space_file: Path, device: str, classes: int | None, samples: int, repeats: int, out: Path | None
) -> None:
    """Measure each distinct unit (stem, block, head) a space can produce on this device, for latency prediction."""
    from rich.progress import Progress

    from mbv2_search.config import load_arch_file
    from mbv2_search.devices import configure_cpu, resolve_device
    from mbv2_search.errors import TrainingError
    from mbv2_search.latency import build_table, space_specs

    arch_file = load_arch_file(space_file)
    try:
        torch_device = str(resolve_device(device))
    except (TrainingError, RuntimeError) as err:
        raise UserError(f"--device: {err}") from None
    if torch_device == "cpu":
        configure_cpu()
    specs, how = space_specs(arch_file, samples, num_classes=classes)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("measuring units", total=None)
        table = build_table(
            specs,
            torch_device,
            repeats=repeats,
            warmup=5,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    table.meta.update(space=str(space_file), candidates=how)
    out = (
        out or Path("reports") / "latency" / f"{arch_file.name or space_file.stem}-{torch_device.replace(':', '')}.json"
    )
    table.save(out)
    console.print(
        f"{len(table.units)} units measured from {how} on {table.hardware}; offset {table.offset_ms:.3f} ms; table: {out}"
    )
