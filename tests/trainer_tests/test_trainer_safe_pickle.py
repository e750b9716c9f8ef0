"""CIFAR batches are unpickled admitting only what a dataset holds: a planted file cannot run code."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from hpsearch.engine.data import DataConfig, load_data
from hpsearch.engine.datasets import DatasetNotFound, UnsafeDataFile

IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


class _Planted:
    """What an attacker drops in the data folder: unpickling it runs a shell command."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_batch_is_refused_and_its_code_never_runs(cifar10_root, tmp_path):
    root = cifar10_root[0]
    marker = tmp_path / "pwned"
    planted = root / "cifar-10-batches-py" / "data_batch_1"
    planted.write_bytes(pickle.dumps({b"data": _Planted(str(marker))}))
    with pytest.raises(DatasetNotFound) as caught:
        load_data(DataConfig("cifar10", root=str(root)), "cpu", *IDENTITY)
    assert isinstance(caught.value, UnsafeDataFile)
    message = str(caught.value)
    assert "\n" not in message
    assert str(planted) in message
    assert f"{os.system.__module__}.system" in message  # posix.system: the global it tried to call
    assert not marker.exists()


def test_exec_in_the_labels_file_is_refused_too(cifar10_root, tmp_path):
    root = cifar10_root[0]
    marker = tmp_path / "pwned"

    class Exec:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    (root / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps({b"label_names": Exec()}))
    with pytest.raises(UnsafeDataFile, match=r"batches\.meta: .*builtins\.exec"):
        load_data(DataConfig("cifar10", root=str(root)), "cpu", *IDENTITY)
    assert not marker.exists()


class _Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]  # the pure-Python pickler, to override str
    """Writes like Python 2's cPickle at protocol 2: str and bytes as BINSTRING, numpy 1.x's module names."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj):
        raw = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def _python2_batch(obj) -> bytes:
    out = __import__("io").BytesIO()
    _Python2Pickler(out, protocol=2).dump(obj)
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


@pytest.mark.parametrize("protocol", ["python2", 2, 4, 5])
def test_real_format_batches_still_load(cifar10_root, protocol):
    """The official files (numpy 1.x under Python 2) and copies re-pickled by Python 3 at any protocol."""
    root, train_images, _, test_images, test_labels = cifar10_root
    folder = root / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        blob = _python2_batch(batch) if protocol == "python2" else pickle.dumps(batch, protocol=protocol)
        if protocol == "python2" and b"data" in batch:
            assert b"numpy.core.multiarray\n_reconstruct" in blob
            assert b"_codecs" not in blob
        (folder / name).write_bytes(blob)
    task = load_data(DataConfig("cifar10", root=str(root), val_fraction=0.2), "cpu", *IDENTITY)
    assert task.classes[0] == "airplane"
    assert task.test.labels.tolist() == test_labels.tolist()
    assert len(task.train) + len(task.val) == len(train_images)
    assert np.array_equal(task.test.images.numpy(), test_images)


def test_a_truncated_batch_names_the_file(cifar10_root):
    root = cifar10_root[0]
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(DatasetNotFound, match="test_batch: not a readable CIFAR batch"):
        load_data(DataConfig("cifar10", root=str(root)), "cpu", *IDENTITY)
