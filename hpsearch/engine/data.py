"""Datasets for the trainer: splits kept on the device as uint8, batches augmented there.

airbench style: the whole dataset lives on the device as one uint8 NCHW tensor, and a batch's
random crop and flip are one gather on the device, so nothing on the training path waits for the
CPU. Image folders too large for that are decoded by DataLoader workers instead, behind the same
`batches()` interface. Torch-only on purpose: this module runs on GPU boxes that lack the rest of
hpsearch's dependencies.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hpsearch.core.data_config import PAD, DataConfig

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CPU_MEMORY_LIMIT = 4 * 2**30  # bytes of uint8 images `in_memory: auto` keeps in host memory
CUDA_MEMORY_SHARE = 0.25  # ... and the share of the process's available device memory on CUDA (fits_on_device)
TEST_SPLIT_SEED = 0  # fixed: a carved test split must not move with split_seed


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


# --------------------------------------------------------------------------- batch pipeline


class _Pipeline:
    """uint8 NCHW batch on the device → (optionally crop+flip) → float, normalised, resized."""

    def __init__(self, device: torch.device, mean, std, image_size: int, augment: bool):
        self.device = device
        self.image_size = image_size
        self.augment = augment
        # Normalising uint8 directly: (x/255 - mean)/std == (x - 255·mean) / (255·std).
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(std, device=device).view(1, 3, 1, 1) * 255)

    def __call__(self, x: torch.Tensor, augment: bool, generator: torch.Generator | None) -> torch.Tensor:
        if augment and self.augment:
            x = crop_flip(x, *self._draw(len(x), generator))
        x = (x.float() - self.mean) * self.inv_std
        size = self.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=size < x.shape[-1])
        # In whatever layout the ops made (channels_last after crop_flip): the consumer converts to its
        # own memory format, once, instead of this converting to NCHW and the trainer back again.
        return x

    def _draw(self, n: int, generator: torch.Generator | None):
        """Per-image crop offsets in [0, 2·PAD] and flip flags, drawn from `generator`."""
        where = generator.device if generator is not None else self.device
        offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator, device=where)
        flips = torch.randint(0, 2, (n,), generator=generator, device=where).bool()
        return offsets.to(self.device), flips.to(self.device)


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Random crop of a PAD-reflect-padded image back to its own size, then horizontal flip.

    One gather over the batch instead of padding it: output pixel (i, j) of image b reads source
    row i + offsets[b, 0] - PAD and column j + offsets[b, 1] - PAD, reflected at the border
    (as `F.pad(mode="reflect")` would), with the columns reversed where flips[b].
    """
    n, _, h, w = x.shape
    rows = _reflect(torch.arange(h, device=x.device) + offsets[:, :1] - PAD, h)  # (n, h)
    cols = _reflect(torch.arange(w, device=x.device) + offsets[:, 1:] - PAD, w)  # (n, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    b = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices around a slice put the indexed dims first: (n, h, w, c) → view as NCHW.
    return x[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    i = i.abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i).clamp_(0, n - 1)


def batch_bounds(n: int, batch_size: int, drop_last: bool = False) -> list[tuple[int, int]]:
    """[start, stop) of each batch of one pass over n items.

    The ragged last batch is kept (every image is seen every epoch) unless drop_last; a last batch
    of one single item joins the batch before it, since BatchNorm cannot train on one image. A split
    smaller than one batch is one batch of the whole split.
    """
    batch_size = max(1, min(batch_size, n))
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if drop_last and n % batch_size:
        bounds.pop()
    elif len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _permutation(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    where = generator.device if generator is not None else device
    return torch.randperm(n, generator=generator, device=where).to(device)


# --------------------------------------------------------------------------- splits


class TensorSplit:
    """A split held as one uint8 NCHW tensor: on the device, or in host memory when in_memory is false."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pipeline: _Pipeline):
        self.images = images
        self.labels = labels
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                drop_last: bool = False, generator: torch.Generator | None = None,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x float32 normalised, N×C×H×W in whatever layout the pipeline made, y int64), on the device.

        Batches as batch_bounds cuts them: drop_last keeps every batch the same shape.
        """
        n = len(self)
        order = _permutation(n, generator, self.images.device) if shuffle else None
        device = self.pipeline.device
        # Streamed from pinned host memory: gather shuffled batches into pinned memory too, or the
        # non_blocking copies below would be synchronous (pageable memory).
        pin = device.type == "cuda" and not self.images.is_cuda and self.images.is_pinned()
        for start, stop in batch_bounds(n, batch_size, drop_last):
            idx = slice(start, stop) if order is None else order[start:stop]
            x = self.take_rows(self.images, idx, pin).to(device, non_blocking=True)
            y = self.take_rows(self.labels, idx, pin).to(device, non_blocking=True)
            yield self.pipeline(x, augment, generator), y

    @staticmethod
    def take_rows(source: torch.Tensor, idx: torch.Tensor | slice, pin: bool) -> torch.Tensor:
        """source[idx] along dim 0; an index tensor's rows gathered into fresh pinned memory when `pin`
        (a slice is a view of source, so pinned when source is).

        Fresh rather than one reused buffer: torch's caching host allocator hands a pinned block out
        again only once the asynchronous copies recorded on it have finished, so a batch still being
        copied to the device is never overwritten by the next, and after the first batches the
        allocation comes from its cache.
        """
        if not pin or isinstance(idx, slice):
            return source[idx]
        out = torch.empty((len(idx), *source.shape[1:]), dtype=source.dtype, pin_memory=True)
        return torch.index_select(source, 0, idx, out=out)


class _ImageFiles(torch.utils.data.Dataset):
    """Decodes image files to uint8 CHW tensors of one square size (shorter side fit, centre crop)."""

    def __init__(self, paths: list[str], labels: torch.Tensor, size: int):
        self.paths = paths
        self.labels = labels
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image, ImageOps

        with Image.open(self.paths[i]) as im:
            fitted = ImageOps.fit(im.convert("RGB"), (self.size, self.size), Image.Resampling.BILINEAR)
            array = np.array(fitted)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous(), self.labels[i]


def _loader_workers() -> int:
    return min(8, os.cpu_count() or 1)


class FileSplit:
    """A split streamed from image files through DataLoader workers; augmentation still on the device."""

    def __init__(self, files: _ImageFiles, pipeline: _Pipeline):
        self.files = files
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                drop_last: bool = False, generator: torch.Generator | None = None,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self)
        order = list(range(n))
        if shuffle:
            # A CPU permutation seeded from the caller's generator, so that its seed still decides.
            seed_from = generator if generator is not None else torch.default_generator
            seed = int(torch.randint(2**62, (1,), generator=seed_from, device=seed_from.device))
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        device = self.pipeline.device
        loader = torch.utils.data.DataLoader(
            self.files, batch_sampler=[order[start:stop] for start, stop in batch_bounds(n, batch_size, drop_last)],
            num_workers=_loader_workers(), pin_memory=device.type == "cuda")
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            yield self.pipeline(x, augment, generator), y.to(device, non_blocking=True)


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


def _read_digits(cfg: DataConfig) -> tuple[_Part, _Part, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    size = cfg.pixels
    grey = torch.from_numpy(digits.images).float().unsqueeze(1) * (255 / 16)  # 16 grey levels → 0..255
    grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
    images = grey.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    whole = _Part(torch.from_numpy(digits.target).long(), images=images)
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


def _carve(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (rest, held-out ≈ fraction), stratified by label, seeded; fraction 0 holds out none."""
    if fraction == 0:
        return torch.arange(len(labels)), torch.zeros(0, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    held_parts, rest_parts = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(fraction * len(idx)))
        held_parts.append(idx[:k])
        rest_parts.append(idx[k:])
    held, rest = torch.cat(held_parts), torch.cat(rest_parts)
    if len(held) == 0:  # tiny datasets: every class rounded down to nothing, still hold out one example
        held, rest = rest[:1], rest[1:]
    return rest.sort().values, held.sort().values


PARALLEL_DECODE_FILES = 2000  # below this, starting decoding processes costs more than it saves


def _decode_all(part: _Part, size: int, workers: int | None = None) -> _Part:
    """Decode image files into one uint8 tensor, in `workers` DataLoader processes (default: several
    when there are many files, none otherwise)."""
    files = _ImageFiles(part.files(), part.labels, size)
    if workers is None:
        workers = _loader_workers() if len(files) >= PARALLEL_DECODE_FILES else 0
    loader = torch.utils.data.DataLoader(files, batch_size=256, num_workers=workers)
    return _Part(part.labels, images=torch.cat([x for x, _ in loader]))


def fits_on_device(nbytes: int, *, free: int, total: int, fraction: float, reserved: int) -> bool:
    """Whether a dataset of `nbytes` may stay on a GPU: under CUDA_MEMORY_SHARE of what this process may still
    take. Under torch.cuda.set_per_process_memory_fraction (trials sharing a GPU) that is its share of the
    total less what its allocator already reserved, and never more than the GPU has free (the other
    processes' use)."""
    available = min(free, fraction * total - reserved)
    return nbytes < CUDA_MEMORY_SHARE * available


def _keep_in_memory(cfg: DataConfig, n_images: int, size: int, device: torch.device) -> bool:
    if isinstance(cfg.in_memory, bool):
        return cfg.in_memory
    nbytes = n_images * 3 * size * size
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return fits_on_device(nbytes, free=free, total=total,
                              fraction=torch.cuda.get_per_process_memory_fraction(device),
                              reserved=torch.cuda.memory_reserved(device))
    return nbytes < CPU_MEMORY_LIMIT


# --------------------------------------------------------------------------- loading and caching


@dataclass(eq=False)
class TaskData:
    config: DataConfig
    classes: list[str]
    image_size: int
    train: TensorSplit | FileSplit
    val: TensorSplit | FileSplit
    test: TensorSplit | FileSplit
    in_memory: bool  # True: uint8 tensors held in memory; False: streamed from files

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(eq=False)
class _Stored:
    """A dataset read, carved and placed, shared by every TaskData of the same (config, device)."""

    classes: list[str]
    image_size: int
    parts: dict[str, _Part]  # train / val / test, images already on their storage device
    in_memory: bool


_STORED: dict[tuple, _Stored] = {}
_TASKS: dict[tuple, TaskData] = {}


def _canonical(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _store(cfg: DataConfig, split_seed: int, device: torch.device) -> _Stored:
    train, test, classes = _READERS[cfg.name](cfg)
    size = cfg.pixels
    in_memory = True
    if train.images is None:  # image files
        in_memory = _keep_in_memory(cfg, len(train) + len(test), size, device)
        if in_memory:
            train, test = _decode_all(train, size), _decode_all(test, size)
    train_idx, val_idx = _carve(train.labels, cfg.val_fraction, split_seed)
    parts = {"train": train.take(train_idx), "val": train.take(val_idx), "test": test}
    # Arrays live on the device unless in_memory: false keeps them in (pinned) host memory.
    storage = torch.device("cpu") if cfg.in_memory is False else device
    for p in parts.values():
        if p.images is not None:
            p.images = p.images.to(storage)
            p.labels = p.labels.to(storage)
            if storage.type == "cpu" and device.type == "cuda":
                p.images, p.labels = p.images.pin_memory(), p.labels.pin_memory()
    return _Stored(classes, size, parts, in_memory)


def load_data(cfg: DataConfig, device: torch.device | str, mean: tuple[float, float, float],
              std: tuple[float, float, float], split_seed: int = 0) -> TaskData:
    """The dataset of `cfg` on `device`, normalised with mean/std; `split_seed` draws the validation split.

    Cached for the process: a worker runs trial after trial, and the same call returns the same
    object without reading anything again. Different mean/std share one copy of the images.
    """
    device = _canonical(device)
    norm = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    key = (cfg, split_seed, str(device), *norm)
    if key in _TASKS:
        return _TASKS[key]
    stored_key = (cfg, split_seed, str(device))
    if stored_key not in _STORED:
        _STORED[stored_key] = _store(cfg, split_seed, device)
    stored = _STORED[stored_key]
    pipeline = _Pipeline(device, *norm, stored.image_size, augment=cfg.augment == "standard")

    def split(part: _Part) -> TensorSplit | FileSplit:
        if part.images is not None:
            return TensorSplit(part.images, part.labels, pipeline)
        return FileSplit(_ImageFiles(part.files(), part.labels, stored.image_size), pipeline)

    train, val, test = (split(stored.parts[k]) for k in ("train", "val", "test"))
    task = TaskData(cfg, stored.classes, stored.image_size, train, val, test, in_memory=stored.in_memory)
    _TASKS[key] = task
    return task


def clear_data_cache() -> None:
    """Forget every loaded dataset, so its memory (device memory included) can be freed."""
    _TASKS.clear()
    _STORED.clear()
