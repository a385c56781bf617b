"""Exports record their preprocessing: the ONNX model fed from the YAML alone predicts as `eval` does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mbv2_search.cli import main
from mbv2_search.data import load_dataset
from mbv2_search.export import export_trial
from mbv2_search.model import build_model
from mbv2_search.workers import work
from tests.test_search import context

README = Path(__file__).parent.parent / "README.md"


def readme_preprocess():
    """The README's `preprocess` function, run as printed there."""
    section = README.read_text().split("### Feeding the ONNX model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - our own README
    return namespace["preprocess"]


def exported(tmp_path, **changes):
    """A one-trial study trained and exported with ONNX: the YAML's preprocessing and the paths."""
    pytest.importorskip("onnxruntime")
    ctx = context(tmp_path, n_trials=1, **changes)
    work(ctx)
    written = export_trial(ctx, 0, out_dir=tmp_path / "out", onnx=True)
    return ctx, yaml.safe_load(Path(written["table"]).read_text())["preprocessing"], written


def check_against_eval(capsys, written, pre, raw_images, *, data, eval_args):
    """ONNX logits on the raw images preprocessed from `pre` alone equal the model's on the loader's
    batches, and the count of correct predictions equals eval's."""
    import onnxruntime

    preprocess = readme_preprocess()
    batch = np.concatenate([preprocess(image, pre) for image in raw_images])
    session = onnxruntime.InferenceSession(written["onnx"], providers=["CPUExecutionProvider"])
    logits = session.run(None, {pre["input"]["name"]: batch})[0]
    spec_model = torch.load(written["weights"], weights_only=True)
    inputs, labels = (torch.cat(parts) for parts in zip(*data.loader("val", 64)))
    assert np.abs(batch - inputs.numpy()).max() < 1e-4  # the same input, from the YAML alone
    model = build_model(data_spec(written)).eval()
    model.load_state_dict(spec_model)
    with torch.no_grad():
        assert np.abs(logits - model(inputs).numpy()).max() < 1e-3
    capsys.readouterr()  # what training and export printed
    main(["eval", "--table", written["table"], "--weights", written["weights"], "--json", *eval_args])
    payload = json.loads(capsys.readouterr().out)
    assert int((logits.argmax(1) == labels.numpy()).sum()) == payload["correct"] and payload["images"] == len(labels)


def data_spec(written):
    from mbv2_search.arch import build_spec
    from mbv2_search.config import load_arch_file

    arch_file = load_arch_file(written["table"])
    return build_spec(arch_file.knobs.to_knobs(), arch_file.to_table())


def test_digits_onnx_fed_from_the_yaml_predicts_as_eval(tmp_path, capsys):
    from sklearn.datasets import load_digits

    from mbv2_search.data import _split_indices

    ctx, pre, written = exported(tmp_path)
    data = load_dataset("digits", pre["input"]["size"], device=torch.device("cpu"))
    assert pre["mean"] == [pytest.approx(data.mean[0])] and pre["grey_to_rgb"] and pre["pixel_max"] == 16
    assert pre["resize"] == {
        "shorter_side": data.resolution,
        "center_crop": data.resolution,
        "interpolation": "bilinear",
        "antialias": False,
        "align_corners": False,
    }
    _, val_index, _ = _split_indices(1797, val=0.15, test=0.15)
    raw = load_digits().images[val_index]  # 8x8, 0..16, in the order eval reads them
    check_against_eval(capsys, written, pre, raw, data=data, eval_args=[])


def write_folder(root):
    """Two classes of non-square RGB images: the shorter-side resize and the centre crop both matter."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("val", 2)):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (14 + i, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    return root


def test_image_folder_onnx_fed_from_the_yaml_predicts_as_eval(tmp_path, capsys):
    folder = write_folder(tmp_path / "images")
    data_config = {"dataset": "imagefolder", "dir": str(folder), "workers": 0, "val_fraction": 0.3}
    training = {"epochs": 1, "batch_size": 4, "device": "cpu"}
    ctx, pre, written = exported(tmp_path, data=data_config, training=training)
    assert pre["steps"] == ["resize", "scale", "normalize"] and pre["pixel_max"] == 255
    assert pre["resize"]["shorter_side"] == round(pre["input"]["size"] / 0.875) and not pre["grey_to_rgb"]
    data = load_dataset(
        "imagefolder", pre["input"]["size"], device=torch.device("cpu"), data_dir=folder, workers=0, val_fraction=0.3
    )
    files = [data.loader("val", 1).dataset.dataset.samples[i][0] for i in data._held_out[1]]
    raw = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    args = ["--dataset", "imagefolder", "--data-dir", str(folder), "--workers", "0", "--val-fraction", "0.3"]
    check_against_eval(capsys, written, pre, raw, data=data, eval_args=args)


def test_a_block_table_with_preprocessing_still_loads(tmp_path, capsys):
    ctx, pre, written = exported(tmp_path)
    capsys.readouterr()
    main(["cost", "--table", written["table"], "--json"])
    assert json.loads(capsys.readouterr().out)["madds"] > 0
