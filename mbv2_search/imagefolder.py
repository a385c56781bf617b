"""Image folders: train/ and val/ (or test/) of class sub-folders, read by DataLoader workers."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mbv2_search.datasets import VAL_FRACTION
from mbv2_search.errors import DataError
from mbv2_search.preprocessing import record

SPLIT_SEED = 0  # fixed, so every trial of a study sees the same train/val/test split (every dataset)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's ImageNet statistics
CROP_SHARE = 0.875  # evaluation resizes to resolution / 0.875 and centre-crops: 224 of 256, TF-Slim's central fraction


@dataclass
class FolderData:
    """An image folder read by DataLoader worker processes: train/ and val/ (or test/) of class folders.

    Validation is a seeded, stratified hold-out of train/ (val_fraction of each class), so the images
    that choose checkpoints and candidates are never the ones reported: test/ is the test set where it
    exists, else val/ (what the paper reports on ImageNet).
    """

    name: str
    root: Path
    num_classes: int
    resolution: int
    workers: int
    val_fraction: float = VAL_FRACTION

    @property
    def test_folder(self) -> str:
        """test/ where it exists, else val/."""
        return "test" if (self.root / "test").is_dir() else "val"

    @functools.cached_property
    def _held_out(self) -> tuple[list[int], list[int]]:
        """Indices into train/ for training and for validation: val_fraction of every class, seeded."""
        by_class: dict[int, list[int]] = {}
        for index, label in enumerate(_folder(self.root / "train").targets):
            by_class.setdefault(label, []).append(index)
        rng = np.random.default_rng(SPLIT_SEED)
        train, val = [], []
        for label in sorted(by_class):
            indices = rng.permutation(by_class[label]).tolist()
            # every class validates and trains where it has two images
            count = min(max(round(len(indices) * self.val_fraction), 1), len(indices) - 1)
            val += indices[:count]
            train += indices[count:]
        return sorted(train), sorted(val)

    def split_sizes(self) -> dict[str, int]:
        """Images in each split (train and val disjoint, both from train/)."""
        train, val = self._held_out
        return {"train": len(train), "val": len(val), "test": len(_folder(self.root / self.test_folder))}

    @property
    def shorter_side(self) -> int:
        """The side an evaluated image's shorter side is resized to, before the centre crop."""
        return round(self.resolution / CROP_SHARE)

    def preprocessing(self) -> dict[str, object]:
        """How an image becomes the evaluated model input (preprocessing.record): torchvision's Resize on
        the 8-bit RGB image (PIL's antialiased bilinear), centre crop, then to 0..1 and normalised."""
        return record(
            resolution=self.resolution,
            shorter_side=self.shorter_side,
            antialias=True,
            pixel_max=255.0,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            grey_to_rgb=False,  # files are read as RGB (PIL convert): grey ones have 3 equal channels already
            steps=("resize", "scale", "normalize"),
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
    ):
        """A DataLoader: RandomResizedCrop + flip for training, resize + 0.875 center crop for evaluation; with
        shard (rank, ranks), training reads this rank's share (a DistributedSampler; Lightning sets its epoch);
        shuffle: evaluation's transform in a seeded random order (the split itself is in class order)."""
        from torchvision import transforms

        normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        if train:
            steps = [transforms.RandomResizedCrop(self.resolution), transforms.RandomHorizontalFlip()]
        else:
            steps = [transforms.Resize(self.shorter_side), transforms.CenterCrop(self.resolution)]
        transform = transforms.Compose([*steps, transforms.ToTensor(), normalize])
        if split == "test":
            dataset = _folder(self.root / self.test_folder, transform)
        else:
            indices = self._held_out[0 if split == "train" else 1]
            dataset = torch.utils.data.Subset(_folder(self.root / "train", transform), indices)
        generator = torch.Generator().manual_seed(seed)
        rank, ranks = shard
        sampler = None
        if train and ranks > 1:
            sampler = torch.utils.data.DistributedSampler(
                dataset, num_replicas=ranks, rank=rank, shuffle=True, seed=seed, drop_last=True
            )
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=(train or shuffle) and sampler is None,
            sampler=sampler,
            drop_last=train,
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.workers > 0,
            generator=generator,
        )


def _folder(path: Path, transform: object = None) -> object:
    """torchvision's ImageFolder over one split, reading images through _load_image."""
    from torchvision import datasets

    return datasets.ImageFolder(str(path), transform, loader=_load_image)


def _class_images(folder: Path) -> dict[str, list[Path]]:
    """Each class sub-folder of one split with its image files (torchvision's extensions), sorted."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return {
        c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        for c in sorted(folder.iterdir())
        if c.is_dir()
    }


FULL_CHECK = 5_000  # image folders up to this size have every image opened before a run; larger ones one per class


def _unreadable(path: object, err: Exception) -> DataError:
    return DataError(f"{path}: not a readable image ({type(err).__name__}: {err}); replace or remove it")


def readable(path: Path) -> None:
    """Open and verify one image; DataError naming it if it is not one."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise _unreadable(path, err) from None


def imagefolder_classes(root: Path) -> dict[str, dict[str, list[Path]]]:
    """Check an image folder's layout (both splits, the same classes, none empty); split -> class -> images."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    expected = "train/ and val/ (or test/), each with one sub-folder of images per class"
    present = [split for split in ("val", "test") if (root / split).is_dir()]
    for split in ("train", *([] if present else ["val"])):
        if not (root / split).is_dir():
            raise DataError(f"{root / split}: missing; expected {expected}")
    splits = {split: _class_images(root / split) for split in ("train", *present)}
    for split, classes in splits.items():
        if not classes:
            raise DataError(f"{root / split}: no class sub-folders; expected {expected}")
        for name, images in classes.items():
            if not images:
                raise DataError(f"{root / split / name}: no images ({', '.join(IMG_EXTENSIONS)}); expected {expected}")
    for split in present:
        if sorted(splits[split]) != sorted(splits["train"]):
            raise DataError(
                f"{root}: train/ has {len(splits['train'])} classes but {split}/ has {len(splits[split])}; they must match"
            )
    return splits


def _load_image(path: str) -> object:
    """torchvision's loader, with a DataError naming an unreadable file (found mid-run in large folders)."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except OSError as err:
        raise _unreadable(path, err) from None


def root_of(data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise DataError(
            "imagefolder: no data folder given; pass --data-dir (or data.dir) with train/ and val/ of class sub-folders"
        )
    return Path(data_dir)


def load_imagefolder(
    data_dir: str | Path | None, resolution: int, *, workers: int, val_fraction: float | None = None
) -> FolderData:
    """Check an image folder's layout: validation is held out of train/, test/ (or val/) is the test set."""
    root = root_of(data_dir)
    classes = len(imagefolder_classes(root)["train"])
    return FolderData("imagefolder", root, classes, resolution, workers, val_fraction or VAL_FRACTION)
