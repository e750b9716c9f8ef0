"""hpsearch.deploy.compression's int8 post-training quantization through torchao's PT2E flow: it predicts like the
float model, its file is about a quarter, it loads back, and what it cannot take is refused in one line.

torchao is a dependency of hpsearch but not of the trainer (a GPU box may lack it): these tests live outside
tests/trainer_tests, which run with torch alone.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from hpsearch.deploy import costs
from hpsearch.deploy.compression import (
    Int8Model,
    calibration_batches,
    load_int8,
    prune_global,
    quantize_int8,
)
from hpsearch.engine.models import build_model
from hpsearch.engine.train import evaluate, seed_everything

from .trainer_tests.small_nets import small_cnn, trained_small_cnn


@pytest.fixture(scope="module")
def trained():
    return trained_small_cnn()


@pytest.fixture(scope="module")
def resnet_int8():
    """ResNet-18 (from scratch, 10 classes) and its int8 model at 32 px (~10 s: export, calibration, lowering)."""
    torch.set_num_threads(1)
    seed_everything(0)
    model = build_model("resnet18", 10).eval()
    calibration = [torch.randn(16, 3, 32, 32) for _ in range(2)]
    return model, quantize_int8(model, calibration, 32)


# --------------------------------------------------------------------------- int8


def test_int8_model_predicts_like_the_float_model(trained):
    model, data = trained
    q = quantize_int8(model, calibration_batches(data.train), 16)
    _, float_acc = evaluate(model, data.val, device="cpu")
    _, int8_acc = evaluate(q, data.val, device="cpu")  # train.evaluate takes it as it is
    assert float_acc > 0.95
    assert int8_acc >= float_acc - 0.01
    x = next(data.val.batches(len(data.val)))[0]
    with torch.inference_mode():
        out = q(x)
        agree = (model(x).argmax(1) == out.argmax(1)).float().mean()
        program = q.program(x)  # the int8 graph as saved, each op computed in float32
    assert agree >= 0.98
    # The oneDNN kernels that run compute what the file holds, up to a rounding step (logits reach ~10): no
    # int16 saturation on CPUs without VNNI, which moved logits by up to 3 and cost this model 2 points of
    # accuracy before activations got 7 bits there.
    torch.testing.assert_close(out, program, atol=0.02, rtol=0)


@pytest.mark.slow
def test_int8_resnet18_runs_with_residual_adds_and_its_file_is_a_quarter(resnet_int8, tmp_path):
    model, q = resnet_int8
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        ref, out, one = model(x), q(x), q(x[:1])  # any batch size, batch 1 included
    assert out.shape == (8, 10)
    assert out.dtype == torch.float32
    torch.testing.assert_close(one, out[:1], atol=1e-4, rtol=0)
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    float_mb = costs.size_mb(costs.save_deployable(model, tmp_path / "model.pt"))
    int8_mb = costs.size_mb(costs.save_deployable(q, tmp_path / "model.pt2"))
    assert 0.2 < int8_mb / float_mb < 0.3  # int8 weights: a quarter, plus biases and per-channel scales
    # The same weights, less BatchNorm's parameters (folded into the convolutions) and the weights that round
    # to zero in int8 (about 1% of them, for this untrained model).
    assert 0.97 * costs.params_m(model) < costs.params_m(q) < costs.params_m(model)
    # Lowered to int8 kernels, it is no slower than the float model (~0.5x on one core of the CI box); the
    # converted program alone, which dequantizes every weight on every call, is ~7x slower.
    assert costs.latency_ms(q, 32) < 1.5 * costs.latency_ms(model, 32)


def test_int8_file_loads_back_and_predicts_the_same(trained, tmp_path):
    model, data = trained
    q = quantize_int8(model, calibration_batches(data.train, batches=2), 16)
    q.save(tmp_path / "model.pt2")
    loaded = load_int8(tmp_path / "model.pt2")
    assert isinstance(loaded, Int8Model)
    assert loaded.input_shape == (3, 16, 16)
    x = next(data.val.batches(64))[0]
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), q(x), atol=0, rtol=0)
    assert evaluate(loaded, data.val, device="cpu") == evaluate(q, data.val, device="cpu")


def test_pruned_then_int8_keeps_the_zeros_and_leaves_the_model_alone(trained):
    model, data = trained
    pruned = copy.deepcopy(model)
    prune_global(pruned, 0.5)  # masks still on: quantize_int8 bakes them into its own copy
    pruned.train()
    q = quantize_int8(pruned, calibration_batches(data.train, batches=2), 16)
    assert costs.params_m(q) < 0.55 * costs.params_m(model)
    assert 0.97 * costs.params_m(pruned) < costs.params_m(q) <= costs.params_m(pruned)
    assert hasattr(pruned[0], "weight_mask")
    assert pruned[0].training  # the caller's model is untouched
    x = next(data.val.batches(64))[0]
    pruned.eval()
    with torch.inference_mode():
        assert (q(x).argmax(1) == pruned(x).argmax(1)).float().mean() >= 0.9


def test_quantization_does_not_warn(trained):
    model, data = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = quantize_int8(model, calibration_batches(data.train, batches=1), 16)
        evaluate(q, data.val, device="cpu")


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # depends on the data: torch.export cannot capture it
            return self.linear(x.flatten(1))
        return -self.linear(x.flatten(1))


def test_a_model_that_cannot_be_quantized_is_refused_clearly():
    with pytest.raises(ValueError, match=r"int8 quantization of Branchy failed at torch.export: "):
        quantize_int8(Branchy(), [torch.randn(2, 3, 8, 8)], 8)
    with pytest.raises(ValueError, match="no calibration batch"):
        quantize_int8(small_cnn(), [], 16)
