"""Reading each dataset from disk into labelled parts: the CIFAR batches (unpickled safely), scikit-learn's digits,
torchvision's FakeData, and image folders (ImageFolder and Tiny ImageNet layouts).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hpsearch.core.data_config import DataConfig

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DatasetNotFound(Exception):
    """The dataset's files are not where the config says; the message says where and how to get them."""


class UnsafeDataFile(DatasetNotFound):
    """A pickled data file names something a dataset never holds (it could run code): refused, unread."""


# What the official CIFAR batches (numpy 1.x, Python 2, protocol 2) and copies re-pickled by Python 3
# name, besides the dicts, lists, bytes, str and ints that pickle builds without naming any global.
# Anything else a pickle names (os.system, builtins.exec, ...) would be called while loading.
_CIFAR_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),  # numpy 1.x; numpy 2 moved it to numpy._core
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3's protocols 0-2 spell a bytes object
})
_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


class _CifarUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path):
        super().__init__(file, encoding="bytes")  # Python 2 str objects stay bytes, as the keys expect
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise UnsafeDataFile(
                f"{self.path}: refused to load it: it names {module}.{name}, which no CIFAR batch holds "
                "and which could run code; replace the file with the official one"
            )
        if _NUMPY_2 and module.startswith("numpy.core."):  # the old path still works, with a DeprecationWarning
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> Any:
    """Unpickle a CIFAR batch admitting only numpy arrays and plain containers (see _CIFAR_GLOBALS)."""
    with open(path, "rb") as f:
        try:
            return _CifarUnpickler(f, path).load()
        except UnsafeDataFile:
            raise
        except Exception as e:  # truncated or not a pickle: say which file, in one line
            raise DatasetNotFound(f"{path}: not a readable CIFAR batch ({type(e).__name__}: {e})") from e


# --------------------------------------------------------------------------- readers


@dataclass
class _Part:
    """One part of a dataset as read from disk: uint8 images in host memory, or image files."""

    labels: torch.Tensor
    images: torch.Tensor | None = None
    paths: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: torch.Tensor) -> _Part:
        if self.images is not None:
            return _Part(self.labels[idx], images=self.images[idx])
        paths = self.files()
        return _Part(self.labels[idx], paths=[paths[i] for i in idx.tolist()])

    def files(self) -> list[str]:
        assert self.paths is not None, "a part read as arrays has no files"
        return self.paths


_CIFAR: dict[str, dict[str, Any]] = {
    "cifar10": dict(title="CIFAR-10", folder="cifar-10-batches-py",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    expect="data_batch_1..5 and test_batch", label_key=b"labels",
                    meta="batches.meta", names_key=b"label_names", classes=10, torchvision="CIFAR10"),
    "cifar100": dict(title="CIFAR-100", folder="cifar-100-python", train=["train"], test=["test"],
                     expect="train and test", label_key=b"fine_labels",
                     meta="meta", names_key=b"fine_label_names", classes=100, torchvision="CIFAR100"),
}


def _read_cifar(cfg: DataConfig) -> tuple[_Part, _Part, list[str]]:
    spec = _CIFAR[cfg.name]
    folder = Path(cfg.root) / spec["folder"]
    expected = f"{spec['title']} not found: expected {folder}/{spec['expect']}"
    if not all((folder / f).is_file() for f in spec["train"] + spec["test"]):
        if not cfg.download:
            raise DatasetNotFound(f"{expected}; set task.data.download: true to download it")
        import torchvision

        try:
            getattr(torchvision.datasets, spec["torchvision"])(cfg.root, train=True, download=True)
        except Exception as e:  # any network or archive failure: say where the files go instead
            raise DatasetNotFound(f"{expected}; downloading it failed ({e}); place the files there by hand") from e

    def read(files: list[str]) -> _Part:
        images, labels = [], []
        for name in files:
            batch = _load_pickle(folder / name)
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[spec["label_key"]], dtype=np.int64))
        return _Part(torch.from_numpy(np.concatenate(labels)), images=torch.from_numpy(np.concatenate(images)))

    meta = folder / spec["meta"]
    if meta.is_file():
        classes = [n.decode() for n in _load_pickle(meta)[spec["names_key"]]]
    else:
        classes = [str(i) for i in range(spec["classes"])]
    return read(spec["train"]), read(spec["test"]), classes


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images 1797×8×8 float64 in 0..16, labels): what `load_digits()` returns, read
    from the file it ships without importing scikit-learn (1.3 s of every worker's start-up otherwise)."""
    import gzip
    from importlib.machinery import PathFinder

    found = PathFinder.find_spec("sklearn")  # where the package is, without running it
    folders = found.submodule_search_locations if found else None
    path = Path(next(iter(folders))) / "datasets" / "data" / "digits.csv.gz" if folders else None
    if path is None or not path.is_file():  # another layout: ask scikit-learn itself
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",")
    return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(int)


def _read_digits(cfg: DataConfig) -> tuple[_Part, _Part, list[str]]:
    images_0_16, labels = digits_arrays()
    size = cfg.pixels
    grey = torch.from_numpy(images_0_16).float().unsqueeze(1) * (255 / 16)  # 16 grey levels → 0..255
    grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
    images = grey.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    whole = _Part(torch.from_numpy(labels).long(), images=images)
    train_idx, test_idx = _carve(whole.labels, cfg.held_out_test or 0.0, TEST_SPLIT_SEED)
    return whole.take(train_idx), whole.take(test_idx), [str(i) for i in range(10)]


def _read_fake(cfg: DataConfig) -> tuple[_Part, _Part, list[str]]:
    """Random images and labels, the same for every run (fixed seed): for timing and plumbing, not learning."""
    size = cfg.pixels
    g = torch.Generator().manual_seed(0)

    def make(n: int) -> _Part:
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        return _Part(torch.randint(0, cfg.num_classes, (n,), generator=g), images=images)

    # Its test images are made apart (random data: nothing to carve), held_out_test of `samples` of them.
    test_size = round(cfg.samples * (cfg.held_out_test or 0.0))
    return make(cfg.samples), make(test_size), [str(i) for i in range(cfg.num_classes)]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())


def _scan_imagefolder(cfg: DataConfig) -> tuple[_Part, _Part, list[str]]:
    root = Path(cfg.root)
    missing = DatasetNotFound(
        f"image folder not found: expected {root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg (or test/), "
        f"or Tiny ImageNet as it ships ({root}/wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
        f"val/val_annotations.txt); imagefolder datasets are never downloaded: put the files there")

    def part(files: list[tuple[Path, int]]) -> _Part:
        if not files:
            raise missing
        return _Part(torch.tensor([label for _, label in files], dtype=torch.long),
                     paths=[str(path) for path, _ in files])

    if (root / "wnids.txt").is_file():  # Tiny ImageNet
        classes = _wnids(root)
        index = {w: i for i, w in enumerate(classes)}
        train = [(p, i) for w, i in index.items() for p in _image_files(root / "train" / w / "images")]
        annotations = root / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise missing
        test = []
        for line in annotations.read_text().splitlines():
            if line.strip():
                filename, wnid = line.split("\t")[:2]
                if wnid not in index:
                    raise ValueError(f"{annotations}: class {wnid!r} of {filename} is not in {root / 'wnids.txt'}")
                test.append((root / "val" / "images" / filename, index[wnid]))
        return part(train), part(test), classes

    if not (root / "train").is_dir():
        raise missing
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    test_dir = root / "val" if (root / "val").is_dir() else root / "test"
    if not test_dir.is_dir():
        raise missing
    train = [(p, i) for c, i in index.items() for p in _image_files(root / "train" / c)]
    test = []
    for d in sorted(d for d in test_dir.iterdir() if d.is_dir()):
        if d.name not in index:
            raise ValueError(f"{test_dir} has class folder {d.name!r} that {root / 'train'} lacks")
        test += [(p, index[d.name]) for p in _image_files(d)]
    return part(train), part(test), classes


def _wnids(root: Path) -> list[str]:
    return [w.strip() for w in (root / "wnids.txt").read_text().splitlines() if w.strip()]


def class_count(cfg: DataConfig) -> int | None:
    """How many classes the task has, without reading its images; None for an image folder not there yet."""
    if cfg.name in _CIFAR:
        return _CIFAR[cfg.name]["classes"]
    if cfg.name in ("digits", "fake"):
        return 10 if cfg.name == "digits" else cfg.num_classes
    root = Path(cfg.root)
    if (root / "wnids.txt").is_file():
        return len(_wnids(root))
    if (root / "train").is_dir():  # the rule _scan_imagefolder reads them by
        return sum(1 for d in (root / "train").iterdir() if d.is_dir())
    return None


_READERS = {"cifar10": _read_cifar, "cifar100": _read_cifar, "digits": _read_digits,
            "fake": _read_fake, "imagefolder": _scan_imagefolder}


TEST_SPLIT_SEED = 0  # fixed: a carved test split must not move with split_seed


def _carve(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (rest, held-out ≈ fraction), stratified by label, seeded; fraction 0 holds out none."""
    if fraction == 0:
        return torch.arange(len(labels)), torch.zeros(0, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    held_parts, rest_parts = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = round(fraction * len(idx))
        held_parts.append(idx[:k])
        rest_parts.append(idx[k:])
    held, rest = torch.cat(held_parts), torch.cat(rest_parts)
    if len(held) == 0:  # tiny datasets: every class rounded down to nothing, still hold out one example
        held, rest = rest[:1], rest[1:]
    return rest.sort().values, held.sort().values
