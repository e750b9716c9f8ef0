"""torchvision classifiers by name, with a new head for the task, optional dropout, weights and freezing.

Torch-only on purpose (runs on GPU boxes that lack the rest of hpsearch's dependencies).
"""

from __future__ import annotations

import difflib
import os
import urllib.parse
from typing import cast

import torch
import torchvision
from torch import nn

from hpsearch.config import is_weights_path
from hpsearch.params import FREEZE_MODES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotAvailable(Exception):
    """torchvision weights are neither in the torch hub cache nor downloadable; the message says where to put them."""


class DropoutLinear(nn.Linear):
    """nn.Linear with dropout on its input.

    Used instead of wrapping the head in nn.Sequential(Dropout, Linear) so that the state_dict keys
    stay those of the plain Linear: a checkpoint loads into the model whatever its dropout.
    """

    def __init__(self, in_features: int, out_features: int, p: float):
        super().__init__(in_features, out_features)
        self.dropout = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.dropout(x))


def list_classification_models() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def _check_name(name: str) -> None:
    known = list_classification_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise ValueError(f"unknown model {name!r}{hint}")


def resolve_weights(name: str, weights: str | None):
    """None for "none"; a torchvision weights enum for DEFAULT / a member name / "Enum.MEMBER"; else a file path."""
    if weights is None or weights.lower() == "none":
        return None
    if is_weights_path(weights):
        return weights
    _check_name(name)
    enum = torchvision.models.get_model_weights(name)
    if weights == "DEFAULT":
        return enum.DEFAULT
    member = weights.removeprefix(enum.__name__ + ".")
    try:
        return enum[member]
    except KeyError:
        choices = ", ".join(m.name for m in enum)
        raise ValueError(f"unknown weights {weights!r} for {name}; use DEFAULT, none, a state_dict file path "
                         f"or one of {choices}") from None


def normalization(name: str, weights: str | None) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) the weights were trained with; ImageNet's for no weights or a state_dict file."""
    resolved = resolve_weights(name, weights)
    if resolved is None or isinstance(resolved, str):
        return IMAGENET_MEAN, IMAGENET_STD
    transforms = resolved.transforms()
    return tuple(transforms.mean), tuple(transforms.std)


def _ensure_cached(weights) -> None:
    """Put the weights file in torch hub's cache (where torchvision looks), or say where to put it by hand."""
    filename = os.path.basename(urllib.parse.urlparse(weights.url).path)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    match = torch.hub.HASH_REGEX.search(filename)
    try:
        torch.hub.download_url_to_file(weights.url, path, match.group(1) if match else None, progress=False)
    except Exception as e:  # offline, proxy, HTTP or hash failure: all mean "place the file yourself"
        raise WeightsNotAvailable(
            f"{weights} is not in the torch hub cache and could not be downloaded ({e}); "
            f"download {weights.url} and place it at {path}") from e


# --------------------------------------------------------------------------- head surgery


def _find_head(model: nn.Module) -> str:
    """Dotted name of the final classifier layer: the last nn.Linear in module order (SqueezeNet: its conv)."""
    if isinstance(model, torchvision.models.SqueezeNet):
        return "classifier.1"
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"cannot find the classifier head of {type(model).__name__}: it has no nn.Linear")
    return linears[-1]


def _parent(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent, _, attr = dotted.rpartition(".")
    return model.get_submodule(parent), attr


def _preceding_dropout(model: nn.Module, head: str) -> str | None:
    """Name of the nn.Dropout applied right before the head, if the architecture has one."""
    parent, attr = _parent(model, head)
    prefix = head[: -len(attr)]
    if isinstance(parent, nn.Sequential):
        keys = list(parent._modules)
        pos = keys.index(attr)
        if pos > 0 and isinstance(parent._modules[keys[pos - 1]], nn.Dropout):
            return prefix + keys[pos - 1]
    # GoogLeNet and Inception apply self.dropout just before self.fc.
    elif isinstance(getattr(parent, "dropout", None), nn.Dropout):
        return prefix + "dropout"
    return None


def _disable_aux_heads(model: nn.Module) -> None:
    """GoogLeNet / Inception: drop the auxiliary classifiers (their forward then returns plain logits)."""
    if getattr(model, "aux_logits", False):
        _note(model, "aux_logits", False)
        for attr in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, attr):
                setattr(model, attr, None)


def _adapt(model: nn.Module, num_classes: int, dropout: float | None) -> None:
    """New head with num_classes outputs, dropout set or inserted, aux heads off; records the head's name."""
    _disable_aux_heads(model)
    head = _find_head(model)
    parent, attr = _parent(model, head)
    old = parent.get_submodule(attr)
    drop = _preceding_dropout(model, head)
    new: nn.Module
    if isinstance(old, nn.Conv2d):
        kernel_size, stride = cast(tuple[int, int], old.kernel_size), cast(tuple[int, int], old.stride)
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=kernel_size, stride=stride)
    else:
        assert isinstance(old, nn.Linear)  # _find_head: the last nn.Linear
        if dropout is not None and drop is None:
            new = DropoutLinear(old.in_features, num_classes, dropout)
        else:
            new = nn.Linear(old.in_features, num_classes)
    if getattr(old, "out_features", getattr(old, "out_channels", None)) == num_classes:
        new.load_state_dict(old.state_dict())  # a head torchvision already made for num_classes: its init
    setattr(parent, attr, new)
    if dropout is not None and drop is not None:
        dropout_layer = model.get_submodule(drop)
        assert isinstance(dropout_layer, nn.Dropout)  # _preceding_dropout finds nn.Dropout only
        dropout_layer.p = dropout
    _note(model, "hpsearch_head", head)
    # What stays in train mode when the backbone is frozen: the head and the dropout feeding it.
    _note(model, "hpsearch_head_modules", [head] + ([drop] if drop else []))


def _note(model: nn.Module, name: str, value: object) -> None:
    """A plain attribute on the model (hpsearch's notes on it; never part of its state_dict)."""
    object.__setattr__(model, name, value)


def _torchvision_model(name: str, weights, num_classes: int | None = None) -> nn.Module:
    # GoogLeNet and Inception warn unless told how to initialise: keep their present default.
    extra: dict = {"init_weights": True} if weights is None and name in ("googlenet", "inception_v3") else {}
    if num_classes is not None:
        extra["num_classes"] = num_classes
    return torchvision.models.get_model(name, weights=weights, **extra)


def _load_file(model: nn.Module, path: str, state: dict, what: str) -> None:
    """Strict load; on a mismatch, a short message (torch's lists every key, often hundreds)."""
    own = model.state_dict()
    problems = {
        "missing": [k for k in own if k not in state],
        "unexpected": [k for k in state if k not in own],
        "of another shape": [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                             for k in own if k in state and state[k].shape != own[k].shape],
    }
    found = [f"{len(keys)} keys {problem} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
             for problem, keys in problems.items() if keys]
    if found:
        raise ValueError(f"state_dict file {path} does not fit {what}: {'; '.join(found)}")
    model.load_state_dict(state, strict=True)


def _from_file(name: str, num_classes: int, path: str, dropout: float | None) -> nn.Module:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    model = _torchvision_model(name, None)
    head_weight = state.get(_find_head(model) + ".weight")
    if head_weight is not None and head_weight.shape[0] == num_classes:
        # Already num_classes outputs (e.g. an hpsearch checkpoint): it fits the adapted model.
        _adapt(model, num_classes, dropout)
        _load_file(model, path, state, f"{name} with a {num_classes}-class head")
    else:
        # A file for the architecture as torchvision builds it (ImageNet's 1000 classes): load, then new head.
        _load_file(model, path, state, f"{name} as torchvision builds it")
        _adapt(model, num_classes, dropout)
    return model


def build_model(name: str, num_classes: int, weights: str = "none", dropout: float | None = None,
                freeze: str = "none") -> nn.Module:
    """A torchvision classifier with a new num_classes head, on the CPU.

    weights: "none", "DEFAULT", a weights name of this model, or a state_dict file path.
    dropout: None keeps the model's own; else the p of the dropout before the head (inserted if absent).
    freeze="backbone": only the head trains; put the model in train mode with `set_train_mode`.
    """
    _check_name(name)
    if freeze not in FREEZE_MODES:
        raise ValueError(f"freeze must be one of {', '.join(FREEZE_MODES)}, got {freeze!r}")
    if dropout is not None and not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    resolved = resolve_weights(name, weights)
    if isinstance(resolved, str):
        model = _from_file(name, num_classes, resolved, dropout)
    else:
        if resolved is not None:
            _ensure_cached(resolved)
        # From scratch, torchvision builds the head itself, initialised its way (MobileNetV2's is
        # N(0, 0.01) with zero bias, not nn.Linear's default); _adapt keeps those values.
        model = _torchvision_model(name, resolved, num_classes if resolved is None else None)
        _adapt(model, num_classes, dropout)
    if freeze == "backbone":
        trainable = {id(p) for p in head_parameters(model)}
        for p in model.parameters():
            # Nothing before the head requires grad, so autograd records no graph for the backbone:
            # backward stops at the head and no backbone activations are kept.
            p.requires_grad_(id(p) in trainable)
    _note(model, "hpsearch_frozen", freeze == "backbone")
    return model


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the classifier head that build_model put in (or of the last Linear of any model)."""
    head = getattr(model, "hpsearch_head", None) or _find_head(model)
    return list(model.get_submodule(head).parameters())


def set_train_mode(model: nn.Module) -> None:
    """model.train(), except that a frozen backbone stays in eval mode: its BatchNorm statistics and
    dropout stay fixed, so it is exactly the feature extractor the head is trained on."""
    if getattr(model, "hpsearch_frozen", False):
        model.eval()
        for name in getattr(model, "hpsearch_head_modules", []):
            model.get_submodule(name).train()
    else:
        model.train()
