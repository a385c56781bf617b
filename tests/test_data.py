from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mbv2_search.data import DataError, load_dataset, random_translate

CPU = torch.device("cpu")


def write_cifar(root, name="cifar10", n=20):
    """A tiny CIFAR-format folder the test makes itself."""
    folder, files, test, key, classes = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels", 10),
        "cifar100": ("cifar-100-python", ["train"], "test", b"fine_labels", 100),
    }[name]
    directory = root / folder
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for file_name in [*files, test]:
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: list(rng.integers(0, classes, n))}
        (directory / file_name).write_bytes(pickle.dumps(entry))
    return root


def test_digits_split_is_fixed_and_resized():
    a = load_dataset("digits", 16, device=CPU)
    b = load_dataset("digits", 16, device=CPU)
    assert (len(a.train), len(a.val), len(a.test)) == (1257, 270, 270)
    assert a.train.images.shape[1:] == (1, 16, 16) and torch.equal(a.val.labels, b.val.labels)
    x, y = next(iter(a.loader("train", 32, train=True, seed=1)))
    assert x.shape == (32, 3, 16, 16) and y.shape == (32,)


def test_cifar_folder_loads_with_flip_and_translate(tmp_path):
    data = load_dataset("cifar10", 24, device=CPU, data_dir=write_cifar(tmp_path))
    assert data.num_classes == 10 and data.flip and data.train.images.dtype == torch.uint8
    assert len(data.train) + len(data.val) == 100 and len(data.test) == 20
    x, _ = next(iter(data.loader("train", 8, train=True, channels_last=True)))
    assert x.shape == (8, 3, 24, 24) and x.is_contiguous(memory_format=torch.channels_last)
    assert (
        load_dataset("cifar100", 32, device=CPU, data_dir=write_cifar(tmp_path / "c100", "cifar100")).num_classes == 100
    )


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda root: None, "expected cifar-10-batches-py/"),
        (
            lambda root: (write_cifar(root), (root / "cifar-10-batches-py" / "data_batch_3").unlink()),
            "data_batch_3: missing",
        ),
        (
            lambda root: (write_cifar(root), (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")),
            "test_batch: not a readable CIFAR batch",
        ),
    ],
)
def test_cifar_errors_say_what_is_expected_where(tmp_path, damage, needle):
    damage(tmp_path)
    with pytest.raises(DataError, match=needle):
        load_dataset("cifar10", 32, device=CPU, data_dir=tmp_path)


def test_cifar_needs_a_folder():
    with pytest.raises(DataError, match="pass --data-dir"):
        load_dataset("cifar10", 32, device=CPU, data_dir=None)


def test_image_folder(tmp_path):
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((40, 30, 3), 40 * i, dtype=np.uint8)).save(
                    tmp_path / split / label / f"{i}.png"
                )
    data = load_dataset("imagefolder", 16, device=CPU, data_dir=tmp_path, workers=0)
    assert data.num_classes == 2
    x, y = next(iter(data.loader("train", 4, train=True)))
    assert x.shape == (4, 3, 16, 16)
    x, y = next(iter(data.loader("test", 6)))  # val/ is the test set
    assert x.shape == (6, 3, 16, 16) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    x, y = next(iter(data.loader("val", 6)))  # validation: held out of train/, one per class here
    assert sorted(y.tolist()) == [0, 1] and data.split_sizes() == {"train": 4, "val": 2, "test": 6}
    train_files = {data.loader("train", 1).dataset.dataset.samples[i][0] for i in data._held_out[0]}
    val_files = {data.loader("val", 1).dataset.dataset.samples[i][0] for i in data._held_out[1]}
    assert not train_files & val_files and len(train_files | val_files) == 6  # disjoint, and all of train/
    (tmp_path / "val" / "dog").rename(tmp_path / "val" / "bird")
    with pytest.raises(DataError, match="must match"):
        load_dataset("imagefolder", 16, device=CPU, data_dir=tmp_path)


def test_random_translate_moves_content_within_bounds():
    batch = torch.zeros(64, 1, 9, 9)
    batch[:, :, 4, 4] = 1.0
    moved = random_translate(batch, 2, generator=torch.Generator().manual_seed(0))
    positions = moved[:, 0].flatten(1).argmax(1)
    rows, cols = positions // 9, positions % 9
    assert moved.sum() == 64  # nothing lost: the dot moves at most 2 pixels
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len(set(positions.tolist())) > 5


def test_a_test_folder_is_the_test_set_and_validation_is_stratified(tmp_path):
    for split, count in (("train", 20), ("test", 4)):
        for label in ("cat", "dog", "eel"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((12, 12, 3), 9 * i, dtype=np.uint8)).save(tmp_path / split / label / f"{i}.png")
    data = load_dataset("imagefolder", 16, device=CPU, data_dir=tmp_path, workers=0)
    assert data.split_sizes() == {"train": 54, "val": 6, "test": 12}  # 10% of each class: 2 of 20
    labels = sorted(y for _, ys in data.loader("val", 8) for y in ys.tolist())
    assert labels == [0, 0, 1, 1, 2, 2]
    again = load_dataset("imagefolder", 16, device=CPU, data_dir=tmp_path, workers=0)
    assert again._held_out == data._held_out  # seeded: every trial of a study sees the same split


def test_val_fraction_moves_images_between_train_and_val_only(tmp_path):
    fixed = load_dataset("digits", 8, device=CPU)
    default = load_dataset("digits", 8, device=CPU, val_fraction=None)
    assert torch.equal(fixed.val.images, default.val.images) and torch.equal(fixed.train.labels, default.train.labels)
    wider = load_dataset("digits", 8, device=CPU, val_fraction=0.3)
    assert wider.split_sizes() == {"train": 1069, "val": 458, "test": 270}  # 0.3 of the 1,527 outside test
    assert torch.equal(wider.test.images, fixed.test.images)  # the test set never moves
    pooled = torch.cat([wider.train.images, wider.val.images]).flatten(1).sum(1).sort().values
    assert torch.equal(pooled, torch.cat([fixed.train.images, fixed.val.images]).flatten(1).sum(1).sort().values)
    cifar = load_dataset("cifar10", 32, device=CPU, data_dir=write_cifar(tmp_path), val_fraction=0.25)
    assert cifar.split_sizes() == {"train": 75, "val": 25, "test": 20}


def test_image_folder_val_fraction_is_per_class(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / "train" / label).mkdir(parents=True)
        (tmp_path / "val" / label).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((8, 8, 3), 9 * i, dtype=np.uint8)).save(tmp_path / "train" / label / f"{i}.png")
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "val" / label / "0.png")
    data = load_dataset("imagefolder", 8, device=CPU, data_dir=tmp_path, workers=0, val_fraction=0.3)
    assert data.split_sizes() == {"train": 14, "val": 6, "test": 2}  # 3 of each class's 10
    assert load_dataset("imagefolder", 8, device=CPU, data_dir=tmp_path, workers=0).split_sizes()["val"] == 2
