"""Datasets as tensors on the training device, batched on-device augmentation; image folders via DataLoader.

Nothing is downloaded: digits ship with scikit-learn, CIFAR and image folders come from local disk.
"""

from __future__ import annotations

import functools
import math
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mbv2_search.datasets import DATASETS, VAL_FRACTION, Dataset
from mbv2_search.errors import DataError
from mbv2_search.imagefolder import (
    FULL_CHECK,
    SPLIT_SEED,
    FolderData,
    imagefolder_classes,
    load_imagefolder,
    readable,
    root_of,
)
from mbv2_search.preprocessing import INTERPOLATION, record


@dataclass
class Split:
    """Images (uint8 or float, N x C x H x W) and labels (N) on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TensorData:
    """A dataset that fits in memory: three splits on the device plus how to prepare batches."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resolution: int
    flip: bool  # horizontal flips are label-preserving (not for digits)
    translate: float  # random translation, as a fraction of the side
    pixel_max: float = 255.0  # raw pixel values divided by it: 0..1
    antialias: bool = True  # resizing filters first when it shrinks
    # resizing is linear and its weights sum to 1, so it commutes with normalising; recorded in one order
    steps: tuple[str, ...] = ("scale", "resize", "normalize", "grey_to_rgb")

    def split_sizes(self) -> dict[str, int]:
        """Images in each split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def preprocessing(self) -> dict[str, object]:
        """How an image becomes this data's model input (preprocessing.record), from the values used here."""
        return record(
            resolution=self.resolution,
            shorter_side=self.resolution,
            antialias=self.antialias,
            pixel_max=self.pixel_max,
            mean=self.mean,
            std=self.std,
            grey_to_rgb=self.train.images.shape[1] == 1,
            steps=self.steps if self.train.images.shape[1] == 1 else self.steps[:-1],
        )

    def loader(
        self,
        split: str,
        batch_size: int,
        *,
        train: bool = False,
        seed: int = 0,
        channels_last: bool = False,
        shard: tuple[int, int] = (0, 1),
        shuffle: bool = False,
    ) -> DeviceBatches:
        """Iterable of (images, labels) batches for a split, augmented when train is True; with shard
        (rank, ranks), training batches are this rank's share of global batches of batch_size x ranks;
        shuffle: unaugmented, in a seeded random order."""
        return DeviceBatches(
            self,
            getattr(self, split),
            batch_size,
            train=train,
            seed=seed,
            channels_last=channels_last,
            shard=shard,
            shuffle=shuffle,
        )


class DeviceBatches:
    """Batches cut from on-device tensors: no DataLoader, no per-image Python (as airbench does)."""

    def __init__(
        self,
        data: TensorData,
        split: Split,
        batch_size: int,
        *,
        train: bool,
        seed: int,
        channels_last: bool,
        shard: tuple[int, int] = (0, 1),
        shuffle: bool = False,
    ) -> None:
        self.data, self.split, self.batch_size, self.train, self.shuffle = data, split, batch_size, train, shuffle
        self.channels_last = channels_last
        self.rank, self.ranks = shard if train else (0, 1)  # evaluation: every rank sees the whole split
        device = split.images.device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        # sharded, every rank draws the same order from `generator`, and its own augmentation
        self.augmentation = self.generator
        if self.ranks > 1:
            self.augmentation = torch.Generator(device=device).manual_seed((seed * 7919 + self.rank + 1) % 2**63)
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(data.mean, device=device).view(shape)
        self.std = torch.tensor(data.std, device=device).view(shape)

    def __len__(self) -> int:
        # training drops the last partial batch so every step has the same shape (BatchNorm, compile)
        count = len(self.split) / (self.batch_size * self.ranks)
        return max(1, math.floor(count)) if self.train else math.ceil(count)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.split.images, self.split.labels
        n = len(labels)
        if self.train or self.shuffle:
            order = torch.randperm(n, device=images.device, generator=self.generator)
        else:
            order = torch.arange(n, device=images.device)
        for step in range(len(self)):
            start = (step * self.ranks + self.rank) * self.batch_size  # this rank's slice of the global batch
            index = order[start : start + self.batch_size]
            yield self.prepare(images[index]), labels[index]

    def prepare(self, batch: torch.Tensor) -> torch.Tensor:
        """To float, normalized, at the candidate's resolution, augmented when training."""
        batch = batch.float() / self.data.pixel_max if batch.dtype == torch.uint8 else batch.float()
        batch = (batch - self.mean) / self.std
        batch = resize(batch, self.data.resolution, antialias=self.data.antialias)
        if self.train:
            batch = self._augment(batch)
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return batch.contiguous(memory_format=memory_format)

    def _augment(self, batch: torch.Tensor) -> torch.Tensor:
        size, device = batch.shape[-1], batch.device
        shift = round(self.data.translate * size)
        if shift:
            batch = random_translate(batch, shift, generator=self.augmentation)
        if self.data.flip:
            flip = torch.rand(len(batch), device=device, generator=self.augmentation) < 0.5
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
        return batch


def resize(batch: torch.Tensor, resolution: int, *, antialias: bool) -> torch.Tensor:
    """A batch of square images at another side length: the one resize of the tensor loaders (and of the
    supernet's members), bilinear on pixel centres as PIL; unchanged where it has that size already."""
    if batch.shape[-1] == resolution:
        return batch
    return F.interpolate(batch, size=resolution, mode=INTERPOLATION, antialias=antialias, align_corners=False)


def random_translate(batch: torch.Tensor, shift: int, *, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `shift` pixels each way (zero fill): pad once, gather per image."""
    n, _, height, width = batch.shape
    padded = F.pad(batch, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (n, 1), device=batch.device, generator=generator)
    dx = torch.randint(0, 2 * shift + 1, (n, 1), device=batch.device, generator=generator)
    rows = torch.arange(height, device=batch.device) + dy  # n x H
    cols = torch.arange(width, device=batch.device) + dx  # n x W
    images = torch.arange(n, device=batch.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[images, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _split_indices(
    n: int, *, val: float, test: float, val_fraction: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/val/test indices: val and test shares of n, or val_fraction of the images outside test.

    The test images stay the same whatever val_fraction is, and val_fraction=None gives the fixed split.
    """
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_val, n_test = round(n * val), round(n * test)
    test_index = order[n_val : n_val + n_test]
    pool = np.concatenate([order[:n_val], order[n_val + n_test :]])  # ordered so that None keeps n_val first
    if val_fraction is not None:
        n_val = min(max(1, round(len(pool) * val_fraction)), len(pool) - 1)  # never an empty split
    return pool[n_val:], pool[:n_val], test_index


DIGITS_MAX = 16.0  # scikit-learn's digits count 0..16 dark cells of a 4x4 block per pixel
DIGITS_ANTIALIAS = False  # plain bilinear, as 0.1.0 resized; enlarging from 8 px, antialiasing changes nothing


@functools.cache
def _digits_source() -> tuple[np.ndarray, np.ndarray]:
    # scikit-learn parses a CSV on every call (0.3 s): read it once per process, resize per trial
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return bunch.images, bunch.target


def load_digits(resolution: int, device: torch.device, *, val_fraction: float | None = None) -> TensorData:
    """scikit-learn's bundled 8x8 digits (1,797 images), split 70/15/15 (or val_fraction of the 85% outside
    the test set), resized once to the resolution."""
    source_images, source_labels = _digits_source()
    images = torch.tensor(source_images, dtype=torch.float32).unsqueeze(1) / DIGITS_MAX
    images = resize(images, resolution, antialias=DIGITS_ANTIALIAS)
    labels = torch.tensor(source_labels, dtype=torch.long)
    train, val, test = (
        Split(images[i].to(device), labels[i].to(device))
        for i in _split_indices(len(labels), val=0.15, test=0.15, val_fraction=val_fraction)
    )
    mean, std = train.images.mean().item(), train.images.std().item()
    # 1/16 of the side is half an original pixel: a 1/8 shift (a whole 8x8 pixel) slowed short runs
    # from 97% to 95% validation accuracy after 10 epochs (width 0.35 at 32 px, measured)
    return TensorData(
        "digits",
        train,
        val,
        test,
        10,
        (mean,),
        (std,),
        resolution,
        flip=False,
        translate=1 / 16,
        pixel_max=DIGITS_MAX,
        antialias=DIGITS_ANTIALIAS,
    )


_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels"),
    "cifar100": ("cifar-100-python", ["train"], "test", b"fine_labels"),
}
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: missing; expected the CIFAR python-format batch file here")
    try:
        with path.open("rb") as handle:
            entry = pickle.load(handle, encoding="bytes")  # noqa: S301 - the standard CIFAR format is a pickle
        images = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except Exception as err:  # a damaged file can fail in many ways; all mean the same to the user
        raise DataError(f"{path}: not a readable CIFAR batch ({type(err).__name__}: {err})") from None
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def load_cifar(
    name: str,
    data_dir: str | Path | None,
    *,
    resolution: int,
    device: torch.device,
    val_fraction: float | None = None,
) -> TensorData:
    """CIFAR-10/100 from a local folder in the standard python format (torchvision's layout)."""
    folder_name, train_files, test_file, label_key = _CIFAR[name]
    classes = DATASETS[name].classes
    if data_dir is None:
        raise DataError(
            f"{name}: no data folder given; pass --data-dir (or data.dir) pointing at the folder holding {folder_name}/"
        )
    root = Path(data_dir)
    folder = root if (root / test_file).exists() else root / folder_name
    if not folder.is_dir():
        raise DataError(
            f"{root}: expected {folder_name}/ with {', '.join(train_files)} and {test_file} (the standard CIFAR python format)"
        )
    parts = [_read_cifar_batch(folder / f, label_key) for f in train_files]
    images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    test_images, test_labels = _read_cifar_batch(folder / test_file, label_key)
    if labels.min() < 0 or labels.max() >= classes:
        raise DataError(f"{folder}: labels outside 0..{classes - 1}")
    train_index, val_index, _ = _split_indices(len(labels), val=VAL_FRACTION, test=0.0, val_fraction=val_fraction)

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))

    return TensorData(
        name,
        split(images[train_index], labels[train_index]),
        split(images[val_index], labels[val_index]),
        split(test_images, test_labels),
        classes,
        _CIFAR_MEAN,
        _CIFAR_STD,
        resolution,
        flip=True,
        translate=4 / 32,  # the usual 4-pixel pad-and-crop
    )


def check_source(name: str, data_dir: str | Path | None) -> None:
    """Check that a dataset's files are there and readable, without keeping them (before any trial runs)."""
    if name in _CIFAR:
        load_cifar(name, data_dir, resolution=1, device=torch.device("cpu"))
    elif name == "imagefolder":
        # once per run, not per trial: every image of a small folder, the first of each class otherwise
        every = [images for split in imagefolder_classes(root_of(data_dir)).values() for images in split.values()]
        full = sum(map(len, every)) <= FULL_CHECK
        for images in every:
            for path in images if full else images[:1]:
                readable(path)


def load_dataset(
    name: str,
    resolution: int,
    *,
    device: torch.device,
    data_dir: str | Path | None = None,
    workers: int = 4,
    val_fraction: float | None = None,
) -> TensorData | FolderData:
    """Load a dataset by name for a candidate's resolution.

    Args:
        name: one of digits, cifar10, cifar100, imagefolder.
        resolution: the candidate's input resolution.
        device: where in-memory datasets live (the training device).
        data_dir: the local folder for cifar10/cifar100/imagefolder.
        workers: DataLoader worker processes for imagefolder.
        val_fraction: the share of the images outside the test set that validates; None: the dataset's
            own (datasets.DATASETS[name].validation).
    """
    if name not in DATASETS:
        raise DataError(f"dataset: got {name!r}; allowed: {', '.join(DATASETS)}")
    dataset = DATASETS[name]
    return globals()[f"_{dataset.loader}"](dataset, data_dir, resolution, device, workers, val_fraction)


# The registry's loaders under one signature: (dataset, data_dir, resolution, device, workers, val_fraction).
def _load_digits(
    dataset: Dataset, data_dir: object, resolution: int, device: torch.device, workers: int, val_fraction: float | None
) -> TensorData:
    return load_digits(resolution, device, val_fraction=val_fraction)


def _load_cifar(
    dataset: Dataset, data_dir: object, resolution: int, device: torch.device, workers: int, val_fraction: float | None
) -> TensorData:
    return load_cifar(dataset.name, data_dir, resolution=resolution, device=device, val_fraction=val_fraction)


def _load_imagefolder(
    dataset: Dataset, data_dir: object, resolution: int, device: object, workers: int, val_fraction: float | None
) -> FolderData:
    return load_imagefolder(data_dir, resolution, workers=workers, val_fraction=val_fraction)
