"""The task's data configuration, defined once: the spec builds it from `task.data`, the trainer reads it.

Torch-free (the spec builds it without torch) and free of hpsearch's other dependencies (data.py and
models.py, which need torch alone, import it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from hpsearch.core.hparams import AUGMENTS, DATASETS

PAD = 4  # random-crop padding (the CIFAR standard): images must be larger than it
WEIGHTS_FILE_SUFFIXES = (".pt", ".pth", ".bin")
# The share of a dataset held out for testing, where the dataset has no official test split. The
# others (CIFAR's test batches, an image folder's val/ or test/) are used as they are.
# Each dataset's own image size (image_size: null keeps it): the one table of it (DataConfig.pixels).
NATIVE_SIZES = {"cifar10": 32, "cifar100": 32, "digits": 32, "fake": 32, "imagefolder": 64}
DEFAULT_TEST_FRACTIONS = {"digits": 0.2, "fake": 0.25}


class DataConfigError(ValueError):
    """A refused `task.data` value: `field` names it, `problem` says what is wrong."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"data.{field} {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class DataConfig:
    """`task.data`: which dataset, how it is split and resized, and whether it is held in memory."""

    name: str
    root: str = "data"
    val_fraction: float = 0.1
    test_fraction: float | None = None  # None: DEFAULT_TEST_FRACTIONS; datasets with a test split: unused
    image_size: int | None = None  # None: the dataset's own size
    download: bool = False
    augment: str = "standard"
    num_classes: int = 10  # fake only
    samples: int = 512  # fake only
    # "auto": decode an image folder into memory when it fits; True: always; False: stream the files
    # (and keep array datasets in host memory).
    in_memory: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        rules = (
            ("name", self.name in DATASETS, f"must be one of {', '.join(DATASETS)}"),
            ("val_fraction", 0 < self.val_fraction < 1, "must be in (0, 1)"),
            ("image_size", self.image_size is None or self.image_size > PAD, f"must be > {PAD}"),
            ("augment", self.augment in AUGMENTS, f"must be one of {', '.join(AUGMENTS)}"),
            ("num_classes", self.num_classes >= 1, "must be >= 1"),
            ("samples", self.samples >= 2, "must be >= 2"),
            ("in_memory", self.in_memory == "auto" or isinstance(self.in_memory, bool), "must be auto, true or false"),
        )
        for field, ok, rule in rules:
            if not ok:
                raise DataConfigError(field, f"{rule}, got {getattr(self, field)!r}")
        if self.test_fraction is not None:
            if self.name not in DEFAULT_TEST_FRACTIONS:
                raise DataConfigError("test_fraction", f"does not apply to {self.name}: its own test split is used "
                                                       "as it is (leave test_fraction out)")
            if not 0 <= self.test_fraction < 1:
                raise DataConfigError("test_fraction", f"must be in [0, 1), got {self.test_fraction!r}")
            if self.test_fraction + self.val_fraction >= 1:
                raise DataConfigError("test_fraction", f"plus val_fraction must be below 1, got {self.test_fraction!r} "
                                                       f"+ {self.val_fraction!r}")

    @property
    def pixels(self) -> int:
        """The side of the images the model sees: image_size, else the dataset's own."""
        return self.image_size or NATIVE_SIZES[self.name]

    @property
    def held_out_test(self) -> float | None:
        """The share of the data carved out for testing; None where the dataset has its own test split."""
        if self.name not in DEFAULT_TEST_FRACTIONS:
            return None
        return DEFAULT_TEST_FRACTIONS[self.name] if self.test_fraction is None else self.test_fraction


def is_weights_path(weights: str) -> bool:
    """Whether `task.model.weights` names a state_dict file (rather than "none", DEFAULT or a weights name)."""
    return "/" in weights or os.sep in weights or weights.endswith(WEIGHTS_FILE_SUFFIXES)
