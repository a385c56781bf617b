from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from mbv2_search.arch import build_spec
from mbv2_search.data import load_dataset
from mbv2_search.knobs import Knobs
from mbv2_search.recipes import RECIPES
from mbv2_search.train import TrainingDiverged, WeightEMA, train

SPEC = build_spec(
    Knobs(width=0.35, resolution=16, stem_stride=1, strides=(1, 1, 2, 2, 1, 2, 1), num_classes=10, depth=0.5)
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 16, device=torch.device("cpu"))


def run(digits, tmp_path, **kwargs):
    options = {
        "epochs": 2,
        "batch_size": 64,
        "recipe": RECIPES["fast"],
        "seed": 3,
        "run_dir": tmp_path,
        "device": "cpu",
    }
    return train(SPEC, digits, **{**options, **kwargs})


def test_training_learns_and_writes_run_folder(digits, tmp_path):
    result = run(digits, tmp_path, epochs=4)
    assert result.val_acc > 0.5  # 10 classes: chance is 0.1
    assert 0 <= result.test_acc <= 1 and result.epochs == 4 and len(result.history) == 4
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "best.ckpt").is_file()
    assert result.train_images_per_second > 0 and result.train_seconds > 0


def test_same_seed_on_cpu_gives_same_metrics(digits, tmp_path):
    from mbv2_search.devices import _FORMAT_CACHE

    _FORMAT_CACHE.clear()  # the first run probes the memory format, the second finds it cached
    first = run(digits, tmp_path / "a")
    second = run(digits, tmp_path / "b")
    metrics = lambda result: [(h["train_loss"], h["train_acc"], h["val_acc"], h["val_loss"]) for h in result.history]  # noqa: E731
    assert metrics(first) == metrics(second)
    assert first.val_acc == second.val_acc and first.test_acc == second.test_acc


def test_divergence_stops_with_epoch_and_step(digits, tmp_path):
    recipe = RECIPES["fast"].model_copy(update={"lr": 1e30, "schedule": "constant"})
    with pytest.raises(TrainingDiverged, match=r"at epoch \d+, step \d+"):
        run(digits, tmp_path, recipe=recipe, epochs=3)


def test_paper_recipe_runs_with_ema(digits, tmp_path):
    result = run(digits, tmp_path, recipe=RECIPES["paper"], epochs=1)
    assert not math.isnan(result.val_acc)


def test_weight_ema_warms_up_like_tensorflow():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = WeightEMA(model, decay=0.9999)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.module.weight.fill_(0.0)
    ema.update(model)  # decay = min(0.9999, 2 / 11)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 1 - 2 / 11))


def test_recipes_scale_lr_with_batch():
    assert RECIPES["paper"].scaled_lr(192) == pytest.approx(0.09)
    assert RECIPES["paper"].label_smoothing == 0.1 and RECIPES["paper"].ema_decay == 0.9999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")
def test_gpu_training_uses_bf16_and_channels_last(digits, tmp_path):
    data = load_dataset("digits", 16, device=torch.device("cuda"))
    result = train(
        SPEC, data, epochs=2, batch_size=128, recipe=RECIPES["fast"], seed=0, run_dir=tmp_path, device="cuda"
    )
    assert result.device.startswith("cuda") and result.memory_format == "channels_last"


def imported_after(module: str) -> set[str]:
    """Top-level package names in sys.modules after importing module in a fresh interpreter."""
    code = f"import sys, {module}; print(' '.join(sorted({{name.split('.')[0] for name in sys.modules}})))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(run.stdout.split())


def test_recipes_import_neither_torch_nor_lightning():
    assert not imported_after("mbv2_search.recipes") & {"torch", "pytorch_lightning", "lightning"}


def test_device_helpers_import_no_lightning():
    assert not imported_after("mbv2_search.devices") & {"pytorch_lightning", "lightning"}
