"""Head-only gradients for any model: a forward hook on the target layer cuts the autograd graph there.

Usage::

    g = layer_gradients(model.eval(), x, model.get_submodule("features.norm5"), CamSettings())
    g.activations, g.gradients  # (N, K, h, w) each: the layer's output and d score / d output

The trunk (everything before the layer) runs without autograd; the hook hands the rest of the network a copy of the
layer's output that hangs off a fresh leaf requiring grad, and switches gradient recording on from there. The
backward then stops at the layer for every architecture (residual, dense, squeeze-excitation and attention heads
alike), not only for global-pooling + linear heads, and gives exactly what a hook + full backward gives: the
derivative of the score w.r.t. the layer's output. Grad mode, autocast and the hook are restored / removed even when
the forward fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from enhancer.explain.cam import (
    LayerGrads,
    check_inputs,
    class_score,
    head_dtype,
    target_classes,
    trunk_context,
)
from enhancer.settings import CamSettings


class LayerError(ValueError):
    """The target layer cannot give a CAM (no 4-d output, not run, run twice); the message names it and the fix."""


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """The dotted name of ``layer`` inside ``model`` (for messages), or its class name when it is not inside."""
    return next((name or "(the model itself)" for name, m in model.named_modules() if m is layer), type(layer).__name__)


def _check_output(model: nn.Module, layer: nn.Module, output: object) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.ndim != 4:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise LayerError(
            f"target layer {layer_name(model, layer)!r} outputs {shape}, not a spatial (N, C, h, w) feature map; "
            "choose a convolutional stage before the global pooling (`enhancer inspect --layers` lists them)"
        )
    return output


@contextlib.contextmanager
def _grad_and_autocast_restored(device_type: str) -> Iterator[None]:
    """Undo the hook's switches of grad mode and autocast when the forward ends, whatever happens."""
    grad = torch.is_grad_enabled()
    autocast = torch.is_autocast_enabled(device_type)
    try:
        yield
    finally:
        torch.set_grad_enabled(grad)
        torch.set_autocast_enabled(device_type, autocast)


def _cut_hook(
    model: nn.Module, layer: nn.Module, captured: list[torch.Tensor], *, need_gradients: bool, device_type: str
) -> Callable[[nn.Module, tuple, object], torch.Tensor]:
    def hook(_module: nn.Module, _inputs: tuple, output: object) -> torch.Tensor:
        out = _check_output(model, layer, output)
        if captured:
            raise LayerError(
                f"target layer {layer_name(model, layer)!r} runs more than once per forward (a shared module, e.g. "
                "a ReLU reused inside a block); choose a module that runs once, such as the block or stage"
            )
        if torch.is_autocast_enabled(device_type):  # the rest of the network in float32, as the zoo's heads
            torch.set_autocast_enabled(device_type, False)
            out = head_dtype(out)
        leaf = out.detach().requires_grad_(need_gradients)
        captured.append(leaf)
        torch.set_grad_enabled(need_gradients)
        # a copy for the rest of the network: in-place operations after the layer (DenseNet's final ReLU) must
        # change neither the captured activations nor a leaf
        return leaf.clone()

    return hook


def run_cut(
    model: nn.Module, x: torch.Tensor, layer: nn.Module, *, need_gradients: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations leaf, logits): one forward of ``x``, the graph starting at ``layer``'s output."""
    captured: list[torch.Tensor] = []
    hook = _cut_hook(model, layer, captured, need_gradients=need_gradients, device_type=x.device.type)
    handle = layer.register_forward_hook(hook)
    try:
        with _grad_and_autocast_restored(x.device.type):
            torch.set_grad_enabled(False)
            logits = model(x)
    finally:
        handle.remove()
    if not captured:
        raise LayerError(f"target layer {layer_name(model, layer)!r} did not run in the model's forward pass")
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise LayerError(f"the model returns {shape}; CAM needs (N, num_classes) logits")
    return captured[0], logits


def layer_gradients(
    model: nn.Module,
    x: torch.Tensor,
    layer: nn.Module,
    settings: CamSettings = CamSettings(),
    labels: torch.Tensor | None = None,
    *,
    need_gradients: bool = True,
) -> LayerGrads:
    """Activations of ``layer`` and d score / d activations for a batch ``x`` (N, C, H, W) of any model (eval mode).

    Eval mode makes image n's score depend on its own activations only, so one backward of the summed scores
    gives every image's gradient."""
    check_inputs(model, x)
    x, amp = trunk_context(settings, x)
    with amp:
        a, logits = run_cut(model, x, layer, need_gradients=need_gradients)
    logits_f = head_dtype(logits)
    pred = logits_f.detach().argmax(1)
    target = target_classes(settings, pred, labels, logits.shape[1])
    grads = None
    if need_gradients:
        with torch.enable_grad():
            (grads,) = torch.autograd.grad(class_score(logits_f, target, settings.score).sum(), a)
    return LayerGrads(a.detach(), grads, logits_f.detach(), target, pred)


def replaced_output_forward(
    model: nn.Module, x: torch.Tensor, layer: nn.Module, settings: CamSettings = CamSettings()
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``forward(activations, rows) -> logits``: the model run on ``x[rows]`` with ``layer``'s output replaced by
    ``activations`` (no autograd; after the layer in float32, as ``layer_gradients``). Any model; the layers before
    ``layer`` run again on every call (a model with a ``head`` half skips that)."""
    device_type = x.device.type

    def replace(_module: nn.Module, _inputs: tuple, output: object) -> torch.Tensor:
        _check_output(model, layer, output)
        torch.set_autocast_enabled(device_type, False)
        return activations_now[0]

    activations_now: list[torch.Tensor] = []

    def forward(activations: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        activations_now[:] = [activations]
        xr, amp = trunk_context(settings, x[rows])
        handle = layer.register_forward_hook(replace)
        try:
            with amp, _grad_and_autocast_restored(device_type), torch.no_grad():
                return model(xr)
        finally:
            handle.remove()
            activations_now.clear()

    return forward


def cut_forward(
    model: nn.Module, layer: nn.Module, settings: CamSettings = CamSettings()
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward(x) -> logits`` without autograd: the trunk in the settings' autocast, after ``layer`` float32."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        x, amp = trunk_context(settings, x)
        with amp:
            return run_cut(model, x, layer, need_gradients=False)[1]

    return forward
