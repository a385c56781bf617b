"""The datasets registry: one entry per dataset drives the study schema, the CLI choice and the class count.

Torch-free, so reading a study imports no torch; data.py holds the loaders each entry names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dataset:
    """A dataset a study or `train` can name."""

    name: str
    classes: int | None  # None: counted from the data folder
    loader: str  # the data.py function: (dataset, data_dir, resolution, device, workers) -> data
    layout: str  # what --data-dir / data.dir must hold; '' where the data ships with a package
    help: str


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("digits", 10, "load_digits", "", "8x8 handwritten digits, 1,797 images; ships with scikit-learn"),
        Dataset(
            "cifar10", 10, "load_cifar", "cifar-10-batches-py/ (data_batch_1..5, test_batch)", "CIFAR-10, python format"
        ),
        Dataset("cifar100", 100, "load_cifar", "cifar-100-python/ (train, test)", "CIFAR-100, python format"),
        Dataset(
            "imagefolder",
            None,
            "load_imagefolder",
            "train/ and val/ (or test/) of class sub-folders",
            "your own images",
        ),
    )
}
