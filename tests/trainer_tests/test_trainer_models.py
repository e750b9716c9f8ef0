"""hpsearch.engine.models: heads, dropout, weights (torchvision's and state_dict files), freezing."""

from __future__ import annotations

import os
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from hpsearch.core.hparams import HParams
from hpsearch.engine.data import DataConfig, load_data
from hpsearch.engine.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DropoutLinear,
    WeightsNotAvailable,
    build_model,
    head_parameters,
    list_classification_models,
    normalization,
    resolve_weights,
    set_train_mode,
)
from hpsearch.engine.train import Trainer, seed_everything


@pytest.mark.parametrize(("name", "head"), [
    ("resnet18", "fc"),
    ("mobilenet_v2", "classifier.1"),
    ("mobilenet_v3_small", "classifier.3"),
    ("shufflenet_v2_x0_5", "fc"),
    ("mnasnet0_5", "classifier.1"),
    ("efficientnet_b0", "classifier.1"),
    ("regnet_x_400mf", "fc"),
    ("squeezenet1_1", "classifier.1"),
    ("googlenet", "fc"),
])
def test_new_head_with_num_classes(name, head):
    model = build_model(name, 7).eval()
    new = model.get_submodule(head)
    assert (new.out_channels if isinstance(new, nn.Conv2d) else new.out_features) == 7
    assert head_parameters(model) == list(new.parameters())
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 7)  # googlenet: aux heads off, plain logits


def test_dropout_sets_the_existing_one_or_inserts_one():
    assert build_model("mobilenet_v2", 3).classifier[0].p == 0.2  # None: the model's own
    assert build_model("mobilenet_v2", 3, dropout=0.4).classifier[0].p == 0.4
    resnet = build_model("resnet18", 3, dropout=0.3)
    assert isinstance(resnet.fc, DropoutLinear)
    assert resnet.fc.dropout.p == 0.3
    # Checkpoints keep the plain Linear's keys whatever the dropout, so they load either way.
    assert resnet.state_dict().keys() == build_model("resnet18", 3).state_dict().keys()
    resnet.train()
    x = torch.ones(1, 512)
    assert not torch.equal(resnet.fc(x), resnet.fc(x))  # dropout really active in train mode


def test_state_dict_file_round_trips(tmp_path):
    """A checkpoint hpsearch saved (num_classes outputs) loads after the new head: identical outputs."""
    seed_everything(0)
    original = build_model("mobilenet_v2", 10, dropout=0.1).eval()
    torch.save(original.state_dict(), tmp_path / "best.pt")
    torch.save({"model": original.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pth")
    x = torch.randn(2, 3, 32, 32)
    for file in ("best.pt", "checkpoint.pth"):
        seed_everything(1)
        loaded = build_model("mobilenet_v2", 10, weights=str(tmp_path / file), dropout=0.1).eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), original(x))


def test_imagenet_shaped_file_loads_before_the_head_is_replaced(tmp_path):
    imagenet = torchvision.models.resnet18()  # 1000 classes, as torchvision builds it
    torch.save(imagenet.state_dict(), tmp_path / "resnet18_imagenet.pth")
    model = build_model("resnet18", 5, weights=str(tmp_path / "resnet18_imagenet.pth"))
    assert model.fc.weight.shape == (5, 512)
    assert torch.equal(model.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)


def test_state_dict_file_of_another_architecture_is_refused_clearly(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ValueError, match=r"r18.pt does not fit resnet34 as torchvision builds it: "
                                         r"96 keys missing \(layer1.2.conv1.weight, layer1.2.bn1.weight, "):
        build_model("resnet34", 10, weights=str(tmp_path / "r18.pt"))


def test_resolve_weights_names():
    enum = torchvision.models.MobileNet_V2_Weights
    assert resolve_weights("mobilenet_v2", "none") is None
    assert resolve_weights("mobilenet_v2", "DEFAULT") is enum.DEFAULT
    assert resolve_weights("mobilenet_v2", "IMAGENET1K_V2") is enum.IMAGENET1K_V2
    assert resolve_weights("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1") is enum.IMAGENET1K_V1
    assert resolve_weights("mobilenet_v2", "ckpts/best.pt") == "ckpts/best.pt"
    assert resolve_weights("mobilenet_v2", "best.pth") == "best.pth"
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET22K' for mobilenet_v2; .*IMAGENET1K_V1"):
        resolve_weights("mobilenet_v2", "IMAGENET22K")
    with pytest.raises(ValueError, match="unknown weights 'ResNet18_Weights.IMAGENET1K_V1'"):
        resolve_weights("mobilenet_v2", "ResNet18_Weights.IMAGENET1K_V1")


def test_normalization_is_the_weights_own():
    transforms = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    assert normalization("resnet18", "DEFAULT") == (tuple(transforms.mean), tuple(transforms.std))
    # Without weights: ImageNet's statistics all the same, the inputs a pretrained model would see.
    assert normalization("resnet18", "none") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_unknown_model_suggests_the_nearest():
    assert {"resnet18", "mobilenet_v2", "vit_b_16"} <= set(list_classification_models())
    with pytest.raises(ValueError, match="unknown model 'resnet19'; did you mean resnet18"):
        build_model("resnet19", 10)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and no network: every download fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return os.path.join(str(tmp_path), "hub", "checkpoints")


def test_weights_not_cached_and_offline_names_the_file_to_place(offline_hub):
    url = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url
    path = os.path.join(offline_hub, os.path.basename(url))
    with pytest.raises(WeightsNotAvailable) as e:
        build_model("mobilenet_v2", 10, weights="IMAGENET1K_V1")
    assert f"download {url} and place it at {path}" in str(e.value)
    assert "Temporary failure in name resolution" in str(e.value)


def test_cached_torchvision_weights_load_offline(offline_hub):
    """A weights file already in the hub cache is used as torchvision would, without the network."""
    url = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url
    pretrained = torchvision.models.mobilenet_v2()
    os.makedirs(offline_hub)
    torch.save(pretrained.state_dict(), os.path.join(offline_hub, os.path.basename(url)))
    model = build_model("mobilenet_v2", 10, weights="IMAGENET1K_V1")
    assert torch.equal(model.features[3].conv[1][0].weight, pretrained.features[3].conv[1][0].weight)
    assert model.classifier[1].out_features == 10


def test_frozen_backbone_trains_only_the_head():
    seed_everything(0)
    model = build_model("mobilenet_v2", 4, freeze="backbone")
    assert [p for p in model.parameters() if p.requires_grad] == head_parameters(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = load_data(DataConfig("fake", samples=48, num_classes=4), "cpu", IMAGENET_MEAN, IMAGENET_STD)
    trainer = Trainer(model, task, HParams(lr=0.1, batch_size=16, epochs=1), device="cpu")
    head_inputs = []
    model.classifier.register_forward_pre_hook(lambda module, args: head_inputs.append(args[0]))
    trainer.fit()
    # No autograd graph through the backbone: backward stops at the head.
    assert head_inputs
    assert not any(x.requires_grad or x.grad_fn for x in head_inputs)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    # Frozen BatchNorm layers stay in eval mode: their running statistics do not move either.
    assert changed == {"classifier.1.weight", "classifier.1.bias"}
    set_train_mode(model)
    assert model.classifier[0].training
    assert model.classifier[1].training
    assert not model.features.training
    assert not any(m.training for m in model.features.modules())


def test_a_model_from_scratch_starts_with_torchvisions_own_head():
    """MobileNetV2 initialises its classifier N(0, 0.01) with zero bias; nn.Linear's default would not."""
    torch.manual_seed(0)
    head = build_model("mobilenet_v2", 10, weights="none", dropout=0.1).classifier[-1]
    assert head.out_features == 10
    assert torch.all(head.bias == 0)
    assert 0.008 < head.weight.std().item() < 0.012
