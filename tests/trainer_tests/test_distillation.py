"""Knowledge distillation: the loss is the stated mix of the labels' and the teacher's, the teacher never trains,
its batch is renormalised when it was trained with another mean/std, and a worker loads it once.

Tiny models on tiny fake images: what is checked is the arithmetic and what moves, not what is learned.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from hpsearch.core.hparams import HParams
from hpsearch.engine.data import DataConfig, load_data
from hpsearch.engine.models import IMAGENET_MEAN, IMAGENET_STD
from hpsearch.engine.teacher import Teacher, distillation_loss, prepare_teacher, renormalisation
from hpsearch.engine.train import Trainer, graphs_disabled_reason, seed_everything

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SIZE, CLASSES = 8, 4


def fake8(device: str = "cpu"):
    """40 random 8×8 images in 4 classes (30 to train on, in batches of 8 and a ragged one of 6)."""
    config = DataConfig("fake", samples=40, num_classes=CLASSES, image_size=SIZE, val_fraction=0.25)
    return load_data(config, device, IMAGENET_MEAN, IMAGENET_STD)


def small_net(seed: int) -> nn.Module:
    """Conv, BatchNorm and dropout: a net whose eval mode matters (running statistics, dropout masks)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3),
                         nn.Linear(6 * SIZE * SIZE, CLASSES))


def student_net(seed: int) -> nn.Module:
    """No dropout: two forwards of one batch in train mode give the same logits."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * SIZE * SIZE, CLASSES))


def trainer_with_teacher(hp: HParams, data=None) -> Trainer:
    return Trainer(student_net(0), data or fake8(), hp, device="cpu", teacher=Teacher(small_net(1)))


def a_batch(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(trainer.data.train.batches(8, shuffle=False, augment=False)))


def grads(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    trainer.model.zero_grad(set_to_none=True)
    trainer.loss(x, y).backward()
    return [p.grad.clone() for p in trainer.model.parameters()]


def test_with_alpha_one_the_labels_do_not_move_the_gradient():
    trainer = trainer_with_teacher(HParams(distill_alpha=1.0, distill_temperature=3.0, label_smoothing=0.1))
    x, y = a_batch(trainer)
    other = (y + 1) % CLASSES
    assert not torch.equal(y, other)
    first, second = grads(trainer, x, y), grads(trainer, x, other)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert any(g.abs().sum() > 0 for g in first)  # the teacher's term does teach


def test_with_alpha_zero_the_loss_is_the_criterions():
    trainer = trainer_with_teacher(HParams(distill_alpha=0.0, label_smoothing=0.1))
    x, y = a_batch(trainer)
    plain = nn.CrossEntropyLoss(label_smoothing=0.1)(trainer.model(x), y)
    assert torch.equal(trainer.loss(x, y), plain)


def test_the_loss_is_the_formula_by_hand():
    student = [[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]]
    teacher = [[1.0, 0.0, 3.0], [-1.0, 2.0, 0.5]]
    labels, alpha, temperature, smoothing = [0, 2], 0.3, 2.0, 0.1

    def log_softmax(row: list[float], t: float = 1.0) -> list[float]:
        scaled = [v / t for v in row]
        norm = math.log(sum(math.exp(v) for v in scaled))
        return [v - norm for v in scaled]

    hard = soft = 0.0
    for s, t, label in zip(student, teacher, labels, strict=True):
        log_p = log_softmax(s)
        # label smoothing: (1 - ε) on the label, ε spread evenly over every class
        hard += -(1 - smoothing) * log_p[label] - smoothing * sum(log_p) / len(s)
        log_ps, log_pt = log_softmax(s, temperature), log_softmax(t, temperature)
        soft += sum(math.exp(qt) * (qt - qs) for qt, qs in zip(log_pt, log_ps, strict=True))
    expected = (1 - alpha) * hard / 2 + alpha * temperature**2 * soft / 2

    loss = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels),
                             nn.CrossEntropyLoss(label_smoothing=smoothing), alpha, temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_the_teacher_never_trains_and_stays_in_eval_mode():
    seed_everything(0)
    teacher = Teacher(small_net(1))
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = student_net(0)
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    calls = []
    teacher.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    trainer = Trainer(student, fake8(), HParams(lr=0.1, batch_size=8, epochs=2, distill_alpha=0.7), device="cpu",
                      teacher=teacher)
    teacher.train()  # asked to train (as the student is every epoch): it stays in eval mode
    trainer.fit()
    assert calls == [8, 8, 8, 6] * 2  # every step, the ragged one too: the teacher sees the student's batches
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert not any(m.training for m in teacher.modules())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())
    assert trainer.teacher is teacher
    assert next(teacher.parameters()).dtype == torch.float32  # fp32 on the CPU


def test_without_a_teacher_the_step_is_the_plain_one():
    trainer = Trainer(student_net(0), fake8(), HParams(), device="cpu")
    assert trainer.teacher is None
    assert trainer.loss.__func__ is Trainer._plain_loss
    assert trainer_with_teacher(HParams()).loss.__func__ is Trainer._distilled_loss


def test_a_teacher_trained_with_another_normalisation_gets_the_batch_its_way():
    raw = torch.rand(2, 3, SIZE, SIZE)
    student_norm = (IMAGENET_MEAN, IMAGENET_STD)
    teacher_norm = ((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))

    def normalised(norm):
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in norm)
        return (raw - mean) / std

    seen = []
    teacher = Teacher(nn.Identity(), renormalisation(student_norm, teacher_norm))
    teacher.register_forward_hook(lambda module, args, out: seen.append(out))
    teacher(normalised(student_norm))
    torch.testing.assert_close(seen[0], normalised(teacher_norm))
    assert renormalisation(student_norm, student_norm) is None  # the same normalisation: the batch as it is


def test_a_bf16_teacher_keeps_batchnorm_and_its_renormalisation_in_float32():
    """The teacher as the Trainer prepares it for a CUDA trial's bf16 autocast (here on the CPU): weights in bf16,
    BatchNorm (running statistics too) and the renormalisation's scale and shift in float32."""
    student_norm = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    teacher = Teacher(small_net(1), renormalisation(student_norm, (IMAGENET_MEAN, IMAGENET_STD)))
    bn = teacher.model[1]
    with torch.no_grad():  # statistics as training leaves them, not the initial 0 and 1
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    reference = copy.deepcopy(teacher)
    prepare_teacher(teacher, "cpu", torch.bfloat16)
    assert teacher.model[0].weight.dtype == teacher.model[5].weight.dtype == torch.bfloat16
    kept = [*bn.parameters(), bn.running_mean, bn.running_var, teacher.scale, teacher.shift]
    assert {t.dtype for t in kept} == {torch.float32}
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(8, 3, SIZE, SIZE)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = teacher(x).float()
    torch.testing.assert_close(logits, reference(x), rtol=0.02, atol=0.02)  # bf16's rounding only


@CUDA
def test_the_teacher_runs_inside_the_captured_step_in_bf16_on_cuda():
    seed_everything(0)
    teacher = Teacher(small_net(1))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = Trainer(student_net(0), fake8("cuda"), HParams(lr=0.05, batch_size=8, epochs=2), device="cuda",
                      teacher=teacher)
    history = trainer.fit()
    assert trainer._graph is not None
    assert graphs_disabled_reason() is None  # captured with the teacher in it
    assert next(teacher.parameters()).dtype == torch.bfloat16
    assert not teacher.training
    assert teacher.model[1].running_var.dtype == teacher.scale.dtype == torch.float32
    assert all(torch.equal(v.cpu(), before[k].to(v.dtype)) for k, v in teacher.state_dict().items())
    assert all(math.isfinite(s.train_loss) for s in history)
