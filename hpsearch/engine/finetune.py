"""How fast each part of a pretrained network learns: the optimizer's parameter groups, head first.

The head learns at lr, the backbone at lr × backbone_lr_scale, and with layer_decay < 1 each backbone stage
(models.backbone_stages) gets its own rate: the stage k stages below the head, the topmost being k = 1, at
lr × backbone_lr_scale × layer_decay^k (layer-wise learning-rate decay, as BEiT and timm count it).

Torch-only on purpose (runs on GPU boxes that lack the rest of hpsearch's dependencies).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from hpsearch.core.hparams import HParams
from hpsearch.engine.models import backbone_stages, head_parameters, stage_parameters


def param_groups(model: nn.Module, hp: HParams, include_frozen: bool = False) -> list[dict[str, Any]]:
    """Groups {"name", "params", "lr"} for the optimizer, the head's first (the trainer reports the first
    group's lr as the epoch's). Built once per trial. Frozen parameters are left out unless `include_frozen`
    (they unfreeze later, so they need their group from the start; without a grad the optimizer skips them).

    Default rates give one group "all", in the model's parameter order: the optimizer of plain training.
    """
    def wanted(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
        return [p for p in params if p.requires_grad or include_frozen]

    if hp.backbone_lr_scale == 1 and hp.layer_decay == 1:
        return [{"name": "all", "params": wanted(model.parameters()), "lr": hp.lr}]
    head = head_parameters(model)
    taken = {id(p) for p in head}
    backbone = hp.lr * hp.backbone_lr_scale
    groups = [{"name": "head", "params": wanted(head), "lr": hp.lr}]
    if hp.layer_decay != 1:
        stages = backbone_stages(model)
        for depth, stage in enumerate(reversed(stages), start=1):
            params = stage_parameters(model, stage)
            taken.update(id(p) for p in params)
            groups.append({"name": stage.name, "params": wanted(params), "lr": backbone * hp.layer_decay ** depth})
    # The backbone as one group; with layer decay, whatever no stage holds (nothing, in torchvision's models).
    rest = [p for p in model.parameters() if id(p) not in taken]
    groups.append({"name": "backbone", "params": wanted(rest), "lr": backbone})
    return [g for g in groups if g["params"]]


def group_lrs(groups: list[dict[str, Any]]) -> dict[str, float]:
    """{"lr.<group>": its learning rate} for the run's record; empty for a single group (the lr metric says it)."""
    return {f"lr.{g['name']}": float(g["lr"]) for g in groups} if len(groups) > 1 else {}
