"""Layers of any classifier, seen from the outside: one probe forward records what every submodule outputs, which
is how a target layer is checked (does it exist, does it run once, does it output a spatial map) and how the
candidate layers are listed (``enhancer inspect --layers``).

Usage::

    from enhancer.models.layers import probe, check_target_layer
    layers = probe(model, torch.zeros(1, 3, 224, 224))     # [LayerOutput(name, type, shape, calls), ...]
    shape = check_target_layer(model, "features.norm5", layers, model_name="tv:densenet121")  # (1, 1024, 7, 7)
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from enhancer.models.zoo import ModelError


@dataclass(frozen=True)
class LayerOutput:
    """A submodule and its output in one forward: ``shape`` is None when the output is not a tensor (a tuple,
    a dict); ``calls`` counts how often it ran (0: never, e.g. an unused module; > 1: a shared module)."""

    name: str
    type: str
    shape: tuple[int, ...] | None
    calls: int
    depth: int  # number of dotted parts: layer4 is 1, layer4.2 is 2

    @property
    def spatial(self) -> bool:
        """Outputs a map (N, C, h, w) with more than one position, exactly once per forward."""
        return self.calls == 1 and self.shape is not None and len(self.shape) == 4 and self.shape[2] * self.shape[3] > 1


class _Recorder:
    """Forward-hook state of one probe: calls and last output shape per module, and the modules that returned the
    latest spatial map (kept as one tensor reference, not every activation)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        self.last_map: torch.Tensor | None = None
        self.trunk: list[str] = []

    def hook(self, name: str) -> Callable[[nn.Module, object, object], None]:
        def record(_m: nn.Module, _inputs: object, output: object) -> None:
            self.calls[name] = self.calls.get(name, 0) + 1
            self.shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            if output is self.last_map:
                self.trunk.append(name)
            elif isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[2] * output.shape[3] > 1:
                self.last_map, self.trunk = output, [name]

        return record


def probe(
    model: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], object] | None = None
) -> tuple[list[LayerOutput], list[str]]:
    """Run ``forward`` (default ``model``) once on ``x`` without autograd, the model in eval mode, and record every
    named submodule's output. Returns the layers in registration order, and the names of the submodules whose
    output is the last spatial map produced (the trunk's output), in the order their hooks fired.

    Where torch._dynamo is loaded already, the model's own forward runs on the meta device first (shapes only, no
    arithmetic; a model whose forward needs real values is then run for real). Elsewhere it runs for real: the meta
    device's shape functions of BatchNorm, pooling and others import torch._dynamo, 1.5 s on a 2-core CPU, where a
    real ResNet-101 forward of one image takes 0.2 s."""
    named = [(name, module) for name, module in model.named_modules() if name]
    was_training = model.training
    model.eval()
    try:
        meta = forward is None and "torch._dynamo" in sys.modules
        recorder = _record_on_meta(model, named, x) if meta else None
        if recorder is None:
            recorder = _record(named, lambda: (forward or model)(x))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ModelError(f"the model does not run on an input of shape {tuple(x.shape)}: {_first_line(exc)}") from None
    finally:
        model.train(was_training)
    layers = [
        LayerOutput(
            name, type(module).__name__, recorder.shapes.get(name), recorder.calls.get(name, 0), name.count(".") + 1
        )
        for name, module in named
    ]
    return layers, list(dict.fromkeys(recorder.trunk))


def _record(named: list[tuple[str, nn.Module]], run: Callable[[], object]) -> _Recorder:
    """Every named module's calls and output shapes while ``run()`` runs without autograd."""
    recorder = _Recorder()
    handles = [module.register_forward_hook(recorder.hook(name)) for name, module in named]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return recorder


def _record_on_meta(model: nn.Module, named: list[tuple[str, nn.Module]], x: torch.Tensor) -> _Recorder | None:
    """``_record`` of ``model(x)`` with the parameters, buffers and input on the meta device, or None when the forward
    does not run there."""
    state = {
        k: v.to("meta")
        for k, v in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False))
    }
    try:
        return _record(named, lambda: torch.func.functional_call(model, state, (x.to("meta"),)))
    except Exception:  # any failure on meta (NotImplementedError, data-dependent ops, ...): probe for real instead
        return None


def shallowest(names: list[str]) -> str | None:
    """The outermost of several modules returning the same tensor (``layer4`` rather than ``layer4.2.relu``);
    ties go to the first listed."""
    return min(names, key=lambda n: n.count("."), default=None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def nearest_names(name: str, names: list[str], n: int = 5) -> list[str]:
    """The valid layer names closest to a mistyped one (difflib), best first."""
    near = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
    return near or difflib.get_close_matches(name, names, n=n, cutoff=0.3)


def check_target_layer(model: nn.Module, name: str, layers: list[LayerOutput], *, model_name: str) -> tuple[int, ...]:
    """The output shape of layer ``name``; a ModelError naming the layer and the fix when it is unknown, does not
    run exactly once, or does not output a spatial map (N, C, h, w)."""
    by_name = {layer.name: layer for layer in layers}
    hint = "list the candidates with `enhancer inspect CHECKPOINT --layers`"
    if name not in by_name:
        near = nearest_names(name, list(by_name))
        listed = f"; nearest: {', '.join(near)}" if near else ""
        raise ModelError(f"target layer {name!r} is not a module of {model_name}{listed} ({hint})")
    layer = by_name[name]
    if layer.calls == 0:
        raise ModelError(f"target layer {name!r} of {model_name} is not run by its forward; pick another ({hint})")
    if layer.calls > 1:
        raise ModelError(
            f"target layer {name!r} of {model_name} runs {layer.calls} times in one forward (a shared module), so its "
            f"output is not one map; pick the block that contains it ({hint})"
        )
    if not layer.spatial:
        shape = "not a tensor" if layer.shape is None else f"shape {layer.shape}"
        raise ModelError(
            f"target layer {name!r} ({layer.type}) of {model_name} outputs {shape}, not a spatial map (N, C, h, w) "
            f"with more than one position; pick a convolutional layer before the global pooling ({hint})"
        )
    assert layer.shape is not None
    return layer.shape
