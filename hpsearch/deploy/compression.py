"""Compress a trained classifier: global magnitude pruning, and post-training int8 quantization for the CPU.

Pruning is torch's own (torch.nn.utils.prune): one L1 threshold over the weights of every Conv2d and Linear
layer together (`prune_global`), so that layers with many small weights lose more of them. The masks stay
on while the model fine-tunes (each forward multiplies `weight_orig` by `weight_mask`, so a pruned weight
stays exactly zero whatever the optimizer does to `weight_orig`); `make_permanent` then writes the zeros
into plain `weight` tensors, and the state_dict loads into an unpruned model of the same architecture.

Quantization follows the path torch maintains now: `torch.ao.quantization` is deprecated (its prepare,
convert and quantize functions warn that it will be removed) in favour of torchao's PT2E flow. The model
is captured with `torch.export` (strict, batch dimension dynamic), annotated by torchao's
X86InductorQuantizer (int8 weights, per output channel, symmetric; uint8 activations, per tensor, from
histograms of the calibration batches; BatchNorm folded into the convolutions), calibrated and converted.
On CPUs without VNNI the activations get 7 bits (`reduce_range`, as torch's x86 qconfig does there): their
int8 kernels otherwise saturate and lose accuracy. The range is decided where the model is quantized, so a
file made on a VNNI machine may lose accuracy when run on an older one.
The converted program holds the int8 weights and runs on any CPU, but slowly: each op dequantizes its
inputs and computes in float32. For speed it is also lowered as torchao's `lower_pt2e_quantized_to_x86`
does (inductor's freezing passes replace each quantize-conv-dequantize pattern by a oneDNN int8 kernel),
keeping the batch dimension dynamic; the result runs eagerly, without code generation, on x86 CPUs, and
computes what the converted program does (up to one rounding where a residual add is fused into the
convolution before it). The deployable file is the converted program
(`torch.export.save`, a .pt2 file: int8 weights, float biases and quantization scales) — the lowered one
holds oneDNN's packed weights, which cannot be saved — and `load_int8` lowers it again.

torchao is imported only by `quantize_int8` and `load_int8` (it takes seconds to import), and a log line
torch 2.14 prints while torchao 0.18 registers an enum (a deprecation of torch.compile's internals, nothing
this module calls) is filtered out at that import. Otherwise torch-only (runs on boxes that lack the rest
of hpsearch's dependencies).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

PRUNABLE = (nn.Conv2d, nn.Linear)

# --------------------------------------------------------------------------- pruning


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight") for every Conv2d and Linear layer: what prune_global ranks together."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def prune_global(model: nn.Module, amount: float) -> None:
    """Zero the `amount` (0..1) of the Conv2d and Linear weights smallest in magnitude, ranked over all the
    layers together, by masks that stay on (in place). Called again, it prunes `amount` of the weights the
    earlier masks left (torch's rule for repeated pruning). Biases and normalisation layers are kept."""
    if not 0 <= amount < 1:
        raise ValueError(f"amount must be in [0, 1), got {amount!r}")
    targets = prunable_weights(model)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)


def make_permanent(model: nn.Module) -> None:
    """Bake the masks into plain `weight` tensors and drop them (in place): the state_dict has the keys of an
    unpruned model again, and the pruned weights are zeros that training no longer keeps at zero."""
    for module, name in prunable_weights(model):
        if prune.is_pruned(module) and hasattr(module, name + "_orig"):
            prune.remove(module, name)


def sparsity(model: nn.Module) -> float:
    """The fraction of the Conv2d and Linear weights that are exactly zero (masks on or made permanent)."""
    weights = [getattr(m, name) for m, name in prunable_weights(model)]
    total = sum(w.numel() for w in weights)
    if total == 0:
        return 0.0
    return sum(int((w == 0).sum()) for w in weights) / total


# --------------------------------------------------------------------------- int8 quantization

# The batch dimension stays free: evaluation batches, a ragged last batch and batch-1 latency all run.
_BATCH = ({0: torch.export.Dim.DYNAMIC},)
_EXAMPLE_BATCH = 2  # export traces with 2 images: 0 and 1 are sizes torch.export would specialise on


class _DropEnumNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "is an Enum subclass" not in record.getMessage()


@contextlib.contextmanager
def _quiet_torchao_import() -> Iterator[None]:
    log = logging.getLogger("torch.utils._pytree")
    notice = _DropEnumNotice()
    log.addFilter(notice)
    try:
        yield
    finally:
        log.removeFilter(notice)


def _torchao() -> tuple[Any, Any, Any]:
    """torchao's PT2E entry points: (prepare_pt2e, convert_pt2e, the X86InductorQuantizer module)."""
    try:
        with _quiet_torchao_import():
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise ImportError(f"int8 quantization needs torchao (pip install torchao): {e}") from e
    return prepare_pt2e, convert_pt2e, x86


def _lower_x86(program: torch.export.ExportedProgram, example: torch.Tensor) -> torch.fx.GraphModule:
    """The converted program with oneDNN int8 kernels: torchao's lower_pt2e_quantized_to_x86, except that it
    starts from an export whose batch dimension is dynamic (torchao's re-exports with a fixed one)."""
    from torch._inductor.constant_folding import constant_fold
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes

    # Keep composite ops (as torchao does): decomposing them would hide the patterns the passes fuse.
    table = torch.export.default_decompositions()
    for op in list(table):
        if not torch._export.utils._is_cia_op(op):
            del table[op]
    lowered = program.run_decompositions(table).module()
    graph = lowered.graph
    for node in list(graph.nodes):  # the passes match linear as permute + addmm, not aten.t
        if node.target == torch.ops.aten.t.default:
            with graph.inserting_before(node):
                permuted = graph.call_function(torch.ops.aten.permute.default, args=(node.args[0], [1, 0]))
            node.replace_all_uses_with(permuted)
            graph.erase_node(node)
    graph.lint()
    lowered.recompile()
    with torch.no_grad():
        freezing_passes(lowered, (example,))
        constant_fold(lowered)
    # oneDNN's int8 kernels return channels-last tensors, which a view traced on a contiguous one (flatten
    # after a spatial map) cannot take: reshape copies where it must.
    for node in graph.nodes:
        if node.target == torch.ops.aten.view.default:
            node.target = torch.ops.aten.reshape.default
    lowered.recompile()
    return lowered


def _drop_unused_tensors(gm: torch.fx.GraphModule) -> None:
    """Delete the float weights that quantization replaced by int8 copies but left on the module."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [k for k, _ in gm.named_parameters()] + [k for k, _ in gm.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(gm.get_submodule(owner), attr)


class Int8Model(nn.Module):
    """An int8-quantized classifier for the CPU: takes float32 N×3×H×W batches normalised as the float model's
    were, returns float32 logits. `program` (an exported graph holding int8 weights) is what is saved and
    counted; forward runs its oneDNN-lowered copy. Eval-only: there is nothing to train."""

    _lowered: torch.fx.GraphModule

    def __init__(self, program: torch.export.ExportedProgram):
        super().__init__()
        self.exported = program  # what save() writes
        self.program = program.module()  # the same graph and tensors as a module (what params_m counts)
        self.input_shape = tuple(int(d) for d in _input_shape(program)[1:])  # (C, H, W)
        example = torch.zeros(_EXAMPLE_BATCH, *self.input_shape)
        # Not a registered submodule: its packed oneDNN weights are no state anyone saves or counts.
        object.__setattr__(self, "_lowered", _lower_x86(program, example))

    def train(self, mode: bool = True) -> Int8Model:
        """Always eval (and eval() works): exported graphs refuse train(), and this one has no train mode."""
        self.training = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._lowered(x)

    def save(self, path: str | os.PathLike) -> None:
        """The deployable file: the converted program, `torch.export.save`d (`load_int8` reads it)."""
        torch.export.save(self.exported, str(path))


def _input_shape(program: torch.export.ExportedProgram) -> tuple[Any, ...]:
    placeholder = next(n for n in program.graph.nodes
                       if n.op == "placeholder" and n.name in program.graph_signature.user_inputs)
    return tuple(placeholder.meta["val"].shape)


def int8_reduce_range() -> bool:
    """Whether activations get 7 bits instead of 8: on x86 CPUs without VNNI, oneDNN multiplies uint8 by int8
    pairwise into int16 (vpmaddubsw), which saturates with full-range activations (measured on an AVX2-only
    EPYC: 0.976 instead of 0.993 accuracy on digits). torch's own x86 qconfig decides it the same way."""
    is_vnni = getattr(torch.cpu, "_is_vnni_supported", None)
    return not (is_vnni is not None and is_vnni())


def _copy(model: nn.Module) -> nn.Module:
    """copy.deepcopy, which refuses a model whose pruning masks are on: each masked weight is a computed tensor
    (weight_orig × weight_mask), so it is detached for the copy (the next forward computes it again)."""
    masked = [(m, name) for m, name in prunable_weights(model) if hasattr(m, name + "_mask")]
    computed = [getattr(m, name) for m, name in masked]
    try:
        for (m, name), weight in zip(masked, computed, strict=True):
            setattr(m, name, weight.detach())
        return copy.deepcopy(model)
    finally:
        for (m, name), weight in zip(masked, computed, strict=True):
            setattr(m, name, weight)


def calibration_batches(split: Any, batches: int = 4, batch_size: int = 64) -> list[torch.Tensor]:
    """The first `batches` batches of a data split (unshuffled, unaugmented): what quantize_int8 calibrates on."""
    return [x for x, _ in islice(split.batches(batch_size, shuffle=False, augment=False), batches)]


def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor], image_size: int) -> Int8Model:
    """The model quantized to int8 for the CPU (a copy; the model is left as it is), for 3×image_size×image_size
    images, its activation ranges calibrated on `calibration` (batches of images normalised as training feeds
    them, e.g. calibration_batches(data.train); a few hundred images are enough).

    A model still carrying pruning masks is quantized with them baked in. ValueError, naming the step and
    the error, when torch.export or torchao cannot take the architecture. Takes ~10 s for ResNet-18 and ~30 s
    for MobileNetV2 on one core (most of it the lowering's pattern matching).
    """
    prepare_pt2e, convert_pt2e, x86 = _torchao()
    name = type(model).__name__
    model = _copy(model).cpu().eval()
    make_permanent(model)
    example = torch.zeros(_EXAMPLE_BATCH, 3, image_size, image_size)
    step = "torch.export"
    try:
        # strict: the non-strict tracer gives each call of a module reused in forward (ResNet's self.relu)
        # one shared source, and the quantizer then fails to tell the calls apart.
        captured = torch.export.export(model, (example,), dynamic_shapes=_BATCH, strict=True)
        step = "prepare_pt2e"
        config = x86.get_default_x86_inductor_quantization_config(reduce_range=int8_reduce_range())
        quantizer = x86.X86InductorQuantizer().set_global(config)
        prepared = prepare_pt2e(captured.module(), quantizer)
        step = "calibration"
        seen = 0
        with torch.no_grad():
            for x in calibration:
                prepared(x.cpu().float())
                seen += 1
        if seen == 0:
            raise ValueError("no calibration batch")
        step = "convert_pt2e"
        converted = convert_pt2e(prepared)
        _drop_unused_tensors(converted)
        step = "torch.export of the converted model"
        program = torch.export.export(converted, (example,), dynamic_shapes=_BATCH)
        for node in program.graph.nodes:
            # Where each op came from: the source lines of this machine and the passes that made it, ~40% of
            # the serialized graph (~0.3 MB for MobileNetV2) and of no use to whoever runs the file.
            node.meta.pop("stack_trace", None)
            node.meta.pop("from_node", None)
        step = "lowering to oneDNN"
        return Int8Model(program)
    except Exception as e:
        raise ValueError(f"int8 quantization of {name} failed at {step}: {type(e).__name__}: {e}") from e


def load_int8(path: str | os.PathLike) -> Int8Model:
    """An Int8Model read back from the file Int8Model.save wrote."""
    _torchao()  # registers the quantized ops the program calls
    return Int8Model(torch.export.load(str(Path(path))))
