"""A model as a job uses it: loaded from a checkpoint (any kind of model), its preprocessing resolved (library,
then overrides), its target layer checked; and the description ``enhancer inspect`` prints.

Usage::

    from enhancer.models.inspection import open_model, describe, candidate_layers
    ck, target = open_model("densenet.pt", model="tv:densenet121", num_classes=2, target_layer="features.norm5")
    describe(ck, target)["target_layer"]            # "features.norm5"
    candidate_layers(target, depth=2)               # [{"name": "features.conv0", "type": "Conv2d", ...}, ...]
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from torch import nn

from enhancer.models.checkpoints import LoadedCheckpoint, load_checkpoint
from enhancer.models.registry import TargetLayer, resolve_target
from enhancer.models.zoo import ZOO, ModelError, count_parameters
from enhancer.preprocessing import override


def open_model(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    model: str | None = None,
    num_classes: int | None = None,
    target_layer: str | None = None,
    size: int | None = None,
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
    channels: int | None = None,
) -> tuple[LoadedCheckpoint, TargetLayer]:
    """Load ``path`` as ``model`` (see ``load_checkpoint``), override its preprocessing where asked, and resolve
    and check the target layer (default: the family's) at that input."""
    ck = load_checkpoint(path, arch=arch, model=model, num_classes=num_classes)
    try:
        preprocessing = override(ck.preprocessing, size=size, mean=mean, std=std, channels=channels)
    except ValueError as exc:
        raise ModelError(f"input preprocessing: {exc}") from None
    ck = dataclasses.replace(ck, preprocessing=preprocessing)
    return ck, resolve_target(ck.model, preprocessing, target_layer)


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(ck: LoadedCheckpoint, target: TargetLayer) -> dict[str, Any]:
    """Plain data about a loaded model: format, architecture, classes, parameters, target layer, head, input."""
    total, trainable = count_parameters(ck.model)
    head = ck.model.get_submodule(target.head_layer) if target.head_layer != "-" else None
    zoo = ZOO.get(ck.config.arch)
    return {
        "path": ck.path,
        "sha256": ck.sha256,
        "format": ck.source_format,
        "architecture": ck.config.arch,
        "family": target.family,
        "head": ck.config.head,
        "num_classes": ck.config.num_classes,
        "class_names": list(ck.class_names),
        "parameters": {"total": total, "trainable_default": trainable, "head": _parameters(head) if head else 0},
        "default_trainable_groups": list(zoo.default_trainable) if zoo else ["all"],
        "target_layer": target.name,
        "target_shape": list(target.shape),
        "target_is_default": target.default,
        "head_only_split": target.split is not None,
        "head_layer": target.head_layer,
        "input": ck.preprocessing.to_dict(),
        "meta": ck.meta,
    }


def candidate_layers(target: TargetLayer, depth: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The layers a CAM can target (one spatial output (N, C, h, w) per forward), registration order, down to
    ``depth`` dotted levels (0: all); and how many deeper candidates were left out."""
    found = [layer for layer in target.layers if layer.spatial]
    shown = [layer for layer in found if not depth or layer.depth <= depth or layer.name == target.name]
    rows = [
        {"name": layer.name, "type": layer.type, "shape": list(layer.shape or ()), "target": layer.name == target.name}
        for layer in shown
    ]
    return rows, len(found) - len(shown)
