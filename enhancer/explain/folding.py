"""A model's trunk with its BatchNorm layers folded into the convolutions before them: what the job runs.

Usage::

    split = FoldedTrunk(model)          # model: anything with features / head halves, in eval mode
    result = grad_cam(split, x)         # the same maps, the trunk without its BatchNorm passes

In eval mode a BatchNorm after a convolution is an affine map per channel, so it folds into the convolution's weight
and bias: ``conv(x) * s + t`` is one convolution with weight ``w * s`` and bias ``b * s + t``. The trunk runs once per
batch without autograd and holds nearly all the work; on the CPU its BatchNorm passes over every activation take over
a tenth of the trunk's time for ResNet-101 (profile of the job on a 2-core x86 VM). torch.fx traces ``features``, and
every convolution whose only user is a BatchNorm is replaced by the folded one; the head is left as it is (it is
differentiated). The folded convolutions compute the same function up to float rounding (about
1e-5 of the activations' range in float32). A trunk that torch.fx cannot trace (Python control flow on tensor
values) runs unfolded, with the reason logged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from enhancer.explain.conv_fusion import fuse_conv_activations

log = logging.getLogger(__name__)


class _Features(nn.Module):
    """``split.features`` as a module of its own, so that torch.fx can trace it: the model whose layers it calls is
    registered as a submodule (``split`` itself, or the model behind a registry ``SplitView``)."""

    def __init__(self, split: Any) -> None:
        super().__init__()
        owner = split if isinstance(split, nn.Module) else getattr(split, "model", None)
        if isinstance(owner, nn.Module):
            self.owner = owner
        self.split = split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.split.features(x)


_FOLDABLE = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


def fold_batchnorm(features: nn.Module) -> nn.Module | None:
    """``features`` (eval mode) traced by torch.fx, with every BatchNorm whose input is a convolution used by nothing
    else folded into it, or None when torch.fx cannot trace it or nothing folds. The original is not changed and
    nothing is copied but the folded convolutions: the traced module's containers are its own, its leaf modules are
    the original's, and each folded convolution replaces its leaf there (``torch.fx.experimental.optimization.fuse``
    deep-copies the whole model first: for ResNet-101, 170 MiB and most of a second on a 2-core CPU)."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in features.modules()):
        return None
    try:
        traced = torch.fx.symbolic_trace(features)
    except Exception as exc:  # torch.fx raises many types on untraceable code (TraceError, TypeError, ...)
        log.info("trunk kept unfolded: torch.fx cannot trace it (%s: %s)", type(exc).__name__, exc)
        return None
    modules = dict(traced.named_modules())
    folded = 0
    for node in list(traced.graph.nodes):
        conv_node = node.args[0] if node.op == "call_module" and node.args else None
        if not (isinstance(conv_node, torch.fx.Node) and conv_node.op == "call_module" and len(conv_node.users) == 1):
            continue
        conv, norm = modules[conv_node.target], modules[node.target]
        if _FOLDABLE.get(type(conv)) is not type(norm) or norm.running_mean is None:
            continue
        parent, _, name = conv_node.target.rpartition(".")
        setattr(traced.get_submodule(parent), name, _folded_conv(conv, norm))
        node.replace_all_uses_with(conv_node)
        traced.graph.erase_node(node)
        folded += 1
    if not folded:
        return None
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced.requires_grad_(False)


def _folded_conv(conv: nn.Module, norm: nn.Module) -> nn.Module:
    """A convolution computing ``norm(conv(x))`` in eval mode: ``conv``'s hyper-parameters, folded weight and bias."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )
    hyper = {k: getattr(conv, k) for k in ("stride", "padding", "dilation", "groups", "padding_mode")}
    folded = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, bias=True, device="meta", **hyper)
    folded.weight, folded.bias = weight, bias
    return folded


class FoldedTrunk:
    """``split`` (a model or view with ``features``, ``head``, ``training``) whose ``features`` run with BatchNorm
    folded into the convolutions (``fold_batchnorm``); ``features`` is the original where nothing folds. On CPU inputs
    with autograd off, the folded convolutions also run fused with the ReLUs after them (``conv_fusion``: the same
    values, fewer passes over memory; ``fuse=False``: not, e.g. for ``torch.compile``, which fuses them itself).
    ``memory_format``: the folded trunk's parameters' format (channels_last where the job runs the trunk so)."""

    def __init__(
        self, split: Any, *, memory_format: torch.memory_format = torch.contiguous_format, fuse: bool = True
    ) -> None:
        if split.training:
            raise ValueError("BatchNorm folds only in eval mode (call model.eval() first)")
        self.split = split
        folded = fold_batchnorm(_Features(split))
        self.folded = folded is not None
        self._features = folded.to(memory_format=memory_format) if folded is not None else split.features
        # the same graph with its convolutions fused with the ReLUs after them, for CPU inference (conv_fusion)
        self._fused = fuse_conv_activations(self._features) if fuse and folded is not None else None

    @property
    def training(self) -> bool:
        return self.split.training

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused is not None and x.device.type == "cpu" and not torch.is_grad_enabled():
            return self._fused(x)
        return self._features(x)

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.split.head(a)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
