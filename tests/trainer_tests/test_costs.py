"""hpsearch.deploy.costs: what a trained model costs to deploy (non-zero parameters, file size, batch-1 latency)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hpsearch.core.hparams import COST_METRICS
from hpsearch.deploy import costs
from hpsearch.deploy.compression import make_permanent, prune_global
from hpsearch.engine.models import build_model
from hpsearch.orchestration import builders

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def tiny(size: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 4))


# --------------------------------------------------------------------------- params_m


def test_params_m_counts_resnet18_as_torchvision_publishes_it():
    # 11,689,512 parameters with ImageNet's 1000 classes, 11,181,642 with 10; from scratch BatchNorm's biases
    # start at zero (4,800 of them), and params_m counts non-zero entries only.
    assert costs.params_m(build_model("resnet18", 1000)) == pytest.approx((11_689_512 - 4_800) / 1e6)
    assert costs.params_m(build_model("resnet18", 10)) == pytest.approx((11_181_642 - 4_800) / 1e6)


def test_params_m_leaves_out_zeros_and_buffers():
    model = nn.Sequential(nn.Linear(100, 10), nn.BatchNorm1d(10))  # 1010 + 20 parameters; 21 buffers
    with torch.no_grad():
        model[1].bias.fill_(0.5)
        assert costs.params_m(model) == pytest.approx(1030 / 1e6)
        model[0].weight[:, :50] = 0
    assert costs.params_m(model) == pytest.approx(530 / 1e6)


def test_params_m_sees_pruning_masks_before_and_after_make_permanent():
    model = build_model("resnet18", 10)
    dense = costs.params_m(model)
    prune_global(model, 0.5)
    masked = costs.params_m(model)
    # Half of the Conv2d and Linear weights (all but ~10k of the parameters) are gone, counted once, not as
    # weight_orig plus its masked copy.
    assert masked == pytest.approx(dense / 2, rel=0.01)
    make_permanent(model)
    assert costs.params_m(model) == masked


# --------------------------------------------------------------------------- the deployable file


def test_float_file_is_the_state_dict_and_loads_into_a_fresh_model(tmp_path):
    model = build_model("resnet18", 10)
    path = costs.save_deployable(model, tmp_path / "model.pt")
    # float32: 4 bytes a parameter (and BatchNorm's running statistics), plus a little pickle and zip framing.
    n = sum(t.numel() for t in model.state_dict().values())
    assert 4 * n / 1e6 <= costs.size_mb(path) < 4 * n / 1e6 * 1.01
    fresh = build_model("resnet18", 10)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x))


def test_a_pruned_model_is_dense_on_disk(tmp_path):
    """Zeros still take their 4 bytes: pruning shows in params_m, not in size_mb (the docstring says so)."""
    model = build_model("resnet18", 10)
    dense = costs.size_mb(costs.save_deployable(model, tmp_path / "dense.pt"))
    prune_global(model, 0.7)
    with pytest.raises(ValueError, match="make_permanent"):  # weight_orig + weight_mask: twice the bytes
        costs.save_deployable(model, tmp_path / "masked.pt")
    make_permanent(model)
    assert costs.size_mb(costs.save_deployable(model, tmp_path / "pruned.pt")) == pytest.approx(dense, rel=1e-3)


# --------------------------------------------------------------------------- latency


class Recorder(nn.Module):
    """Records how it is called."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 2)
        self.calls: list[tuple] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((tuple(x.shape), x.dtype, self.training, torch.is_inference_mode_enabled()))
        return self.linear(x.flatten(1))


def test_latency_times_batch_one_in_eval_and_inference_mode_after_warmup():
    model = Recorder().train()
    ms = costs.latency_ms(model, 8, warmup=4, repeats=7)
    assert ms > 0
    assert model.calls == [((1, 3, 8, 8), torch.float32, False, True)] * 11
    assert not model.training


def test_a_bigger_model_is_slower_and_the_thread_count_is_left_alone():
    torch.set_num_threads(1)
    small = costs.latency_ms(tiny(), 8)
    big = costs.latency_ms(build_model("resnet18", 10), 64)
    assert 0 < small < big / 10  # ~0.02 ms against ~20 ms on the 2-core CI box
    assert torch.get_num_threads() == 1


class FormatRecorder(Recorder):
    """Records the format each pass computes in: (autocast on, input channels_last, weight channels_last)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((torch.is_autocast_enabled(x.device.type), x.is_contiguous(memory_format=torch.channels_last),
                           self.conv.weight.is_contiguous(memory_format=torch.channels_last)))
        return self.linear(self.conv(x).flatten(1))


@pytest.mark.parametrize(("fmt", "expected"), [
    (costs.LatencyFormat(), (False, False, False)),
    (costs.LatencyFormat(bf16=True, channels_last=True), (True, True, True)),  # as a CUDA trial trains
])
def test_latency_is_timed_in_the_format_training_used(fmt, expected):
    model = FormatRecorder()
    costs.latency_ms(model, 8, warmup=1, repeats=2, fmt=fmt)
    assert model.calls == [expected] * 3


def test_the_costs_say_how_latency_was_measured():
    torch.set_num_threads(1)
    measured = costs.measure(FormatRecorder(), 8, fmt=costs.LatencyFormat(bf16=True, channels_last=True))
    assert measured.method() == {"latency_device": "cpu, 1 thread",
                                 "latency_precision": "bf16 autocast, channels_last"}
    assert tuple(measured.as_dict()) == COST_METRICS  # the objectives only
    assert costs.measure(tiny(), 8).latency_precision == "fp32"


def test_gpu_latency_warms_up_tens_of_passes():
    warmup, timed = costs.CUDA_PASSES
    assert warmup >= 20
    assert timed >= 20
    assert costs.CPU_PASSES == (3, 15)


def spec_for(settings: dict, search_space: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(search_space=search_space or {}, train={}, settings=settings)


@pytest.mark.parametrize(("device", "settings", "search_space", "where", "precision"), [
    ("cuda:1", {}, None, "cuda:1", "bf16 autocast, channels_last"),  # the trial trained so (train.py's auto)
    ("cuda:1", {"amp": "off", "channels_last": "off"}, None, "cuda:1", "fp32"),
    ("cuda:1", {}, {"quantize": {}}, "cpu", "fp32"),  # a study that may quantize: every trial on the CPU
    ("cpu", {}, None, "cpu", "fp32"),
])
def test_a_trials_latency_is_measured_where_and_as_it_trained(device, settings, search_space, where, precision):
    got_where, fmt = builders.latency_setup(spec_for(settings, search_space), device)  # type: ignore[arg-type]
    assert (got_where, fmt.describe()) == (where, precision)


@CUDA
def test_latency_on_cuda_moves_the_model_there():
    model = build_model("resnet18", 10)
    assert costs.latency_ms(model, 32, "cuda") > 0
    assert next(model.parameters()).is_cuda


@CUDA
def test_gpu_latency_is_timed_after_its_warm_up_in_the_trials_format():
    model = FormatRecorder()
    fmt = costs.LatencyFormat(bf16=True, channels_last=True)
    assert costs.measure(model, 8, "cuda", fmt=fmt).latency_device.startswith("cuda")
    assert model.calls == [(True, True, True)] * sum(costs.CUDA_PASSES)


# --------------------------------------------------------------------------- all three


def test_measure_reports_the_objectives_a_study_can_minimise(tmp_path):
    model = build_model("mobilenet_v2", 10)
    measured = costs.measure(model, 32, "cpu", tmp_path / "model.pt")
    assert tuple(measured.as_dict()) == COST_METRICS
    assert measured.latency_ms > 0
    assert measured.params_m == costs.params_m(model)
    assert measured.size_mb == costs.size_mb(tmp_path / "model.pt")
    # Without a path the file goes to a temporary folder, and is gone afterwards.
    again = costs.measure(model, 32)
    assert again.size_mb == measured.size_mb
    assert again.params_m == measured.params_m
