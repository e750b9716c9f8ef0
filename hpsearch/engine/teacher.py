"""Knowledge distillation's teacher: a trained classifier that only predicts, on the batches the student sees.

The student learns from (1 - alpha) · CE(labels) + alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T))
(Hinton et al., 2015; T² keeps the soft term's gradients on the hard term's scale as T grows). The teacher
never trains: it stays in eval mode whatever is asked of it and holds no grads. A batch comes normalised for
the student; a teacher trained with another mean/std renormalises it first.

Also what the spec checks before any compute, with nothing downloaded or built in memory: how many classes a
teacher predicts (its weights' meta, or the head in its file).

Torch-only on purpose (the trainer imports it; runs on GPU boxes that lack the rest of hpsearch's dependencies).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.engine.models import build_model, head_name, resolve_weights, skeleton

Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]  # (mean, std)


class Teacher(nn.Module):
    """A trained classifier in eval mode, without grads, that first renormalises the batch when `renormalise`
    holds (scale, shift) per channel."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, model: nn.Module, renormalise: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.model = model
        self.renormalise = renormalise is not None
        scale, shift = renormalise if renormalise is not None else (torch.ones(3), torch.zeros(3))
        self.register_buffer("scale", scale.reshape(1, 3, 1, 1))
        self.register_buffer("shift", shift.reshape(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # its BatchNorm statistics and dropout stay as they were trained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renormalise:
            x = x * self.scale + self.shift
        return self.model(x)


def prepare_teacher(teacher: nn.Module, device: torch.device | str, dtype: torch.dtype,
                    memory_format: torch.memory_format = torch.contiguous_format) -> None:
    """Move the teacher (in place) to `device` for inference in `dtype`, without grads.

    BatchNorm layers and the teacher's own buffers (the renormalisation's scale and shift) stay float32:
    in bf16 a running variance or a std ratio keeps 3 significant digits, and BatchNorm takes a bf16 input
    with float32 parameters, as under autocast.
    """
    teacher.to(device, memory_format=memory_format)  # type: ignore[call-overload]
    if dtype != torch.float32:
        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(dtype) if t.is_floating_point() else t

        for module in teacher.modules():
            if not isinstance(module, (Teacher, nn.modules.batchnorm._BatchNorm)):
                module._apply(cast, recurse=False)
    teacher.eval().requires_grad_(False)


def renormalisation(student: Normalization, teacher: Normalization) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) turning a batch normalised the student's way into the teacher's; None when they agree."""
    if student == teacher:
        return None
    (mean_s, std_s), (mean_t, std_t) = (tuple(torch.tensor(v, dtype=torch.float32) for v in n)
                                        for n in (student, teacher))
    # (raw - mean_t) / std_t, with raw = x · std_s + mean_s
    return std_s / std_t, (mean_s - mean_t) / std_t


def build_teacher(name: str, num_classes: int, weights: str, trained_with: Normalization,
                  student: Normalization) -> Teacher:
    """The teacher `name` with `weights` (a torchvision weights name or a state_dict file), on the CPU, for a
    student whose batches are normalised with `student`; `trained_with` is the teacher's own normalisation."""
    classes = predicted_classes(name, weights)
    if classes != num_classes:  # build_model would put a new, untrained head on it
        raise ValueError(f"the teacher {name} ({weights}) predicts {classes} classes; the task has {num_classes}")
    return Teacher(build_model(name, num_classes, weights=weights), renormalisation(student, trained_with))


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      criterion: nn.Module, alpha: float, temperature: float) -> torch.Tensor:
    """(1 - alpha) · criterion(student, labels) + alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)),
    the KL summed over classes and averaged over the batch, as the criterion is; in float32."""
    hard = criterion(student_logits, labels)
    soft = F.kl_div(F.log_softmax(student_logits.float() / temperature, dim=1),
                    F.log_softmax(teacher_logits.float() / temperature, dim=1), reduction="batchmean", log_target=True)
    return (1 - alpha) * hard + alpha * temperature ** 2 * soft


def predicted_classes(name: str, weights: str) -> int:
    """How many classes `name` with `weights` predicts: the weights' meta, or the head's rows in the file
    (memory-mapped, not read). ValueError when the weights are none or the file is not such a state_dict."""
    resolved = resolve_weights(name, weights)
    if resolved is None:
        raise ValueError("a teacher needs trained weights, got none")
    if not isinstance(resolved, str):
        return len(resolved.meta["categories"])
    state = torch.load(resolved, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # as build_model reads files too
        state = state["model"]
    key = f"{head_name(skeleton(name))}.weight"
    if not isinstance(state, dict) or not isinstance(state.get(key), torch.Tensor):
        raise ValueError(f"{resolved} is not a state_dict of {name} (it has no {key})")
    return int(state[key].shape[0])
