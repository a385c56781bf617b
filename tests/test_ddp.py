"""One candidate on several devices: DDP over 2 CPU processes (gloo), with real helper processes."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal

import pytest
import pytorch_lightning as pl
import torch
from optuna.trial import TrialState

from mbv2_search import supervisor
from mbv2_search.data import load_dataset
from mbv2_search.distributed import HelperFailed
from mbv2_search.errors import TrainingError, environment_message
from mbv2_search.interrupts import Interrupted
from mbv2_search.model import build_model
from mbv2_search.recipes import RECIPES
from mbv2_search.storage import open_study, space_fingerprint
from mbv2_search.train import train
from mbv2_search.workers import work
from tests.test_search import context
from tests.test_train import SPEC

BATCH = 64


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 16, device=torch.device("cpu"))


class StepCounter(pl.Callback):
    """Optimizer steps per epoch and the learning rate the optimizer used, seen on rank 0."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.lrs: set[float] = set()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.lrs.add(trainer.optimizers[0].param_groups[0]["lr"])
        self.world = trainer.world_size

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.steps.append(trainer.global_step - self.start)


def run(digits, tmp_path, **kwargs):
    options = {"epochs": 2, "batch_size": BATCH, "recipe": RECIPES["fast"], "seed": 3, "run_dir": tmp_path}
    return train(SPEC, digits, device="cpu", devices=2, **{**options, **kwargs})


def test_two_processes_step_the_global_batch_at_the_scaled_rate(digits, tmp_path):
    recipe = RECIPES["fast"].model_copy(update={"schedule": "constant"})
    counter = StepCounter()
    result = run(digits, tmp_path, recipe=recipe, callbacks=[counter])
    n_train = digits.split_sizes()["train"]
    assert counter.world == 2
    assert counter.steps == [math.floor(n_train / (BATCH * 2))] * 2
    assert counter.lrs == {recipe.scaled_lr(BATCH * 2)}
    # the result is there as for one device: val_acc over the whole val set, checkpoint, history, sizes
    assert result.split_sizes == digits.split_sizes() and result.epochs == 2 and len(result.history) == 2
    assert 0 <= result.val_acc <= 1 and result.val_acc == max(h["val_acc"] for h in result.history)
    assert (tmp_path / "best.ckpt").is_file() and result.checkpoint == str(tmp_path / "best.ckpt")
    assert (tmp_path / "metrics.csv").is_file() and result.device == "cpu x 2"
    assert not torch.distributed.is_initialized() and "WORLD_SIZE" not in os.environ  # restored for the next trial
    # every rank evaluated the whole val set with the same weights: the stored number is that accuracy
    state = torch.load(result.checkpoint, weights_only=False)["state_dict"]
    model = build_model(SPEC).eval()
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in digits.loader("val", 256))
    assert correct / len(digits.val) == pytest.approx(result.val_acc, abs=1e-6)


class KillHelper(pl.Callback):
    """At the second epoch's start, SIGKILL the helper rank (or raise in rank 0 when `raise_in` is given)."""

    def __init__(self, raise_in: BaseException | None = None) -> None:
        self.raise_in = raise_in

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != 1:
            return
        if self.raise_in is not None:
            raise self.raise_in
        (helper,) = multiprocessing.active_children()
        os.kill(helper.pid, signal.SIGKILL)


def test_a_killed_helper_fails_the_run_and_leaves_no_process(digits, tmp_path):
    with pytest.raises(HelperFailed, match=r"rank 1 \(pid \d+\) was killed by SIGKILL while training") as failed:
        run(digits, tmp_path, epochs=3, callbacks=[KillHelper()])
    assert environment_message(failed.value) == str(failed.value)  # a search re-queues the trial, uncounted
    assert multiprocessing.active_children() == []
    assert not torch.distributed.is_initialized() and "WORLD_SIZE" not in os.environ


def test_interrupting_rank_zero_ends_its_helper(digits, tmp_path):
    with pytest.raises(Interrupted):
        run(digits, tmp_path, epochs=3, callbacks=[KillHelper(raise_in=Interrupted(signal.SIGTERM))])
    assert multiprocessing.active_children() == []
    assert not torch.distributed.is_initialized()


def test_devices_name_the_bad_value():
    with pytest.raises(TrainingError, match="devices: got 0; allowed: 1 or more"):
        train(SPEC, None, epochs=1, batch_size=8, recipe=RECIPES["fast"], seed=0, run_dir="x", devices=0)


class StopOnRankZero(pl.Callback):
    """As the search's pruner: asks to stop after the first epoch, on rank 0 only."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def test_a_stop_asked_on_rank_zero_stops_every_rank(digits, tmp_path):
    result = run(digits, tmp_path, epochs=3, callbacks=[StopOnRankZero()])
    assert result.epochs == 1 and len(result.history) == 1 and multiprocessing.active_children() == []


def test_a_study_trains_each_trial_on_two_processes(tmp_path):
    ctx = context(
        tmp_path, n_trials=1, training={"epochs": 1, "batch_size": 64, "device": "cpu", "devices_per_trial": 2}
    )
    report = work(ctx)
    (trial,) = open_study(ctx).get_trials()
    assert report.ran == 1 and trial.state == TrialState.COMPLETE
    assert trial.user_attrs["device"] == "cpu x 2" and trial.user_attrs["split_sizes"]["train"] == 1257
    assert (ctx.report_dir / "trials" / "00000" / "best.ckpt").is_file()


def test_devices_per_trial_counts_in_the_fingerprint_only_when_set(tmp_path):
    fingerprint = lambda **training: space_fingerprint(context(tmp_path, training=training))  # noqa: E731
    plain = {"epochs": 1, "batch_size": 64, "device": "cpu"}
    assert fingerprint(**plain) == fingerprint(**plain, devices_per_trial=1)  # stored studies still match
    assert fingerprint(**plain) != fingerprint(**plain, devices_per_trial=2)  # another global batch


def test_workers_get_gpus_in_groups_of_devices_per_trial(monkeypatch):
    assert supervisor.worker_devices("auto", 2, per_trial=2) == ["cpu", "cpu"]  # no GPU: each worker's 2 processes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 5)
    assert supervisor.worker_devices("auto", 1, per_trial=2) == ["cuda:0,cuda:1", "cuda:2,cuda:3"]  # 5 // 2 workers
    assert supervisor.worker_devices("cuda", 1, per_gpu=2, per_trial=2) == ["cuda:0,cuda:1"] * 2 + ["cuda:2,cuda:3"] * 2
    with pytest.raises(TrainingError, match="devices_per_trial: got 6 but this machine has 5 GPUs"):
        supervisor.worker_devices("auto", 1, per_trial=6)


def test_ranks_train_disjoint_slices_of_each_global_batch(digits):
    whole = [labels for _, labels in digits.loader("train", BATCH * 2, train=True, seed=3)]
    shards = [list(digits.loader("train", BATCH, train=True, seed=3, shard=(rank, 2))) for rank in (0, 1)]
    n_train = digits.split_sizes()["train"]
    assert len(shards[0]) == len(shards[1]) == len(whole) == n_train // (BATCH * 2)
    for step, labels in enumerate(whole):  # rank 0 the first half of the global batch, rank 1 the second
        assert torch.equal(torch.cat([shards[0][step][1], shards[1][step][1]]), labels)
    assert not torch.equal(shards[0][0][0], shards[1][0][0][: len(shards[0][0][0])])  # other images
    assert len(digits.loader("val", BATCH)) == math.ceil(len(digits.val) / BATCH)  # evaluation: the whole split


def test_an_image_folder_shards_training_with_a_distributed_sampler(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(10):
                Image.new("RGB", (20, 20), (12 * i, 0, 0)).save(tmp_path / split / label / f"{i}.png")
    data = load_dataset("imagefolder", 16, device=torch.device("cpu"), data_dir=tmp_path, workers=0)
    samplers = [data.loader("train", 2, train=True, seed=1, shard=(rank, 2)).sampler for rank in (0, 1)]
    first, second = (set(sampler) for sampler in samplers)
    assert first.isdisjoint(second) and len(first) == len(second) == data.split_sizes()["train"] // 2
    assert len(data.loader("val", 2, shard=(1, 2)).dataset) == data.split_sizes()["val"]  # not sharded
