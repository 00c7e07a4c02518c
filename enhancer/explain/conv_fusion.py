"""The folded trunk's convolutions fused with the ReLU (and the residual add) after them, for inference on the CPU.

Usage::

    fused = fuse_conv_activations(traced)   # traced: a torch.fx GraphModule (the folded trunk); None: nothing fuses
    with torch.no_grad():
        a = fused(x)                         # x on the CPU: traced(x), fewer passes over memory

oneDNN, which runs torch's CPU convolutions, can apply an element-wise ReLU, and an addition of another tensor then a
ReLU, to each output value of a convolution before it is stored ("post-ops"). Unfused, every such step is a pass of
its own over the whole activation: for ResNet-101 a third of the trunk's layers are these memory-bound passes. Fused,
the float operations are the same (activations equal bit for bit on a 2-core AVX-512 x86 VM; elsewhere oneDNN may
choose another kernel, within float rounding: ``tests/test_folding.py``) and the trunk takes ~7% less time there
(ResNet-101 at 224, batch 16, channels_last: 1.57 -> 1.46 s).

The fused operators (``torch.ops.mkldnn._convolution_pointwise``, what ``torch.compile`` calls for the same fusion
on the CPU) have no autograd formula and run on the CPU only: ``FoldedTrunk`` calls the fused graph only for CPU
inputs with autograd off, the unfused one otherwise. Where the operators are missing (a torch built without oneDNN)
nothing fuses.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.fx
from torch import nn

_RELU_FUNCTIONS = {torch.relu, torch.relu_, nn.functional.relu}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


class _ConvReLU(nn.Module):
    """``relu(conv(x))`` as one oneDNN convolution with a ReLU post-op; ``conv``'s parameters, shared."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return torch.ops.mkldnn._convolution_pointwise(
            x, c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups, "relu", [], ""
        )


class _ConvAddReLU(nn.Module):
    """``relu(conv(x) + other)`` as one oneDNN convolution with add and ReLU post-ops (``other`` is not written)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return torch.ops.mkldnn._convolution_pointwise(
            x, other, c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups, "add", None, "relu", [], ""
        )


def fusion_available() -> bool:
    """Whether this torch has oneDNN's fused convolution operators."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def fuse_conv_activations(traced: torch.fx.GraphModule) -> torch.fx.GraphModule | None:
    """A new graph module sharing ``traced``'s modules and parameters in which every float32 ``Conv2d`` (zero
    padding given as numbers) whose only user is a ReLU, or an addition whose only user is a ReLU, is fused with
    them; None when nothing fuses or the operators are missing. ``traced`` itself is not changed."""
    if not fusion_available():
        return None
    fused = torch.fx.GraphModule(traced, copy.deepcopy(traced.graph))
    modules = dict(fused.named_modules())
    count = 0
    for node in list(fused.graph.nodes):
        conv = modules.get(node.target) if node.op == "call_module" else None
        if not (_fusable(conv) and len(node.users) == 1 and len(node.args) == 1 and not node.kwargs):
            continue
        user = next(iter(node.users))
        if _is_relu(user, modules):
            _replace(fused, node, user, _ConvReLU(conv), (node.args[0],))
            count += 1
        elif (other := _added(user, node)) is not None and len(user.users) == 1:
            relu = next(iter(user.users))
            if _is_relu(relu, modules):
                _replace(fused, node, relu, _ConvAddReLU(conv), (node.args[0], other), between=(user,))
                count += 1
    if not count:
        return None
    fused.graph.lint()
    fused.recompile()
    return fused


def _fusable(conv: nn.Module | None) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.weight.dtype == torch.float32
        and conv.weight.device.type == "cpu"
    )


def _is_relu(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and len(node.args) == 1 and not node.kwargs
    return node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1 and not node.kwargs


def _added(node: torch.fx.Node, conv_node: torch.fx.Node) -> torch.fx.Node | None:
    """The other operand when ``node`` adds a tensor to ``conv_node``'s output (``+``, ``+=``, ``torch.add``,
    ``.add`` / ``.add_`` without ``alpha``), else None."""
    if node.kwargs or len(node.args) != 2:
        return None
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("add", "add_")
    )
    a, b = node.args
    if not is_add or conv_node not in (a, b) or a is b:
        return None
    other = b if a is conv_node else a
    return other if isinstance(other, torch.fx.Node) else None


def _replace(
    gm: torch.fx.GraphModule,
    conv_node: torch.fx.Node,
    last: torch.fx.Node,
    module: nn.Module,
    args: tuple[torch.fx.Node, ...],
    between: tuple[torch.fx.Node, ...] = (),
) -> None:
    """Put ``module(*args)`` where ``last`` was, and remove ``last``, the nodes ``between`` and ``conv_node``."""
    name = f"fused_{len(list(gm.children()))}_{conv_node.target.replace('.', '_')}"
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(last):
        new = gm.graph.call_module(name, args)
    last.replace_all_uses_with(new)
    for dead in (last, *reversed(between), conv_node):
        gm.graph.erase_node(dead)
