"""Model soups (Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time", ICML 2022): the weights of models fine-tuned from the same starting weights,
averaged into one network.

- `average`: the element-wise mean of state dicts of one architecture (floating tensors; integer buffers such as
  BatchNorm's `num_batches_tracked` are taken from the first, they are recomputed anyway).
- `recompute_batchnorm`: averaged running statistics do not describe the averaged network, so they are measured
  again: every BatchNorm's statistics reset and accumulated (a cumulative mean, momentum None) over training
  batches in train mode without gradients, the rest of the network in eval mode (dropout off).
- `greedy`: the paper's greedy soup. Ingredients in decreasing order of their own validation score; each is kept
  only if the soup with it scores no lower on validation than the soup without it.

Torch alone: the trainer's side (GPU boxes carry nothing else).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

State = dict[str, torch.Tensor]


def average(states: Sequence[State]) -> State:
    """The mean of `states` (same keys and shapes), in float32 and back to each tensor's own dtype."""
    if not states:
        raise ValueError("a soup needs at least one ingredient")
    keys = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        if list(state) != keys:
            raise ValueError(f"ingredient {i} has other weights than ingredient 0 (another architecture or head)")
    out: State = {}
    for key in keys:
        first = states[0][key]
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        total = torch.zeros_like(first, dtype=torch.float32)
        for state in states:
            if state[key].shape != first.shape:
                raise ValueError(f"{key}: shapes differ between ingredients ({tuple(state[key].shape)} vs "
                                 f"{tuple(first.shape)})")
            total += state[key].to(torch.float32)
        out[key] = (total / len(states)).to(first.dtype)
    return out


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Measure every BatchNorm's running statistics afresh on `batches` (inputs only); returns the images seen.
    The model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    saved = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative mean over every batch, not an exponential one
        m.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += int(x.shape[0])
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.eval()
    return seen


@dataclass
class Ingredient:
    name: str  # what the user knows it by ("trial 7", "trial 7 seed 2")
    state: State
    score: float  # its own validation score


@dataclass
class Soup:
    state: State
    score: float
    kept: list[str]
    tried: list[tuple[str, float]] = field(default_factory=list)  # (ingredient, the soup's score with it)


def greedy(ingredients: Sequence[Ingredient], score_of: Callable[[State], float], maximize: bool = True) -> Soup:
    """The greedy soup of `ingredients`, scored by `score_of` (the validation metric of a network holding an
    averaged state, BatchNorm recomputed inside it): each ingredient, best first, is kept only if the score does
    not drop below the soup's so far (at first, the best ingredient's own score)."""
    if not ingredients:
        raise ValueError("a soup needs at least one ingredient")
    order = sorted(ingredients, key=lambda i: -i.score if maximize else i.score)
    kept = [order[0]]
    # A soup of one is that model as it is, its own statistics and score included.
    best_state, best = order[0].state, order[0].score
    tried = [(order[0].name, best)]
    for candidate in order[1:]:
        state = average([i.state for i in [*kept, candidate]])
        score = score_of(state)
        tried.append((candidate.name, score))
        if (score >= best) if maximize else (score <= best):
            kept.append(candidate)
            best_state, best = state, score
    return Soup(best_state, best, [i.name for i in kept], tried)


def uniform(ingredients: Sequence[Ingredient], score_of: Callable[[State], float]) -> Soup:
    """Every ingredient averaged."""
    state = average([i.state for i in ingredients])
    names = [i.name for i in ingredients]
    score = score_of(state)
    return Soup(state, score, names, [(", ".join(names), score)])
