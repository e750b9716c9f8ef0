"""`bn_momentum`: every BatchNorm of the model takes it (None keeps torchvision's own), and it is what lets a
MobileNetV3 trained from scratch for a few steps be evaluated on running statistics that moved."""

import torch
from torch import nn

from hpsearch.engine.models import build_model


def momenta(model: nn.Module) -> set:
    return {m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def test_none_keeps_the_models_own_and_a_value_reaches_every_batchnorm():
    assert momenta(build_model("mobilenet_v3_small", 10)) == {0.01}  # torchvision's, for long ImageNet runs
    assert momenta(build_model("resnet18", 10)) == {0.1}
    assert momenta(build_model("mobilenet_v3_small", 10, bn_momentum=0.1)) == {0.1}


def test_running_statistics_follow_the_batches_at_the_momentum_given():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32) * 3 + 5  # far from the statistics BatchNorm starts with (mean 0, var 1)
    moved = {}
    for momentum in (None, 0.1):
        model = build_model("mobilenet_v3_small", 10, bn_momentum=momentum).train()
        with torch.no_grad():
            for _ in range(20):
                model(x)
        stem = model.features[0][1]  # the stem's BatchNorm sees x directly through one convolution
        moved[momentum] = stem.running_var.mean().item() - 1.0  # how far from the variance it starts with
    # 20 steps at 0.01 leave 82% of the weight on the initial variance; at 0.1, 12%.
    assert moved[0.1] > 3 * moved[None] > 0
