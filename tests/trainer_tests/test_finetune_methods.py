"""Fine-tuning methods: partial freezing by stages, the backbone's lr scale, layer-wise lr decay, gradual unfreezing.

Models train from random weights on tiny fake images: what is checked is which weights move and how fast.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from hpsearch.core.hparams import HParams
from hpsearch.engine.data import DataConfig, load_data
from hpsearch.engine.finetune import param_groups
from hpsearch.engine.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_stages,
    build_model,
    count_stages,
    head_parameters,
    set_train_mode,
    skeleton,
    stage_parameters,
)
from hpsearch.engine.optim import build_optimizer, build_scheduler
from hpsearch.engine.train import GRAPH_WARMUP_STEPS, Trainer, graphs_disabled_reason, seed_everything

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def fake16(device: str = "cpu"):
    """30 training images of 16×16 in 4 classes (and 10 for validation): batches of 4 or 8 leave a ragged last
    batch of more than one image, as ResNet's BatchNorm needs at 1×1 in layer4."""
    config = DataConfig("fake", samples=40, num_classes=4, image_size=16, val_fraction=0.25)
    return load_data(config, device, IMAGENET_MEAN, IMAGENET_STD)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    """The state_dict entries (weights, BatchNorm statistics) that are not bit-identical between two snapshots."""
    return {k for k, v in after.items() if not torch.equal(v, before[k])}


def under(keys: set[str], *prefixes: str) -> set[str]:
    return {k for k in keys if k.startswith(prefixes)}


# --------------------------------------------------------------------------- stages per model family


@pytest.mark.parametrize(("name", "count"), [
    ("mobilenet_v2", 19), ("resnet18", 5), ("resnet50", 5), ("alexnet", 7), ("efficientnet_b0", 9), ("vit_b_16", 13),
])
def test_stage_counts_and_every_parameter_in_one_place(name, count):
    model = skeleton(name)  # the architecture on the meta device: no weights made, nothing downloaded
    stages = backbone_stages(model)
    assert len(stages) == count_stages(name) == count
    assert [s.name for s in stages] == [f"stage_{i}" for i in range(count)]
    # Each parameter is in exactly one stage or the head: what freezes and what decays covers the network.
    placed = [id(p) for s in stages for p in stage_parameters(model, s)] + [id(p) for p in head_parameters(model)]
    assert sorted(placed) == sorted(id(p) for p in model.parameters())


def test_stage_members_per_family():
    def members(name):
        return [s.members for s in backbone_stages(skeleton(name))]

    # ResNet: the stem (conv1 + bn1), then layer1..4; the fc head is no stage.
    resnet = [("conv1", "bn1", "relu", "maxpool"), ("layer1",), ("layer2",), ("layer3",), ("layer4", "avgpool")]
    assert members("resnet18") == members("resnet50") == resnet
    assert members("mobilenet_v2") == [(f"features.{i}",) for i in range(19)]
    assert members("efficientnet_b0") == [(f"features.{i}",) for i in range(8)] + [("features.8", "avgpool")]
    # AlexNet: five conv blocks, then fc6 and fc7 with the dropout before each.
    assert members("alexnet") == [
        ("features.0", "features.1", "features.2"), ("features.3", "features.4", "features.5"),
        ("features.6", "features.7"), ("features.8", "features.9"), ("features.10", "features.11", "features.12",
                                                                     "avgpool"),
        ("classifier.0", "classifier.1", "classifier.2"), ("classifier.3", "classifier.4", "classifier.5"),
    ]
    vit = members("vit_b_16")
    assert vit[0] == ("conv_proj", "class_token", "encoder.pos_embedding", "encoder.dropout")
    assert vit[1:12] == [(f"encoder.layers.encoder_layer_{i}",) for i in range(11)]
    assert vit[12] == ("encoder.layers.encoder_layer_11", "encoder.ln")


def test_build_model_refuses_what_it_cannot_freeze():
    with pytest.raises(ValueError, match="freeze=partial needs unfrozen_blocks"):
        build_model("resnet18", 4, freeze="partial")
    with pytest.raises(ValueError, match=r"unfrozen_blocks must be in \[0, 5\] \(resnet18 has 5 stages\), got 6"):
        build_model("resnet18", 4, freeze="partial", unfrozen_blocks=6)


# --------------------------------------------------------------------------- partial freezing


def test_partial_freeze_trains_the_last_stages_and_keeps_the_rest_bit_identical():
    seed_everything(0)
    model = build_model("resnet18", 4, freeze="partial", unfrozen_blocks=2)  # layer3, layer4 and fc train
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4", "fc"}
    before = snapshot(model)
    trainer = Trainer(model, fake16(), HParams(lr=0.1, batch_size=8, epochs=2), device="cpu")
    trainer.fit()
    changed = moved(before, snapshot(model))
    # The frozen stem, layer1 and layer2: weights and BatchNorm statistics as they were, over two epochs of
    # set_train_mode (model.train() and then eval for what is frozen) at each epoch's start.
    assert under(changed, "conv1", "bn1", "layer1", "layer2") == set()
    for stage in ("layer3", "layer4"):
        assert {f"{stage}.0.conv1.weight", f"{stage}.1.bn2.running_mean", f"{stage}.1.bn2.num_batches_tracked"
                } <= changed
    assert {"fc.weight", "fc.bias"} <= changed
    set_train_mode(model)
    assert not any(m.training for m in model.layer2.modules())
    assert not model.bn1.training
    assert all(m.training for m in model.layer3.modules())
    assert model.fc.training


# --------------------------------------------------------------------------- learning rates per group


def groups_by_name(trainer: Trainer) -> dict[str, dict]:
    return {g["name"]: g for g in trainer.optimizer.param_groups}


def test_head_learns_at_lr_and_the_backbone_at_lr_times_scale():
    model = build_model("resnet18", 4)
    trainer = Trainer(model, fake16(), HParams(lr=0.1, backbone_lr_scale=0.2), device="cpu")
    groups = groups_by_name(trainer)
    assert list(groups) == ["head", "backbone"]  # the head first: its lr is the epoch's `lr` metric
    assert groups["head"]["lr"] == 0.1
    assert groups["backbone"]["lr"] == pytest.approx(0.02)
    assert groups["head"]["params"] == head_parameters(model)
    assert len(groups["backbone"]["params"]) == len(list(model.parameters())) - 2
    assert trainer.group_lrs == {"lr.head": 0.1, "lr.backbone": pytest.approx(0.02)}  # what the run records
    # Default rates: one group of every parameter, as plain training has (and nothing extra to record).
    plain = Trainer(build_model("resnet18", 4), fake16(), HParams(lr=0.1), device="cpu")
    assert [g["name"] for g in plain.optimizer.param_groups] == ["all"]
    assert plain.group_lrs == {}


def test_layer_decay_gives_each_stage_its_rate_from_the_head_down():
    model = build_model("resnet18", 4)
    trainer = Trainer(model, fake16(), HParams(lr=0.1, backbone_lr_scale=0.5, layer_decay=0.5), device="cpu")
    groups = groups_by_name(trainer)
    assert list(groups) == ["head", "stage_4", "stage_3", "stage_2", "stage_1", "stage_0"]
    assert groups["head"]["lr"] == 0.1
    for k in range(1, 6):  # stage_4 (layer4) is 1 below the head, stage_0 (the stem) 5
        assert groups[f"stage_{5 - k}"]["lr"] == pytest.approx(0.1 * 0.5 * 0.5**k)
    assert {id(p) for p in groups["stage_0"]["params"]} == {id(model.conv1.weight), id(model.bn1.weight),
                                                             id(model.bn1.bias)}
    assert trainer.group_lrs["lr.stage_0"] == pytest.approx(0.1 * 0.5**6)


@pytest.mark.parametrize(("scale", "decay"), [(0.25, 1.0), (1.0, 0.5), (0.5, 0.5)])
def test_the_rates_reach_the_updates(scale, decay):
    """One SGD step (no momentum, no weight decay) from the same weights on the same batch: every update is
    lr × multiplier × the same gradient, so each stage moves by its multiplier times what plain training moves."""
    seed_everything(0)
    model = build_model("resnet18", 4)
    data = fake16()
    x, y = next(data.train.batches(8, shuffle=False, augment=False, drop_last=False))

    def updates(hp: HParams) -> dict[str, torch.Tensor]:
        copy_ = copy.deepcopy(model)
        trainer = Trainer(copy_, data, hp, device="cpu")
        start = snapshot(copy_)
        set_train_mode(copy_)
        trainer.train_step(x, y)
        return {n: p.detach() - start[n] for n, p in copy_.named_parameters()}

    plain = updates(HParams(lr=0.1, momentum=0.0))
    scaled = updates(HParams(lr=0.1, momentum=0.0, backbone_lr_scale=scale, layer_decay=decay))
    checks = {"fc.weight": 1.0, "layer4.1.conv2.weight": scale * decay, "layer2.0.conv1.weight": scale * decay**3,
              "conv1.weight": scale * decay**5}
    for name, multiplier in checks.items():
        assert plain[name].abs().max() > 1e-5  # far above the tolerance: an ignored multiplier shows
        torch.testing.assert_close(scaled[name], plain[name] * multiplier, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_the_schedule_keeps_every_group_at_its_share(scheduler):
    model = build_model("resnet18", 4)
    hp = HParams(lr=0.1, epochs=3, scheduler=scheduler, warmup_epochs=1, backbone_lr_scale=0.5, layer_decay=0.8)
    optimizer = build_optimizer(param_groups(model, hp), hp)
    schedule = build_scheduler(optimizer, hp, steps_per_epoch=4)
    shares = [g["base_lr"] / hp.lr for g in optimizer.param_groups]
    for _ in range(7):  # through the warm-up (onecycle: its peak) into the decay
        optimizer.step()  # no grads: nothing moves, but the schedule is stepped in torch's order
        schedule.step()
        head = optimizer.param_groups[0]["lr"]
        assert [g["lr"] / head for g in optimizer.param_groups] == pytest.approx(shares)
    assert 0 < head < hp.lr


# --------------------------------------------------------------------------- gradual unfreezing


@pytest.mark.parametrize(("freeze", "blocks", "frozen_until_2"), [
    ("backbone", None, ("conv1", "bn1", "layer")),
    ("partial", 2, ("conv1", "bn1", "layer1", "layer2")),
], ids=["backbone", "partial"])
def test_unfreeze_epoch_keeps_the_backbone_until_then(freeze, blocks, frozen_until_2):
    seed_everything(0)
    model = build_model("resnet18", 4, freeze=freeze, unfrozen_blocks=blocks)
    hp = HParams(optimizer="adam", lr=0.01, batch_size=8, epochs=2, scheduler="cosine", unfreeze_epoch=2,
                 backbone_lr_scale=0.5)
    trainer = Trainer(model, fake16(), hp, device="cpu")
    start, after, lrs = snapshot(model), {}, {}

    def on_epoch(stats):
        after[stats.epoch] = snapshot(model)
        lrs[stats.epoch] = {name: g["lr"] for name, g in groups_by_name(trainer).items()}

    trainer.fit(on_epoch)
    epoch1, epoch2 = moved(start, after[1]), moved(after[1], after[2])
    assert under(epoch1, *frozen_until_2) == set()
    assert {"fc.weight", "fc.bias"} <= epoch1
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.bn1.running_var"} <= epoch2
    assert all(p.requires_grad for p in model.parameters())
    # The backbone joins where the schedule is (half-way down the cosine), at its share of the head's lr;
    # its Adam state is as old as its training (4 steps in epoch 2), the head's counts both epochs.
    assert lrs[1]["head"] == pytest.approx(0.005)
    assert lrs[1]["backbone"] == pytest.approx(0.0025)
    state = trainer.optimizer.state
    assert state[model.conv1.weight]["step"] == 4
    assert state[model.fc.weight]["step"] == 8


class GraphsOnCpu:
    """torch.cuda's graph API as the Trainer uses it, on CPU tensors: a capture records the step it is given
    instead of running it, a replay runs it (grads written afresh, as a graph's are), and each capture notes
    which parameters the captured step trains."""

    def __init__(self, monkeypatch, trainer: Trainer):
        self.captures: list[set[str]] = []
        self.warmups = 0
        self.recording = None
        fake = self
        real_step, real_warmup = trainer._forward_backward_step, trainer._warmup_step

        def step(x, y, *, for_graph=False):
            if fake.recording is not None:
                fake.recording.step = lambda: real_step(x, y, for_graph=True)
            else:
                real_step(x, y, for_graph=for_graph)

        def warmup(x, y):
            fake.warmups += 1
            real_warmup(x, y)

        class Stream:
            def __init__(self, device=None):
                pass

            def wait_stream(self, other):
                pass

        class Graph:
            def replay(self):
                trainer.optimizer.zero_grad(set_to_none=True)
                self.step()

        @contextlib.contextmanager
        def capture(graph, pool=None, stream=None, capture_error_mode="global"):
            fake.captures.append({n for n, p in trainer.model.named_parameters() if p.requires_grad})
            fake.recording = graph
            try:
                yield
            finally:
                fake.recording = None

        monkeypatch.setattr(trainer, "_forward_backward_step", step)
        monkeypatch.setattr(trainer, "_warmup_step", warmup)
        def nothing(*args, **kwargs):
            return None

        for name, value in dict(Stream=Stream, CUDAGraph=Graph, graph=capture, current_stream=Stream,
                                stream=lambda s: contextlib.nullcontext(), device=lambda d: contextlib.nullcontext(),
                                set_stream=nothing, graph_pool_handle=nothing, synchronize=nothing).items():
            monkeypatch.setattr(torch.cuda, name, value)
        trainer.use_graphs, trainer._side_stream = True, Stream()


def test_unfreezing_captures_the_step_again(monkeypatch):
    """The graph path on the CPU: the step captured while only the head trains is dropped when the backbone
    joins; fresh warm-up steps and a new capture follow, whose step trains everything."""
    seed_everything(0)
    model = build_model("resnet18", 4, freeze="backbone")
    # 30 images in batches of 4: 7 full batches (3 warm-up steps, a capture and 3 replays) and a ragged one.
    trainer = Trainer(model, fake16(), HParams(lr=0.05, batch_size=4, epochs=2, unfreeze_epoch=2), device="cpu")
    graphs = GraphsOnCpu(monkeypatch, trainer)
    start, after = snapshot(model), {}
    trainer.fit(lambda stats: after.__setitem__(stats.epoch, snapshot(model)))
    assert graphs.captures == [{"fc.weight", "fc.bias"}, {n for n, _ in model.named_parameters()}]
    assert graphs.warmups == 2 * GRAPH_WARMUP_STEPS
    assert trainer._graph is not None
    epoch1, epoch2 = moved(start, after[1]), moved(after[1], after[2])
    assert under(epoch1, "conv1", "bn1", "layer") == set()
    assert {"fc.weight", "fc.bias"} <= epoch1
    assert {"conv1.weight", "layer4.1.conv2.weight", "layer4.1.bn2.running_mean"} <= epoch2


@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_sgd_steps_after_unfreezing_as_the_eager_one(nesterov):
    """The optimizer exactly as the CUDA-graph path builds it (lr_tensor=True: fused SGD, a tensor lr), which
    torch runs on the CPU too. After unfreezing, the backbone's parameters join with no momentum buffer while
    the head's have one: fused SGD must step them as the eager SGD does (its first step: buf = grad)."""
    # A small lr: with random labels, larger steps amplify rounding differences between the two kernels.
    hp = HParams(optimizer="sgd", momentum=0.9, nesterov=nesterov, lr=0.002, batch_size=8, epochs=2,
                 unfreeze_epoch=2)

    def trained(lr_tensor: bool) -> Trainer:
        seed_everything(0)
        model = build_model("resnet18", 4, freeze="backbone")
        trainer = Trainer(model, fake16(), hp, device="cpu")
        if lr_tensor:  # what Trainer builds when it captures graphs (use_graphs), on a CUDA device
            trainer.optimizer = build_optimizer(param_groups(model, hp, include_frozen=True), hp, lr_tensor=True)
            trainer.schedule = build_scheduler(trainer.optimizer, hp, trainer.steps_per_epoch)
        trainer.fit()
        return trainer

    fused, eager = trained(lr_tensor=True), trained(lr_tensor=False)
    assert fused.optimizer.defaults["fused"]
    assert isinstance(fused.optimizer.param_groups[0]["lr"], torch.Tensor)
    for (name, a), b in zip(fused.model.named_parameters(), eager.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@CUDA
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_unfreezing_captures_the_step_again_on_cuda(optimizer):
    seed_everything(0)
    model = build_model("resnet18", 4, freeze="backbone")
    data = fake16("cuda")
    hp = HParams(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.003, momentum=0.9, batch_size=4,
                 epochs=2, unfreeze_epoch=2)
    trainer = Trainer(model, data, hp, device="cuda")
    graphs, start, after = [], snapshot(model), {}
    trainer.fit(lambda stats: (graphs.append(trainer._graph), after.__setitem__(stats.epoch, snapshot(model))))
    assert graphs[0] is not None
    assert graphs[1] is not None
    assert graphs[0] is not graphs[1]  # captured again
    epoch1, epoch2 = moved(start, after[1]), moved(after[1], after[2])
    assert under(epoch1, "conv1", "bn1", "layer") == set()
    assert {"fc.weight", "fc.bias"} <= epoch1
    assert {"conv1.weight", "layer1.0.bn1.running_mean", "layer4.1.conv2.weight"} <= epoch2
    assert graphs_disabled_reason() is None
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --------------------------------------------------------------------------- what a trial records

