"""The datasets registry: one entry per dataset drives the study schema, the CLI choice and the class count.

Torch-free, so reading a study imports no torch; data.py holds the loaders each entry names.
"""

from __future__ import annotations

from dataclasses import dataclass

# The validation share of the images outside the test set, where a dataset does not fix its own (CIFAR,
# image folders). The binomial standard error of an accuracy p over n images is sqrt(p(1-p)/n): about 1
# point at 90% needs 900 images. A tenth gives CIFAR-10 5,000 (0.4 points) and a folder of 10 classes of
# 1,000 images 1,000 (1 point), while 90% of the images still train; a fifth would halve the variance
# only, for twice the images taken from training. (ImageNet holds out 50 images per class, 0.04 of its
# training set size: enough there at 1,000 classes, too few for small folders.)
VAL_FRACTION = 0.1
VAL_FRACTION_ALLOWED = (
    "a fraction strictly between 0 and 1 (the share of the images outside the test set that validates)"
)


def check_val_fraction(value: object) -> float:
    """The validation fraction as a float; a ValueError saying what is allowed otherwise (the caller names
    the key and the value)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"allowed: {VAL_FRACTION_ALLOWED}")
    return float(value)


@dataclass(frozen=True)
class Dataset:
    """A dataset a study or `train` can name."""

    name: str
    classes: int | None  # None: counted from the data folder
    loader: str  # the data.py function: (dataset, data_dir, resolution, device, workers, val_fraction)
    layout: str  # what --data-dir / data.dir must hold; '' where the data ships with a package
    help: str
    validation: str  # which images validate by default (val_fraction unset)


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "digits",
            10,
            "load_digits",
            "",
            "8x8 handwritten digits, 1,797 images; ships with scikit-learn",
            "270 images (the fixed 70/15/15 split: 0.177 of the 1,527 outside the test set)",
        ),
        Dataset(
            "cifar10",
            10,
            "load_cifar",
            "cifar-10-batches-py/ (data_batch_1..5, test_batch)",
            "CIFAR-10, python format",
            f"{VAL_FRACTION} of the training batches",
        ),
        Dataset(
            "cifar100",
            100,
            "load_cifar",
            "cifar-100-python/ (train, test)",
            "CIFAR-100, python format",
            f"{VAL_FRACTION} of the training batches",
        ),
        Dataset(
            "imagefolder",
            None,
            "load_imagefolder",
            "train/ and val/ (or test/) of class sub-folders",
            "your own images",
            f"{VAL_FRACTION} of each class of train/, stratified",
        ),
    )
}
