"""Model randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"): do the maps depend on the
model's weights?

Usage::

    from enhancer.audit.randomisation import randomisation_stages, cascading_randomisation, pair_baseline
    stages = randomisation_stages(model, x[:1])          # head, layer4, ..., layer1, stem for the ResNets
    for stage, maps_k in cascading_randomisation(model, stages, x, target, map_fn, seed=0):
        ssim(maps, maps_k)                               # the maps after re-initialising this and every stage above

Cascading randomisation re-initialises the model's stages from the top, one more per step, each module with its
own ``reset_parameters`` (seeded: stage k uses ``seed + k``; BatchNorm running statistics are reset too), on a copy
of the model. Stages: for the ResNets the head (everything outside the trunk), then ``layer4`` ... ``layer1`` and
the stem; for other models the top-level children in reverse order of execution, skipping those without
parameters of their own. Maps that survive the randomisation (an edge detector, for one) show the image, not the
model. The baseline: the similarity of maps of random pairs of different images of the same dataset.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from enhancer.audit.maps import MapFn, compute_maps
from enhancer.audit.similarity import spearman, ssim


@dataclass(frozen=True)
class Stage:
    """One step of the cascade: the modules (by name in the model) re-initialised at this step."""

    name: str
    modules: tuple[str, ...]


def _resnet_trunk(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(prefix, module) of the torchvision ResNet holding layer1..layer4 (the model itself or ``model.resnet``)."""
    for prefix in ("", "resnet"):
        m = getattr(model, prefix, None) if prefix else model
        if (
            isinstance(m, nn.Module)
            and all(isinstance(getattr(m, f"layer{i}", None), nn.Module) for i in range(1, 5))
            and hasattr(m, "bn1")
        ):
            return prefix, m
    return None


def _has_own_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _resnet_stages(model: nn.Module, prefix: str) -> list[Stage]:
    dot = f"{prefix}." if prefix else ""
    # the seed's ResNets use their own 1-channel ``conv1`` in front of the torchvision trunk
    stem_conv = "conv1" if prefix and isinstance(getattr(model, "conv1", None), nn.Conv2d) else f"{dot}conv1"
    stages = [Stage(f"layer{i}", (f"{dot}layer{i}",)) for i in range(4, 0, -1)]
    stages.append(Stage("stem", (stem_conv, f"{dot}bn1")))
    inside = {name for s in stages for name in s.modules}
    head = tuple(
        name
        for name, m in model.named_modules()
        if name
        and _has_own_parameters(m)
        and not any(name == k or name.startswith(k + ".") for k in inside)
        and name != f"{dot}conv1"  # the seed trunk's unused 3-channel conv
    )
    return [Stage("head", head), *stages]


def _execution_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the top-level children in the order a forward pass first calls them."""
    order: list[str] = []
    handles = [
        child.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name) if name not in order else None)
        for name, child in model.named_children()
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return order


def randomisation_stages(model: nn.Module, example: torch.Tensor) -> list[Stage]:
    """The cascade's stages, top first; ``example`` (1, C, H, W) is a model input (used to find the order of
    execution for models that are not ResNets)."""
    trunk = _resnet_trunk(model)
    if trunk is not None:
        return _resnet_stages(model, trunk[0])
    seen: set[int] = set()
    stages = []
    for name in reversed(_execution_order(model, example)):
        params = [p for p in model.get_submodule(name).parameters() if id(p) not in seen]
        if params:  # an alias of modules already randomised adds nothing
            seen.update(id(p) for p in params)
            stages.append(Stage(name, (name,)))
    if not stages:
        raise ValueError(f"{type(model).__name__} has no parameterised top-level module to randomise")
    return stages


def reinitialise(model: nn.Module, stage: Stage, seed: int) -> None:
    """Re-initialise every module of ``stage`` in ``model`` in place with its own ``reset_parameters``."""
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for name in stage.modules:
            for m in model.get_submodule(name).modules():
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):
                    reset()


def cascading_randomisation(
    model: nn.Module,
    stages: list[Stage],
    x: torch.Tensor,
    target: torch.Tensor,
    map_fn: MapFn,
    *,
    seed: int = 0,
    batch_size: int = 32,
) -> Iterator[tuple[Stage, torch.Tensor]]:
    """(stage, maps (N, H, W) in [0, 1]) after re-initialising each stage in turn, on a copy of ``model``."""
    randomised = copy.deepcopy(model).eval()
    for k, stage in enumerate(stages):
        reinitialise(randomised, stage, seed + k)
        yield stage, compute_maps(map_fn, randomised, x, target, batch_size=batch_size)


def random_pairs(n: int, count: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (i, j), i < j, of different indices below n (n >= 2): all of them when there are at most ``count``,
    else ``count`` drawn at random without repetition."""
    if n < 2:
        raise ValueError(f"random pairs need at least 2 maps, got {n}")
    i, j = torch.triu_indices(n, n, offset=1)
    if len(i) > count:
        pick = torch.randperm(len(i), generator=generator)[:count]
        i, j = i[pick], j[pick]
    return i, j


def pair_baseline(
    maps: torch.Tensor, *, count: int = 128, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and Spearman (each (pairs,)) between the maps (N, H, W) of pairs of different images."""
    i, j = random_pairs(len(maps), count, generator)
    i, j = i.to(maps.device), j.to(maps.device)
    return ssim(maps[i], maps[j]), spearman(maps[i], maps[j])
