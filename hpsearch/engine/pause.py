"""Pausing a trial between epochs and resuming it later, in another Trainer, process or machine.

A paused trial is a plain dict of tensors and numbers (`pause(trainer)`): the model's weights, the
optimizer's state, where the learning-rate schedule stands, the random generators' states (the data
order's and the global ones that dropout draws from), the epochs it has trained with their metrics, its
best epoch so far, and the mutable hyperparameters it trained with last. `resume(trainer, state)` puts it
into a freshly built Trainer for the same model and hyperparameters; its next `fit` trains the epoch after
the last one paused, so no epoch is trained twice, and on one device the resumed epochs are bit-identical
to an uninterrupted run's. `adopt(trainer, state)` is
population-based training's exploit: another member's weights, optimizer, schedule and hyperparameters, with the
member's own record kept.

The dict saves with `torch.save` and loads back with `torch.load(..., weights_only=True)` (`save` /
`load`): no pickled code, so a checkpoint file is safe to read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from hpsearch.core.hparams import MUTABLE_HPARAMS
from hpsearch.engine.mutate import forget_graph, set_head_dropout
from hpsearch.engine.torch_files import save_atomically
from hpsearch.engine.train import EpochStats, Trainer

FORMAT = 1  # bumped when the dict's layout changes: a checkpoint of another layout is refused, not misread


class PausedStateError(ValueError):
    """A paused state that does not fit the trainer it is resumed in."""


def _cpu(tree: Any) -> Any:
    """`tree` with every tensor copied to host memory (a paused trial gives its device memory back)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cpu(v) for v in tree)
    return tree


def pause(trainer: Trainer) -> dict[str, Any]:
    """Everything needed to go on training `trainer` from the end of its last epoch, in host memory."""
    cuda = trainer.device.type == "cuda"
    return {
        "format": FORMAT,
        "epoch": len(trainer.history),
        "history": [dataclasses.asdict(stats) for stats in trainer.history],
        "best_epoch": trainer.best_epoch,
        "best_value": trainer.best_value,
        "best_state_dict": trainer.best_state_dict_cpu(),
        "stopped_early": trainer.stopped_early,
        "unfreeze_epoch": trainer.unfreeze_epoch,
        "hparams": trainer.hp.as_dict(),  # its mutable ones may have changed since it was built (engine/mutate.py)
        "model": _cpu(trainer.model.state_dict()),
        "optimizer": _cpu(trainer.optimizer.state_dict()),
        "schedule": _cpu(trainer.schedule.state_dict()),
        "rng": {
            "data_order": trainer.generator.get_state().cpu(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(trainer.device) if cuda else None,
        },
    }


def resume(trainer: Trainer, state: dict[str, Any]) -> None:
    """Put a paused trial into `trainer`, built as the paused one was (model, data, hyperparameters)."""
    _check_format(state)
    if state["epoch"] > trainer.hp.epochs:
        raise PausedStateError(f"the paused trial trained {state['epoch']} epochs; this one has {trainer.hp.epochs}")
    _load_training(trainer, state)
    trainer.history = [EpochStats(**stats) for stats in state["history"]]
    trainer.best_epoch, trainer.best_value = state["best_epoch"], state["best_value"]
    best = state["best_state_dict"]
    trainer.best_state_dict = None if best is None else {k: v.to(trainer.device) for k, v in best.items()}
    trainer._best_cpu = best
    trainer.stopped_early = state["stopped_early"]
    rng = state["rng"]
    trainer.generator.set_state(rng["data_order"])  # a generator's state is a host tensor, whatever its device
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], trainer.device)


def adopt(trainer: Trainer, donor: dict[str, Any]) -> None:
    """Population-based training's exploit: `trainer` goes on from another member's weights, optimizer state and
    schedule position (`donor`, that member paused at the same epoch), keeping its own history, best epoch and
    random generators, so its record stays its own."""
    _check_format(donor)
    if donor["epoch"] != len(trainer.history):
        raise PausedStateError(f"the donor paused after epoch {donor['epoch']}; this member after "
                               f"{len(trainer.history)}: a copy is made at the boundary both reached")
    _load_training(trainer, donor)


def _check_format(state: dict[str, Any]) -> None:
    if state.get("format") != FORMAT:
        raise PausedStateError(f"a paused trial of format {state.get('format')!r}; this hpsearch reads {FORMAT}")


def _load_training(trainer: Trainer, state: dict[str, Any]) -> None:
    """The weights, optimizer state and schedule position of `state`, into `trainer`."""
    if trainer.unfreeze_epoch is not None and state["unfreeze_epoch"] is None:
        trainer._unfreeze()  # it had unfrozen its backbone before it paused
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise PausedStateError(f"the paused weights do not fit this model: {str(exc).splitlines()[0]}") from exc
    _load_optimizer(trainer.optimizer, state["optimizer"])  # its groups carry lr, weight_decay, momentum
    trainer.schedule.load_state_dict(state["schedule"])
    # The mutable hyperparameters it trained with last, and what reads them outside the optimizer.
    mutable = {name: state["hparams"][name] for name in MUTABLE_HPARAMS}
    if mutable["dropout"] != trainer.hp.dropout:
        set_head_dropout(trainer.model, mutable["dropout"] or 0.0)
    trainer.criterion.label_smoothing = mutable["label_smoothing"]
    trainer.hp = dataclasses.replace(trainer.hp, **mutable)
    forget_graph(trainer)  # a captured step read the optimizer state tensors that were just replaced


def _load_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """optimizer.load_state_dict, keeping each group's learning rate in the tensor it already had (a captured
    CUDA graph's step reads that tensor, on the device: the saved one is a host copy)."""
    tensors = [g["lr"] if isinstance(g["lr"], torch.Tensor) else None for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, tensor in zip(optimizer.param_groups, tensors, strict=True):
        if tensor is not None:
            tensor.fill_(float(group["lr"]))
            group["lr"] = tensor


def save(state: dict[str, Any], path: Path) -> Path:
    """Write a paused trial to `path` through a temporary name: a reader never sees half of one."""
    return save_atomically(state, path)


def load(path: Path) -> dict[str, Any]:
    """A paused trial saved by `save`, on the host; tensors and numbers only (weights_only)."""
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state
