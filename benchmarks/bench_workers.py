"""The search's own cost per trial, measured in one run, in three parts:

1. Scaling: a long study on the journal file (10,000 trials by default; random sampler over 86,400
   candidates; an MAdds bound that only the cheapest corner meets, so nothing trains), the overhead
   per trial (time between trial starts) over its first and its last tenth, and their ratio: 1.0
   means a trial costs as much at the end of the study as at its start.
2. Storage, on the journal file and on PostgreSQL, median over the trials: (a) a trained trial's
   storage calls as the worker and the objective make them, in three parts and in all: ask with the
   heartbeat's first write; 3 suggestions (Optuna's default sampler, TPE) with the candidate
   attribute; the ~30 result attributes with tell (on a commit without the one-write calls, Optuna's
   own calls and ledger.set_attrs, as its workers made them);
   (b) the whole trial loop with training, the fvcore count and the memory-format probe replaced
   by stubs that return at once (storage reads and writes, analytic costs: the search's own
   overhead per trained trial).
3. Throughput: trials per hour with 1, 2 and 4 local workers (tiny real trials: digits, 1 epoch).

PostgreSQL comes from MBV2_TEST_POSTGRES (bash scripts/with-postgres.sh starts a throwaway one).
To compare with another commit, copy this file into a worktree of it and run it there: it uses only
APIs that 0.2 already had, and the worker's newer calls where the commit has them.

Usage: bash scripts/with-postgres.sh .venv/bin/python benchmarks/bench_workers.py
       [--scaling-trials 10000] [--storage-trials 40] [--trials 8] [--skip scaling,storage,throughput]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbv2_search import ledger, space  # noqa: E402
from mbv2_search.arch import build_spec  # noqa: E402
from mbv2_search.config import ArchFile  # noqa: E402
from mbv2_search.cost import costs  # noqa: E402
from mbv2_search.objective import candidate_attrs  # noqa: E402
from mbv2_search.optuna_private import trial_id  # noqa: E402
from mbv2_search.search import load_context  # noqa: E402
from mbv2_search.storage import make_storage, open_study  # noqa: E402
from mbv2_search.workers import work  # noqa: E402

try:
    from mbv2_search.supervisor import start_workers
except ImportError:  # 0.2, for a before/after run on it
    from mbv2_search.workers import start_workers  # type: ignore[attr-defined, no-redef]
try:  # the worker's own calls, where this commit has them (else Optuna's, as its workers made them)
    from mbv2_search.trial_index import ask as index_ask
except ImportError:
    index_ask = None  # type: ignore[assignment]
ASK_WRITES_BEAT = index_ask is not None and "attrs" in inspect.signature(index_ask).parameters
try:
    from mbv2_search.optuna_private import suggestions_in_one_write
    from mbv2_search.optuna_private import tell as tell_with_attrs
except ImportError:
    suggestions_in_one_write = tell_with_attrs = None  # type: ignore[assignment]

TABLE = yaml.safe_load((ROOT / "search_spaces" / "per_stage.yaml").read_text())["table"]  # MobileNetV2's
BIG = {  # 24 widths x 25 resolutions x 4 depths x 4 expansions x 3 kernels x 3 = 86,400 candidates
    "width": {"low": 0.25, "high": 1.4, "step": 0.05},
    "resolution": {"low": 32, "high": 224, "step": 8},
    "depth": {"choices": [0.5, 0.75, 1.0, 1.25]},
    "expansion": {"choices": [2, 3, 4, 6]},
    "kernels": {"choices": [3, 5, 7]},
    "se_ratio": {"choices": [0.0, 0.125, 0.25]},
}
SMALL = {"width": {"choices": [0.25]}, "resolution": {"choices": [17, 18, 19, 20, 21, 22, 23, 24]}}


def write_study(folder: Path, *, vary: dict, table: dict | None = None, **changes: Any) -> Path:
    """A study file of digits on the CPU, random sampler, over this space; `changes` override."""
    space = {"knobs": {"num_classes": 10}, "vary": vary, **({"table": table} if table else {})}
    study = {
        "name": f"bench-{uuid.uuid4().hex[:6]}",
        "space": space,
        "data": {"dataset": "digits"},
        "training": {"epochs": 1, "batch_size": 256, "device": "cpu"},
        "sampler": {"name": "random", "seed": 0},
        **changes,
    }
    path = folder / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def cheapest_madds(path: Path) -> int:
    """The MAdds of the space's cheapest corner: the tightest bound a study may set."""
    arch_file = load_context(path).arch_file
    return min(costs(build_spec(k, arch_file.to_table())).madds for k in space.cheapest_knobs(arch_file))


def trial_gaps(ctx: Any) -> list[tuple[float, str]]:
    """Run the study in this process; (seconds from each trial's start to the next one's, what the trial
    came to: 'trained', 'duplicate' or 'other')."""
    starts: list[float] = []
    kinds: dict[int, str] = {}

    def on_event(kind: str, trial: Any) -> None:
        if kind == "start":
            starts.append(time.perf_counter())
            if len(starts) % 1000 == 0:
                print(f"  {len(starts)} trials started", file=sys.stderr, flush=True)
        elif trial.user_attrs.get("trained"):
            kinds[len(starts) - 1] = "trained"
        elif "duplicate_of" in trial.user_attrs:
            kinds[len(starts) - 1] = "duplicate"

    work(ctx, on_event=on_event)
    return [(b - a, kinds.get(i, "other")) for i, (a, b) in enumerate(zip(starts, starts[1:]))]


def scaling(folder: Path, trials: int) -> None:
    """Part 1: overhead per trial over the first and the last tenth of a long study of infeasible trials."""
    probe = write_study(folder, vary=BIG, table=TABLE, n_trials=trials, constraints={"madds": 1e12})
    path = write_study(folder, vary=BIG, table=TABLE, n_trials=trials, constraints={"madds": cheapest_madds(probe)})
    ctx = load_context(path, reports_root=folder / "reports")
    gaps = trial_gaps(ctx)
    window = max(1, len(gaps) // 10)
    state = ledger.counts(open_study(ctx).get_trials(deepcopy=False))
    trained = state["complete"] - state["infeasible"]
    print(f"\nScaling: {trials} trials on the journal file, random sampler, 86,400 candidates: windows of")
    print(
        f"{window} trial starts ({state['infeasible']} infeasible, {state['duplicate']} duplicates; {trained} trained, left out)\n"
    )
    print(f"| overhead per trial (ms) | first {window} | last {window} | last / first |\n|---|---:|---:|---:|")
    rows = [("mean", statistics.fmean, ("other", "duplicate")), ("median", statistics.median, ("other", "duplicate"))]
    rows.append(("mean, infeasible trials only", statistics.fmean, ("other",)))
    for label, statistic, kinds in rows:
        first, last = (
            statistic([gap * 1000 for gap, kind in part if kind in kinds]) for part in (gaps[:window], gaps[-window:])
        )
        print(f"| {label} | {first:.1f} | {last:.1f} | {last / first:.2f}x |", flush=True)


@contextlib.contextmanager
def stubbed_training() -> Iterator[None]:
    """Training, the fvcore count and the memory-format probe return at once (the trial loop alone remains)."""
    import mbv2_search.cost as cost_module
    import mbv2_search.devices as devices_module
    import mbv2_search.train as train_module

    def train(spec: Any, data: Any, *, seed: int, run_dir: Any, memory_format: str, **_: Any) -> Any:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        history = [{"val_acc": 0.9}] * 10
        return train_module.TrainResult(
            0.9, 0.9, 10, 1.0, 1000.0, 1.0, 0.1, "cpu", seed, memory_format, str(run_dir), "", history
        )

    saved = (train_module.train, cost_module.fvcore_count, devices_module._probe_channels_last)
    train_module.train = train
    cost_module.fvcore_count = lambda spec: cost_module.FvcoreCount({"conv": 0}, 0)
    devices_module._probe_channels_last = lambda spec, batch: False
    try:
        yield
    finally:
        train_module.train, cost_module.fvcore_count, devices_module._probe_channels_last = saved


def trained_attrs(spec: Any) -> dict[str, Any]:
    """The ~30 user attributes a trained trial stores (what the objective writes, fvcore's count included)."""
    cost = costs(spec)
    measured = {"madds": cost.madds, "params": cost.params, "peak_activation_bytes": cost.peak_activation_bytes}
    attrs = candidate_attrs(spec, cost, seed=0, measured=measured, latency_source=None)
    trained = {"trained": True, "val_acc": 0.93, "val_acc_stderr": 0.015, "test_acc": 0.92, "epochs": 10}
    trained |= {"train_seconds": 30.0, "train_images_per_second": 900.0, "train_step_seconds": 25.0}
    trained |= {"eval_seconds": 2.0, "device": "cpu", "hardware": "cpu x86_64", "memory_format": "contiguous"}
    trained |= {"run_dir": "trials/00001", "checkpoint": "trials/00001/best.ckpt", "feasible": True}
    trained |= {"split_sizes": {"train": 1257, "val": 270, "test": 270}, "val_acc_history": [0.9] * 10}
    trained |= {"fvcore_madds": cost.madds, "fvcore_by_operator": {"conv": cost.madds, "batch_norm": 1000}}
    return attrs | trained


def storage_calls_ms(url: str, trials: int) -> dict[str, float]:
    """Part 2a: median milliseconds of a trained trial's storage calls as a worker makes them: ask, the
    heartbeat's first write, 3 suggestions with the candidate attribute, and the ~30 results with tell
    (Optuna's default sampler, TPE). Commits before the one-write calls fall back to Optuna's own."""
    arch_file = ArchFile()  # MobileNetV2 1.0 at 224 px
    attrs = trained_attrs(build_spec(arch_file.knobs.to_knobs(), arch_file.to_table()))
    name = f"calls-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=make_storage(url), directions=["maximize", "minimize"])
    parts: dict[str, list[float]] = {"ask": [], "suggest": [], "tell": [], "all": []}
    for _ in range(trials):
        start = time.perf_counter()
        beat = {ledger.WORKER: ledger.worker_id(), "heartbeat": time.time()}
        if ASK_WRITES_BEAT:  # the heartbeat's first write goes with the new trial's (a commit since 0.3's)
            trial = index_ask(study, attrs=beat)
        else:
            trial = index_ask(study) if index_ask else study.ask()
            ledger.set_attrs(study, trial_id(trial), attrs=beat)
        asked = time.perf_counter()
        with suggestions_in_one_write(trial) if suggestions_in_one_write else contextlib.nullcontext({}) as held:
            for knob in ("width", "expansion", "kernels"):
                trial.suggest_categorical(knob, [1, 2, 3])
            held[ledger.CANDIDATE] = ledger.candidate_key(trial.params)
        if not suggestions_in_one_write:
            trial.set_user_attr(ledger.CANDIDATE, held[ledger.CANDIDATE])
        suggested = time.perf_counter()
        if tell_with_attrs:
            tell_with_attrs(study, trial, attrs=attrs, values=[0.93, attrs["madds"]])
        else:
            ledger.set_attrs(study, trial_id(trial), attrs=attrs)
            study.tell(trial, [0.93, attrs["madds"]])
        end = time.perf_counter()
        for part, seconds in zip(parts, (asked - start, suggested - asked, end - suggested, end - start)):
            parts[part].append(seconds)
    return {part: statistics.median(seconds) * 1000 for part, seconds in parts.items()}


def trial_loop_ms(folder: Path, url: str | None, trials: int) -> float:
    """Part 2b: median overhead of a trained trial with training stubbed, on this storage."""
    vary = {k: BIG[k] for k in ("width", "expansion", "kernels")}  # one resolution: the data loads once
    path = write_study(folder, vary=vary, table=TABLE, n_trials=trials, objectives=["val_acc", "madds"])
    ctx = load_context(path, url, reports_root=folder / "reports")
    with stubbed_training():
        gaps = trial_gaps(ctx)
    return statistics.median(gap for gap, _ in gaps[1:]) * 1000  # the first trial loads the data


def trials_per_hour(folder: Path, url: str | None, workers: int, trials: int) -> tuple[float, int]:
    """Part 3: tiny real trials with K worker processes."""
    ctx = load_context(write_study(folder, vary=SMALL, n_trials=trials), url, reports_root=folder / "reports")
    start = time.perf_counter()
    for process in start_workers(ctx, workers, reports_root=folder / "reports"):
        process.join()
    wall = time.perf_counter() - start
    done = ledger.counts(open_study(ctx).get_trials(deepcopy=False))["complete"]
    return done / wall * 3600, done


def print_storage(folder: Path, backends: list[tuple[str, str | None]], trials: int) -> None:
    print(f"\nStorage: a trained trial, median of {trials} trials: its storage calls as a worker makes them (2a:")
    print("ask with the heartbeat's first write; 3 suggestions with the candidate; ~30 results with tell; all),")
    print("and the whole trial loop with training stubbed (2b: storage reads and writes, analytic costs)\n")
    print(
        "| storage | 2a: ask (ms) | 2a: suggestions (ms) | 2a: results + tell (ms) | 2a: all (ms) | 2b: trial loop (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, url in backends:
        calls = storage_calls_ms(url or f"journal:{folder / 'calls.journal'}", trials)
        loop = trial_loop_ms(folder, url, trials)
        row = " | ".join(f"{calls[part]:.1f}" for part in ("ask", "suggest", "tell", "all"))
        print(f"| {label} | {row} | {loop:.1f} |", flush=True)


def print_throughput(folder: Path, backends: list[tuple[str, str | None]], trials: int) -> None:
    print(f"\nThroughput: tiny trials (digits, 1 epoch, width 0.25, 17-24 px), {trials} per run\n")
    print("| storage | 1 worker trials/h | 2 workers | 4 workers | 2 vs 1 | 4 vs 1 |\n|---|---:|---:|---:|---:|---:|")
    for label, url in backends:
        rates = {}
        for workers in (1, 2, 4):
            rate, done = trials_per_hour(folder, url, workers, trials)
            assert done == trials, f"{label}: {done} of {trials} trials completed with {workers} workers"
            rates[workers] = rate
        ratios = f"{rates[2] / rates[1]:.2f}x | {rates[4] / rates[1]:.2f}x"
        print(f"| {label} | {rates[1]:.0f} | {rates[2]:.0f} | {rates[4]:.0f} | {ratios} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scaling-trials", type=int, default=10_000)
    parser.add_argument("--storage-trials", type=int, default=40)
    parser.add_argument("--trials", type=int, default=8, help="trials per throughput run")
    parser.add_argument("--skip", default="", help="parts to skip: scaling, storage, throughput")
    args = parser.parse_args()
    postgres = os.environ.get("MBV2_TEST_POSTGRES")
    backends = [("journal file", None)] + ([("PostgreSQL", postgres)] if postgres else [])
    commit = os.popen(f"git -C {ROOT} describe --always --dirty").read().strip()
    print(f"{os.cpu_count()}-core CPU; commit {commit}")
    with tempfile.TemporaryDirectory() as tmp:
        if "scaling" not in args.skip:
            scaling(Path(tmp), args.scaling_trials)
        if "storage" not in args.skip:
            print_storage(Path(tmp), backends, args.storage_trials)
        if "throughput" not in args.skip:
            print_throughput(Path(tmp), backends, args.trials)
    if not postgres:
        print("\nPostgreSQL skipped: MBV2_TEST_POSTGRES is not set (run under scripts/with-postgres.sh)")


if __name__ == "__main__":
    main()
