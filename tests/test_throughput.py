"""Throughput: several workers packed on a GPU (backing off when it runs out of memory) and CUDA graphs.

The GPU paths run where there is a GPU (marked gpu); their bookkeeping is tested here on the CPU with
the GPU faked where only the count of GPUs matters.
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from mbv2_search import ledger, supervisor
from mbv2_search.arch import build_spec
from mbv2_search.data import load_dataset
from mbv2_search.knobs import Knobs
from mbv2_search.recipes import RECIPES
from mbv2_search.search import load_context
from mbv2_search.storage import open_study
from mbv2_search.train import TrainingOutOfMemory, train
from mbv2_search.workers import GpuCrowded, work
from tests.test_search import write_study

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")


def test_workers_per_gpu_packs_each_gpu_and_is_ignored_without_one(monkeypatch):
    assert supervisor.worker_devices("auto", 3, per_gpu=4) == ["cpu"] * 3  # no GPU here: --workers applies
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert supervisor.worker_devices("auto", 1, per_gpu=3) == ["cuda:0"] * 3 + ["cuda:1"] * 3
    assert supervisor.worker_devices("cuda", 3) == ["cuda:0", "cuda:1", "cuda:0"]  # one GPU each, round robin
    assert supervisor.worker_devices("cpu", 2, per_gpu=3) == ["cpu", "cpu"]  # the study trains on the CPU


def test_a_packed_worker_out_of_gpu_memory_requeues_its_trial_uncounted(tmp_path, monkeypatch):
    path = write_study(tmp_path, n_trials=2)
    ctx = load_context(path, reports_root=tmp_path / "reports")

    def out_of_memory(self, trial, spec, data, *, seed, callbacks):
        raise TrainingOutOfMemory("out of GPU memory on cuda:0 at batch size 32")

    monkeypatch.setattr("mbv2_search.objective.Evaluator._fit", out_of_memory)
    with pytest.raises(GpuCrowded):
        work(ctx, device="cpu", packed=True)
    trials = open_study(ctx).get_trials()
    first = trials[0]
    assert first.state == TrialState.FAIL and "GpuCrowded" in first.user_attrs[ledger.EXCLUDED]
    assert ledger.budget(trials).done == 0  # not counted
    assert trials[-1].state == TrialState.WAITING and trials[-1].user_attrs["retry_of"] == first.number
    # alone on its GPU, the same failure is the candidate's own: counted, not re-queued
    work(ctx, device="cpu")
    counted = [t for t in open_study(ctx).get_trials() if ledger.counted(t)]
    assert len(counted) == 2 and all("TrainingOutOfMemory" in t.user_attrs["fail_reason"] for t in counted)


def _exit(code: int) -> None:
    sys.exit(code)


def test_supervise_backs_off_a_crowded_gpu_down_to_one_worker_alone(tmp_path, monkeypatch):
    path = write_study(tmp_path, n_trials=1)
    ctx = load_context(path, reports_root=tmp_path / "reports")
    started = []

    def fake_start(ctx, device, *, threads, reports_root, packed=False):
        started.append((device, packed))
        process = multiprocessing.get_context("spawn").Process(target=_exit, args=(75 if packed else 0,))
        process.start()
        return process

    monkeypatch.setattr(supervisor, "start_worker", fake_start)
    monkeypatch.setattr(supervisor, "worker_devices", lambda device, workers, per_gpu=1, per_trial=1: ["cuda:0"] * 3)
    notes = []
    failures, stopped = supervisor.supervise(ctx, 3, per_gpu=3, on_note=notes.append)
    assert (failures, stopped) == ([], "")
    assert started == [("cuda:0", True)] * 3 + [("cuda:0", False)]  # never replaced while others share it
    assert sum("ran out of GPU memory on cuda:0" in n for n in notes) == 3 and "0 left there" in notes[-1]


def test_cuda_graphs_on_the_cpu_is_refused_and_auto_stays_eager(tmp_path):
    from mbv2_search.errors import TrainingError

    spec = build_spec(Knobs(width=0.35, resolution=16, num_classes=10, stem_stride=1))
    data = load_dataset("digits", 16, device=torch.device("cpu"))
    common = dict(epochs=1, batch_size=64, recipe=RECIPES["fast"], seed=0, device="cpu")
    with pytest.raises(TrainingError, match="cuda_graphs: got 'on' but the device is cpu"):
        train(spec, data, run_dir=tmp_path / "a", cuda_graphs="on", **common)
    assert train(spec, data, run_dir=tmp_path / "b", **common).cuda_graphs is False


@pytest.mark.gpu
@GPU
def test_cuda_graphs_train_as_eager_does(tmp_path):
    """The captured steps replay the eager kernels: the same seed gives the same curve (to GPU nondeterminism)."""
    spec = build_spec(Knobs(width=0.5, resolution=32, num_classes=10, stem_stride=1))
    data = load_dataset("digits", 32, device=torch.device("cuda"))
    runs = {
        mode: train(
            spec,
            data,
            epochs=3,
            batch_size=128,
            recipe=RECIPES["paper"],  # EMA, dropout, label smoothing: the RNG and the buffers matter
            seed=0,
            run_dir=tmp_path / mode,
            device="cuda",
            cuda_graphs=mode,
        )
        for mode in ("off", "on")
    }
    assert runs["on"].cuda_graphs and not runs["off"].cuda_graphs
    eager, graphed = ([h["train_loss"] for h in runs[m].history] for m in ("off", "on"))
    assert graphed == pytest.approx(eager, rel=2e-2), (eager, graphed)
    assert abs(runs["on"].val_acc - runs["off"].val_acc) <= 0.03


def test_a_bare_yaml_on_or_off_means_the_cuda_graphs_choice(tmp_path):
    from mbv2_search.study import load_study

    for word, meant in (("on", "on"), ("off", "off"), ("auto", "auto")):
        path = write_study(tmp_path, training={"epochs": 1, "device": "cpu"})
        text = Path(path).read_text().replace("device: cpu", f"device: cpu\n  cuda_graphs: {word}")
        Path(path).write_text(text)
        assert load_study(path)[0].training.cuda_graphs == meant
