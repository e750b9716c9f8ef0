"""hpsearch.engine.data: readers of the on-disk formats, splits, caching, and the device-side batch pipeline."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpsearch.engine import data, datasets
from hpsearch.engine.data import PAD, DataConfig, TensorSplit, crop_flip, load_data
from hpsearch.engine.datasets import DatasetNotFound

IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean/std that leave x = uint8 / 255
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def as_uint8(x: torch.Tensor) -> torch.Tensor:
    """Undo the IDENTITY normalisation."""
    return (x * 255).round().to(torch.uint8)


def every_example(split, batch_size=7):
    xs, ys = zip(*split.batches(batch_size, shuffle=False, augment=False, drop_last=False), strict=False)
    return torch.cat(xs), torch.cat(ys)


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_reads_the_pickled_batches(cifar10_root):
    root, train_images, train_labels, test_images, test_labels = cifar10_root
    task = load_data(DataConfig("cifar10", root=str(root), val_fraction=0.2), "cpu", *IDENTITY)
    assert task.num_classes == 10
    assert task.classes[0] == "airplane"
    assert task.image_size == 32
    assert len(task.train) + len(task.val) == 30
    assert len(task.test) == 6
    x, y = every_example(task.test)
    assert x.shape == (6, 3, 32, 32)
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert torch.equal(as_uint8(x), torch.from_numpy(test_images))
    assert y.tolist() == test_labels.tolist()
    # train + val are the five data batches, every image exactly once, with its own label.
    x_train, y_train = every_example(task.train)
    x_val, y_val = every_example(task.val)
    seen = {bytes(img.numpy()): int(lbl) for img, lbl in zip(as_uint8(torch.cat([x_train, x_val])),
                                                              torch.cat([y_train, y_val]), strict=False)}
    assert seen == {bytes(img): int(lbl) for img, lbl in zip(train_images, train_labels, strict=False)}


def test_cifar100_uses_fine_labels(cifar100_root):
    root, fine = cifar100_root
    task = load_data(DataConfig("cifar100", root=str(root), val_fraction=0.25), "cpu", *IDENTITY)
    assert task.num_classes == 100
    assert task.classes[7] == "class7"
    labels = torch.cat([every_example(task.train)[1], every_example(task.val)[1]])
    assert sorted(labels.tolist()) == sorted(fine.tolist())


@pytest.mark.parametrize(("name", "expected"), [
    ("cifar10", "CIFAR-10 not found: expected {root}/cifar-10-batches-py/data_batch_1..5 and test_batch; "
                "set task.data.download: true to download it"),
    ("cifar100", "CIFAR-100 not found: expected {root}/cifar-100-python/train and test; "
                 "set task.data.download: true to download it"),
])
def test_missing_cifar_says_where_and_how(tmp_path, name, expected):
    with pytest.raises(DatasetNotFound) as e:
        load_data(DataConfig(name, root=str(tmp_path)), "cpu", *IMAGENET)
    assert str(e.value) == expected.format(root=tmp_path)


def test_missing_image_folder_names_both_layouts(tmp_path):
    with pytest.raises(DatasetNotFound, match=r"expected .*/train/<class>/\*\.jpg .*wnids\.txt"):
        load_data(DataConfig("imagefolder", root=str(tmp_path / "nowhere")), "cpu", *IMAGENET)


def test_failed_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DatasetNotFound, match="downloading it failed .network is unreachable.; place the files"):
        load_data(DataConfig("cifar10", root=str(tmp_path), download=True), "cpu", *IMAGENET)


# --------------------------------------------------------------------------- image folders


def class_of(x: torch.Tensor) -> torch.Tensor:
    """The class whose solid colour (conftest.CLASS_COLOURS) an IDENTITY-normalised image shows."""
    return x.mean(dim=(2, 3)).argmax(dim=1)


def test_tiny_imagenet_layout(tiny_imagenet_root):
    root, wnids = tiny_imagenet_root
    task = load_data(DataConfig("imagefolder", root=str(root), val_fraction=1 / 6), "cpu", *IDENTITY)
    assert task.classes == wnids
    assert task.image_size == 64
    assert task.in_memory
    assert (len(task.train), len(task.val), len(task.test)) == (15, 3, 6)
    for split in (task.train, task.val, task.test):
        x, y = every_example(split)
        assert x.shape[1:] == (3, 64, 64)
        assert torch.equal(class_of(x), y)  # each image carries its own class's label
    assert sorted(every_example(task.test)[1].tolist()) == [0, 0, 1, 1, 2, 2]


def test_plain_image_folder_resized_square(imagefolder_root):
    task = load_data(DataConfig("imagefolder", root=str(imagefolder_root), image_size=24), "cpu", *IDENTITY)
    assert task.classes == ["cat", "dog", "emu"]
    assert len(task.test) == 6
    x, y = every_example(task.test)
    assert x.shape == (6, 3, 24, 24)
    assert torch.equal(class_of(x), y)


def test_streamed_image_folder_gives_the_same_batches(imagefolder_root):
    """in_memory: false decodes in DataLoader workers, behind the same batches() interface."""
    common = dict(root=str(imagefolder_root), image_size=16)
    streamed = load_data(DataConfig("imagefolder", in_memory=False, **common), "cpu", *IDENTITY)
    in_memory = load_data(DataConfig("imagefolder", in_memory=True, **common), "cpu", *IDENTITY)
    assert not streamed.in_memory
    assert in_memory.in_memory
    for a, b in zip(every_example(streamed.test), every_example(in_memory.test), strict=False):
        assert torch.equal(a, b)
    x, y = next(streamed.train.batches(4, shuffle=True, augment=True, drop_last=True,
                                       generator=torch.Generator().manual_seed(0)))
    assert x.shape == (4, 3, 16, 16)
    assert torch.equal(class_of(x), y)


# --------------------------------------------------------------------------- digits, fake, splits


def test_digits_real_offline_data():
    task = load_data(DataConfig("digits"), "cpu", *IMAGENET)
    assert task.num_classes == 10
    assert task.image_size == 32
    assert len(task.train) + len(task.val) + len(task.test) == 1797
    assert len(task.test) == pytest.approx(0.2 * 1797, abs=10)
    x, y = next(task.train.batches(16, shuffle=True, augment=True, drop_last=True))
    assert x.shape == (16, 3, 32, 32)
    assert set(y.tolist()) <= set(range(10))
    # Grey images: the three channels hold the same pixels (before per-channel normalisation).
    raw = data._STORED[(DataConfig("digits"), 0, "cpu")].parts["test"].images
    assert raw.dtype == torch.uint8
    assert torch.equal(raw[:, 0], raw[:, 2])
    assert raw.max() == 255


def test_digits_are_scikit_learns_load_digits_read_without_importing_it(monkeypatch):
    # scikit-learn made unimportable: reading the digits needs only its data file (a second of a worker's start-up).
    with monkeypatch.context() as blocked:
        for name in ("sklearn", "sklearn.datasets"):
            blocked.setitem(sys.modules, name, None)
        images, labels = datasets.digits_arrays()
    from sklearn.datasets import load_digits

    reference = load_digits()
    assert np.array_equal(images, reference.images)
    assert np.array_equal(labels, reference.target)


def test_digits_test_split_does_not_move_with_split_seed():
    a = load_data(DataConfig("digits", image_size=8), "cpu", *IMAGENET, split_seed=0)
    b = load_data(DataConfig("digits", image_size=8), "cpu", *IMAGENET, split_seed=1)
    assert all(torch.equal(u, v) for u, v in zip(every_example(a.test, 512), every_example(b.test, 512), strict=False))
    assert not torch.equal(every_example(a.val, 512)[1], every_example(b.val, 512)[1])


def test_fake_is_deterministic_with_its_sizes():
    cfg = DataConfig("fake", samples=40, num_classes=3, image_size=12)
    a = load_data(cfg, "cpu", *IDENTITY)
    assert a.num_classes == 3
    assert len(a.train) + len(a.val) == 40
    assert len(a.test) == 10
    data.clear_data_cache()
    b = load_data(cfg, "cpu", *IDENTITY)
    assert a is not b
    assert all(torch.equal(u, v) for u, v in zip(every_example(a.train), every_example(b.train), strict=False))


def test_validation_split_is_stratified_disjoint_and_seeded():
    labels = torch.arange(10).repeat_interleave(20)
    rest, held = datasets._carve(labels, 0.1, seed=0)
    assert len(held) == 20
    assert torch.bincount(labels[held]).tolist() == [2] * 10
    assert sorted(torch.cat([rest, held]).tolist()) == list(range(200))
    assert not torch.equal(held, datasets._carve(labels, 0.1, seed=1)[1])
    # Every worker process loads the data with its global RNG in a state of its own: the split must not follow it.
    torch.manual_seed(12345)
    assert torch.equal(held, datasets._carve(labels, 0.1, seed=0)[1])


def test_dataset_is_loaded_once_per_process(monkeypatch):
    """A worker runs trial after trial: the second trial gets the same device-resident object."""
    calls = []
    real = datasets._READERS["fake"]
    monkeypatch.setitem(datasets._READERS, "fake", lambda cfg: calls.append(cfg) or real(cfg))
    cfg = DataConfig("fake", samples=32)
    first = load_data(cfg, "cpu", *IMAGENET)
    assert load_data(cfg, torch.device("cpu"), *IMAGENET) is first
    other_norm = load_data(cfg, "cpu", *IDENTITY)  # other weights' mean/std: same images, no re-read
    assert other_norm is not first
    assert other_norm.train.images is first.train.images
    assert len(calls) == 1


@pytest.mark.parametrize(("bad", "message"), [
    (dict(name="mnist"), "data.name must be one of"),
    (dict(name="fake", val_fraction=0.0), r"data.val_fraction must be in \(0, 1\), got 0.0"),
    (dict(name="fake", augment="heavy"), "data.augment must be one of standard, none, got 'heavy'"),
    (dict(name="fake", in_memory="yes"), "data.in_memory must be auto, true or false"),
])
def test_config_refuses_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**bad)


# --------------------------------------------------------------------------- batches and augmentation


@pytest.fixture
def fake16():
    return load_data(DataConfig("fake", samples=100, image_size=16, val_fraction=0.2), "cpu", *IDENTITY)


def test_epoch_batches_have_static_shapes(fake16):
    batches = list(fake16.train.batches(32, shuffle=True, augment=True, drop_last=True))
    assert len(batches) == 80 // 32
    assert all(x.shape == (32, 3, 16, 16) for x, _ in batches)
    # A split smaller than one batch still trains: one batch of all of it.
    small = list(fake16.val.batches(64, shuffle=True, augment=True, drop_last=True))
    assert [len(y) for _, y in small] == [20]
    # Evaluation covers every example, ragged last batch included.
    assert [len(y) for _, y in fake16.train.batches(32)] == [32, 32, 16]


def test_augmented_crops_come_from_the_reflect_padded_source(fake16):
    source = fake16.train.images[:8]
    x, _ = next(fake16.train.batches(8, shuffle=False, augment=True, generator=torch.Generator().manual_seed(3)))
    padded = F.pad(source.float(), (PAD,) * 4, mode="reflect").to(torch.uint8)
    flips = 0
    for out, pad in zip(as_uint8(x), padded, strict=False):
        windows = []
        for dy in range(2 * PAD + 1):
            for dx in range(2 * PAD + 1):
                window = pad[:, dy:dy + 16, dx:dx + 16]
                windows += [flip for flip in (False, True) if torch.equal(out, window.flip(-1) if flip else window)]
        assert len(windows) == 1, "each output is exactly one (possibly flipped) window of its own source"
        flips += windows[0]
    assert 0 < flips < 8


def test_crop_flip_really_flips():
    x = torch.randint(0, 256, (4, 3, 9, 9), dtype=torch.uint8)
    centre = torch.full((4, 2), PAD)
    assert torch.equal(crop_flip(x, centre, torch.zeros(4, dtype=torch.bool)), x)
    assert torch.equal(crop_flip(x, centre, torch.ones(4, dtype=torch.bool)), x.flip(-1))
    corner = crop_flip(x, torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.bool))
    assert torch.equal(corner, F.pad(x.float(), (PAD,) * 4, mode="reflect")[:, :, :9, :9].to(torch.uint8))


def test_same_generator_seed_same_batch(fake16):
    def first(seed):
        return next(fake16.train.batches(16, shuffle=True, augment=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed)))

    (a, ya), (b, yb), (c, _) = first(5), first(5), first(6)
    assert torch.equal(a, b)
    assert torch.equal(ya, yb)
    assert not torch.equal(a, c)


def test_eval_batches_are_never_augmented(fake16):
    x, _ = next(fake16.train.batches(16, augment=False))
    assert torch.equal(as_uint8(x), fake16.train.images[:16])


def test_augment_none_turns_crop_and_flip_off():
    task = load_data(DataConfig("fake", samples=40, augment="none"), "cpu", *IDENTITY)
    x, _ = next(task.train.batches(10, augment=True, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(as_uint8(x), task.train.images[:10])


def test_normalisation_uses_the_given_mean_and_std(cifar10_root):
    root, *_, test_images, _ = cifar10_root
    mean, std = IMAGENET
    x, _ = next(load_data(DataConfig("cifar10", root=str(root)), "cpu", mean, std).test.batches(6))
    expected = (torch.from_numpy(test_images).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)


@pytest.mark.parametrize("size", [20, 48])
def test_stored_at_native_size_resized_per_batch(cifar10_root, size):
    root, *_ = cifar10_root
    task = load_data(DataConfig("cifar10", root=str(root), image_size=size), "cpu", *IMAGENET)
    assert task.train.images.shape[-1] == 32
    assert task.image_size == size
    x, _ = next(task.train.batches(4, shuffle=True, augment=True, drop_last=True))
    assert x.shape == (4, 3, size, size)
    assert torch.isfinite(x).all()


def test_host_memory_mode_matches_device_mode():
    """in_memory: false for array datasets keeps the uint8 tensor in host memory; batches are identical."""
    on, off = (load_data(DataConfig("fake", samples=50, in_memory=m), "cpu", *IDENTITY) for m in (True, False))
    g = [torch.Generator().manual_seed(1) for _ in range(2)]
    a = next(on.train.batches(8, shuffle=True, augment=True, generator=g[0]))
    b = next(off.train.batches(8, shuffle=True, augment=True, generator=g[1]))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=False))


def test_augmented_batches_keep_the_gathers_channels_last_layout():
    """The pipeline leaves the layout to the consumer: the crop gather's channels_last batch is not
    turned to NCHW (the CUDA trainer wants channels_last: it would only convert it back)."""
    task = load_data(DataConfig("fake", samples=40), "cpu", *IMAGENET)
    x, _ = next(task.train.batches(8, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0)))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    plain, _ = next(task.train.batches(8, augment=False))
    assert plain.is_contiguous()  # nothing to gather: NCHW as stored


def test_take_rows_gathers_an_index_and_views_a_slice():
    images = torch.arange(6 * 3 * 2 * 2, dtype=torch.uint8).view(6, 3, 2, 2)
    idx = torch.tensor([4, 0, 5])
    assert torch.equal(TensorSplit.take_rows(images, idx, pin=False), images[idx])
    window = TensorSplit.take_rows(images, slice(2, 5), pin=True)  # a view: no gather, no copy
    assert window.data_ptr() == images[2].data_ptr()
    assert torch.equal(window, images[2:5])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streamed_batches_are_gathered_into_pinned_memory(monkeypatch):
    """in_memory: false on CUDA: shuffled batches are gathered into pinned memory (a pageable source
    makes the non_blocking copy synchronous), and no batch is overwritten while it is copied."""
    streamed = load_data(DataConfig("fake", samples=256, in_memory=False), "cuda", *IMAGENET)
    resident = load_data(DataConfig("fake", samples=256), "cuda", *IMAGENET)
    assert streamed.train.images.is_pinned()
    assert resident.train.images.is_cuda
    idx = torch.randperm(len(streamed.train))[:16]
    rows = TensorSplit.take_rows(streamed.train.images, idx, pin=True)
    assert rows.is_pinned()
    assert torch.equal(rows, streamed.train.images[idx])

    pinned = []
    take_rows = TensorSplit.take_rows

    def spy(source, index, pin):
        rows = take_rows(source, index, pin)
        pinned.append(rows.is_pinned())
        return rows

    monkeypatch.setattr(TensorSplit, "take_rows", staticmethod(spy))
    for epoch in range(3):
        g = [torch.Generator(device="cuda").manual_seed(epoch) for _ in range(2)]
        a = list(streamed.train.batches(16, shuffle=True, augment=True, drop_last=True, generator=g[0]))
        b = list(resident.train.batches(16, shuffle=True, augment=True, drop_last=True, generator=g[1]))
        assert len(a) == len(b) > 1
        for (xa, ya), (xb, yb) in zip(a, b, strict=False):
            assert torch.equal(xa, xb)
            assert torch.equal(ya, yb)
    assert pinned
    assert all(pinned)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_stay_on_the_device():
    task = load_data(DataConfig("fake", samples=64), "cuda", *IMAGENET)
    assert task.train.images.is_cuda
    g = torch.Generator(device="cuda").manual_seed(0)
    x, y = next(task.train.batches(16, shuffle=True, augment=True, drop_last=True, generator=g))
    assert x.is_cuda
    assert y.is_cuda
    assert x.shape == (16, 3, 32, 32)
    x_cpu, y_cpu = next(load_data(DataConfig("fake", samples=64), "cpu", *IMAGENET).test.batches(8))
    x_gpu, y_gpu = next(task.test.batches(8))
    torch.testing.assert_close(x_gpu.cpu(), x_cpu)
    assert np.array_equal(y_gpu.cpu().numpy(), y_cpu.numpy())
