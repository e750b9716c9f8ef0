"""Fixtures for the trainer's tests: miniature datasets in their real on-disk formats, written per test."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpsearch.engine.data import clear_data_cache
from hpsearch.engine.train import reset_graphs_state

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _one_thread_fresh_cache():
    """One intra-op thread (the CI box has two cores, shared); no dataset or graphs state kept between tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    clear_data_cache()
    reset_graphs_state()  # a test's failed capture must not turn graphs off for the tests after it


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def cifar10_root(tmp_path):
    """data/cifar-10-batches-py as the official archive unpacks it, with 6 images per file.

    Returns (root, train images N×3×32×32, train labels, test images, test labels).
    """
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
        batch_labels = [int(v) for v in rng.integers(0, 10, 6)]
        _dump(folder / name, {b"batch_label": name.encode(), b"labels": batch_labels, b"data": data,
                              b"filenames": [f"{name}_{i}.png".encode() for i in range(6)]})
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.array(batch_labels))
    _dump(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                    b"num_cases_per_batch": 6, b"num_vis": 3072})
    return (tmp_path, np.concatenate(images[:5]), np.concatenate(labels[:5]), images[5], labels[5])


@pytest.fixture
def cifar100_root(tmp_path):
    """data/cifar-100-python with train/test/meta; fine labels over 100 classes. Returns (root, train fine labels)."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    fine = {}
    for name, n in (("train", 40), ("test", 10)):
        fine[name] = [int(v) for v in rng.integers(0, 100, n)]
        _dump(folder / name, {b"filenames": [b"x.png"] * n, b"batch_label": name.encode(),
                              b"fine_labels": fine[name], b"coarse_labels": [v // 5 for v in fine[name]],
                              b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)})
    _dump(folder / "meta", {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]})
    return tmp_path, np.array(fine["train"])


# One solid colour per class, far apart, so a decoded (even JPEG-compressed) image shows its class.
CLASS_COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230)]


def _solid(path: Path, colour, size=(64, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def tiny_imagenet_root(tmp_path):
    """Tiny ImageNet as it ships: wnids.txt, train/<wnid>/images/*.JPEG (+ boxes), val/images + val_annotations.txt.

    3 classes, 6 training and 2 validation images each. Returns (root, wnids).
    """
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(wnids)))
    lines = []
    for c, wnid in enumerate(wnids):
        for i in range(6):
            _solid(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", CLASS_COLOURS[c])
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(2):
            name = f"val_{c * 2 + i}.JPEG"
            _solid(root / "val" / "images" / name, CLASS_COLOURS[c])
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root, wnids


@pytest.fixture
def imagefolder_root(tmp_path):
    """train/<class>/*.png and val/<class>/*.png, non-square images. Returns the root."""
    root = tmp_path / "shapes"
    for c, name in enumerate(["cat", "dog", "emu"]):
        for i in range(5):
            _solid(root / "train" / name / f"{i}.png", CLASS_COLOURS[c], size=(40, 30))
        for i in range(2):
            _solid(root / "val" / name / f"{i}.png", CLASS_COLOURS[c], size=(30, 40))
    return root
