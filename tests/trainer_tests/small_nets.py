"""Small networks and data the compression tests share: what the int8 quantizer fuses, trained on digits."""

from __future__ import annotations

import torch
from torch import nn

from hpsearch.core.hparams import HParams
from hpsearch.engine.data import DataConfig, load_data
from hpsearch.engine.models import IMAGENET_MEAN, IMAGENET_STD
from hpsearch.engine.train import Trainer, seed_everything

DIGITS = DataConfig("digits", image_size=16, val_fraction=0.2, augment="none")


def small_cnn() -> nn.Module:
    """Conv-BN-ReLU-pool twice, then a Linear: the patterns the int8 quantizer fuses; ~0.99 on digits in 4 epochs."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


def digits():
    return load_data(DIGITS, "cpu", IMAGENET_MEAN, IMAGENET_STD)


def fit(model: nn.Module, data, epochs: int) -> nn.Module:
    hp = HParams(lr=3e-3, optimizer="adamw", batch_size=64, epochs=epochs)
    Trainer(model, data, hp, device="cpu", seed=0).fit()
    return model


def trained_small_cnn() -> tuple[nn.Module, object]:
    """small_cnn trained on digits (16 px) to ~0.99 validation accuracy, and the data (~1 s)."""
    torch.set_num_threads(1)
    seed_everything(0)
    data = digits()
    return fit(small_cnn(), data, epochs=4), data
