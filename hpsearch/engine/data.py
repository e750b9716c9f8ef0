"""Datasets for the trainer: splits kept on the device as uint8, batches augmented there.

airbench style: the whole dataset lives on the device as one uint8 NCHW tensor, and a batch's
random crop and flip are one gather on the device, so nothing on the training path waits for the
CPU. Image folders too large for that are decoded by DataLoader workers instead, behind the same
`batches()` interface. Torch-only on purpose: this module runs on GPU boxes that lack the rest of
hpsearch's dependencies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hpsearch.core.data_config import PAD, DataConfig
from hpsearch.engine.datasets import _READERS, _carve, _Part

CPU_MEMORY_LIMIT = 4 * 2**30  # bytes of uint8 images `in_memory: auto` keeps in host memory
CUDA_MEMORY_SHARE = 0.25  # ... and the share of the process's available device memory on CUDA (fits_on_device)


# --------------------------------------------------------------------------- batch pipeline


class _Pipeline:
    """uint8 NCHW batch on the device → (optionally crop+flip) → float, normalised, resized."""

    def __init__(self, device: torch.device, mean: Sequence[float], std: Sequence[float], image_size: int,
                 augment: bool) -> None:
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

    def _draw(self, n: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
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

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
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
