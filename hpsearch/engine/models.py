"""torchvision classifiers by name, with a new head for the task, optional dropout, weights, and freezing by stages.

Torch-only on purpose (runs on GPU boxes that lack the rest of hpsearch's dependencies).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import os
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torchvision
from torch import nn

from hpsearch.core.data_config import is_weights_path
from hpsearch.core.hparams import FREEZE_MODES

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


def resolve_weights(name: str, weights: str | None) -> Any:
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


def weights_identity(name: str, weights: str | None) -> str:
    """What a network starts from, as a record that tells whether two trials started from the same weights (a
    model soup needs that): "none" (random init), the torchvision weights' full name (DEFAULT resolved), or a
    file's "sha256:<first 16 hex digits>" (of its bytes: a copy under another name is the same start)."""
    resolved = resolve_weights(name, weights)
    if resolved is None:
        return "none"
    if isinstance(resolved, str):
        path = Path(resolved).resolve()
        stat = path.stat()
        return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)
    return f"{type(resolved).__name__}.{resolved.name}"


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per process per (path, size, mtime): a worker's trials hash it once."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()[:16]}"


def normalization(name: str, weights: str | None) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) the weights were trained with; ImageNet's for no weights or a state_dict file."""
    resolved = resolve_weights(name, weights)
    if resolved is None or isinstance(resolved, str):
        return IMAGENET_MEAN, IMAGENET_STD
    transforms = resolved.transforms()
    return tuple(transforms.mean), tuple(transforms.std)


def _ensure_cached(weights: Any) -> None:
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


def _torchvision_model(name: str, weights: Any, num_classes: int | None = None) -> nn.Module:
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
                freeze: str = "none", unfrozen_blocks: int | None = None,
                bn_momentum: float | None = None) -> nn.Module:
    """A torchvision classifier with a new num_classes head, on the CPU.

    weights: "none", "DEFAULT", a weights name of this model, or a state_dict file path.
    dropout: None keeps the model's own; else the p of the dropout before the head (inserted if absent).
    bn_momentum: None keeps the model's own; else every BatchNorm's running-statistics momentum.
    freeze="backbone": only the head trains; freeze="partial": the head and the last `unfrozen_blocks`
    stages (see backbone_stages) train. Put the model in train mode with `set_train_mode`.
    """
    _check_name(name)
    if freeze not in FREEZE_MODES:
        raise ValueError(f"freeze must be one of {', '.join(FREEZE_MODES)}, got {freeze!r}")
    if freeze == "partial" and unfrozen_blocks is None:
        raise ValueError("freeze=partial needs unfrozen_blocks: how many of the last stages train")
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
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum
    if freeze != "none":
        stages = len(backbone_stages(model))
        unfrozen = 0 if freeze == "backbone" else unfrozen_blocks
        assert unfrozen is not None  # partial without unfrozen_blocks is refused above
        if not 0 <= unfrozen <= stages:
            raise ValueError(f"unfrozen_blocks must be in [0, {stages}] ({name} has {stages} stages), got {unfrozen}")
        freeze_stages(model, stages - unfrozen)
    return model


def head_name(model: nn.Module) -> str:
    """Dotted name of the classifier head that build_model put in (or of the last Linear of any model)."""
    return getattr(model, "hpsearch_head", None) or _find_head(model)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the classifier head that build_model put in (or of the last Linear of any model)."""
    return list(model.get_submodule(head_name(model)).parameters())


# --------------------------------------------------------------------------- stages: how deep to fine-tune

# What is frozen or decayed together. The generic rule: the model's top-level children in order, a child that
# is a plain nn.Sequential or nn.ModuleList (MobileNet's, EfficientNet's, AlexNet's, VGG's, DenseNet's
# `features`, RegNet's `trunk_output`, a `classifier`) split into its children; a unit with parameters starts
# a stage, except a norm layer, which ends the stage before it (ResNet's bn1 after conv1, DenseNet's norm5).
# Units without parameters join the stage before them (ReLU, pooling), a Dropout the one after it (it
# regularises that stage's input). The head and the dropout feeding it are no stage. Exceptions below.
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
# Models whose top-level Sequentials are the stages themselves: ResNet's layer1..4, ShuffleNetV2's stage2..4.
_WHOLE_CHILDREN = (torchvision.models.ResNet, torchvision.models.ShuffleNetV2)


@dataclass(frozen=True)
class Stage:
    """One step of the backbone's depth: the submodules (and loose parameters) that freeze and decay together."""

    name: str  # stage_0 nearest the input (the stem) … stage_{n-1} just below the head
    members: tuple[str, ...]  # dotted names of submodules or parameters of the model


def _units(model: nn.Module) -> list[tuple[str, ...]]:
    """The model's pieces in forward order, before they are grouped into stages."""
    if isinstance(model, torchvision.models.VisionTransformer):
        # The patch embedding, class token and position embedding are the stem; each encoder layer a stage.
        stem = ("conv_proj", "class_token", "encoder.pos_embedding", "encoder.dropout")
        layers = [(f"encoder.layers.{k}",) for k in model.encoder.layers._modules]
        heads = [(f"heads.{k}",) for k in model.heads._modules]
        return [stem, *layers, ("encoder.ln",), *heads]
    units: list[tuple[str, ...]] = [(name,) for name, _ in model.named_parameters(recurse=False)]
    for name, child in model.named_children():
        if type(child) in (nn.Sequential, nn.ModuleList) and not isinstance(model, _WHOLE_CHILDREN):
            units += [(f"{name}.{k}",) for k, _ in child.named_children()]
        else:
            units.append((name,))
    return units


def _member(model: nn.Module, name: str) -> nn.Module | nn.Parameter:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return model.get_parameter(name)


def _head_modules(model: nn.Module) -> list[str]:
    noted = getattr(model, "hpsearch_head_modules", None)
    if noted is not None:
        return noted
    head = _find_head(model)
    drop = _preceding_dropout(model, head)
    return [head] + ([drop] if drop else [])


def backbone_stages(model: nn.Module) -> list[Stage]:
    """The backbone's stages from the input up (the head excluded): what `freeze: partial` and
    `layer_decay` count. MobileNetV2 has 19 (features[0..18]), ResNet 5 (conv1+bn1, layer1..4), AlexNet 7
    (five conv blocks, fc6, fc7), EfficientNet-B0 9 (features[0..8]), ViT-B/16 13 (the embeddings, 12 layers)."""
    head = _head_modules(model)
    stages: list[list[str]] = []
    waiting: list[str] = []  # parameter-free units that join the next stage
    for unit in _units(model):
        if any(name == h or name.startswith(h + ".") for name in unit for h in head):
            continue
        parts = [_member(model, name) for name in unit]
        if not any(isinstance(p, nn.Parameter) or any(True for _ in p.parameters()) for p in parts):
            if stages and not all(isinstance(p, nn.Dropout) for p in parts):
                stages[-1] += unit
            else:
                waiting += unit
        elif stages and all(isinstance(p, _NORMS) for p in parts):
            stages[-1] += [*waiting, *unit]
            waiting = []
        else:
            stages.append([*waiting, *unit])
            waiting = []
    if stages and waiting:
        stages[-1] += waiting
    return [Stage(f"stage_{i}", tuple(members)) for i, members in enumerate(stages)]


def stage_parameters(model: nn.Module, stage: Stage) -> list[nn.Parameter]:
    """The stage's parameters (never the head's, should a member hold it)."""
    head = {id(p) for p in head_parameters(model)}
    found: list[nn.Parameter] = []
    for name in stage.members:
        part = _member(model, name)
        params = [part] if isinstance(part, nn.Parameter) else list(part.parameters())
        found += [p for p in params if id(p) not in head]
    return found


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Parameters go to the meta device as modules register them: a model's structure without its memory or
    initialisation (torch.device("meta") alone breaks RegNet, which computes its widths with tensors)."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, None if param is None else nn.Parameter(param.to("meta"), param.requires_grad))

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def skeleton(name: str) -> nn.Module:
    """The named architecture with its parameters on the meta device (aux heads off): for its structure only."""
    _check_name(name)
    with _parameters_on_meta(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GoogLeNet's and Inception's notes on initialisation
        model = _torchvision_model(name, None)
    _disable_aux_heads(model)
    return model


@functools.cache
def count_stages(name: str) -> int:
    """How many backbone stages the named model has (what `unfrozen_blocks` may be at most); no weights built."""
    return len(backbone_stages(skeleton(name)))


def freeze_stages(model: nn.Module, frozen: int) -> None:
    """The first `frozen` stages stop training (requires_grad False, kept in eval mode by set_train_mode);
    the rest and the head train. freeze_stages(model, 0) unfreezes everything."""
    stages = backbone_stages(model)
    if not 0 <= frozen <= len(stages):
        raise ValueError(f"cannot freeze {frozen} stages of a model with {len(stages)}")
    if frozen and frozen == len(stages):
        # Nothing before the head requires grad, so autograd records no graph for the backbone:
        # backward stops at the head and no backbone activations are kept.
        trainable = {id(p) for p in head_parameters(model)}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
    else:
        still = {id(p) for stage in stages[:frozen] for p in stage_parameters(model, stage)}
        for p in model.parameters():
            p.requires_grad_(id(p) not in still)
    _note(model, "hpsearch_frozen", bool(frozen) and frozen == len(stages))
    _note(model, "hpsearch_frozen_modules", [name for stage in stages[:frozen] for name in stage.members
                                             if isinstance(_member(model, name), nn.Module)])


def set_train_mode(model: nn.Module) -> None:
    """model.train(), except that what is frozen stays in eval mode: its BatchNorm statistics and dropout
    stay fixed, so it is exactly the feature extractor the rest is trained on."""
    if getattr(model, "hpsearch_frozen", False):
        model.eval()
        for name in getattr(model, "hpsearch_head_modules", []):
            model.get_submodule(name).train()
        return
    model.train()
    frozen = getattr(model, "hpsearch_frozen_modules", [])
    for name in frozen:
        model.get_submodule(name).eval()
    if frozen:  # a frozen member holding the head (a model whose head is nested) must not take it along
        for name in _head_modules(model):
            model.get_submodule(name).train()


def input_problem(name: str, image_size: int) -> str | None:
    """Why `name` cannot take image_size × image_size images (too small for its pooling, or not the one size a
    vision transformer takes), or None; found by a forward pass on the meta device: no memory, no compute."""
    model = skeleton(name).to("meta").eval()
    try:
        with torch.no_grad():
            model(torch.empty(2, 3, image_size, image_size, device="meta"))
    except Exception as e:  # whatever the architecture refuses the shape with
        text = str(e).strip()
        return text.splitlines()[0] if text else type(e).__name__
    return None
