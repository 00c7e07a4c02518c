"""What enhancer knows about each family of classifiers, in one place: how a checkpoint of it is recognised, its
default Grad-CAM target layer (the last convolutional stage before the global pooling), its classifier head, its
preprocessing, and where its trunk and head split for the head-only gradient.

Usage::

    from enhancer.models.registry import build, family_of, resolve_target
    model = build(ModelConfig("tv:densenet121", num_classes=2))
    family_of(model.config.arch).name                   # "densenet"
    target = resolve_target(model, library_preprocessing(model))   # TargetLayer("features.norm5", (1, 1024, 7, 7), ...)
    target = resolve_target(model, preprocessing, "features.denseblock4")      # a layer of your choice, checked

Models resolve from a zoo name (the seed's architectures), ``tv:NAME`` (torchvision), ``timm:NAME`` or
``package.module:callable``; families of torchvision builders match by name, timm models and users' builders use
the generic rule (the outermost module returning the last spatial map of the forward).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from enhancer.models.backbones import RESNET_BLOCKS
from enhancer.models.external import build_external, parse_model_name
from enhancer.models.layers import LayerOutput, check_target_layer, probe, shallowest
from enhancer.models.zoo import (
    SEED_HEADS,
    ModelConfig,
    ModelError,
    build_from_config,
    preprocessing_for,
    resolve_config,
)
from enhancer.preprocessing import IMAGENET_MEAN, IMAGENET_STD, SEED_MEAN, SEED_STD, Preprocessing

Tensor = torch.Tensor
State = dict[str, Tensor]


def _block_counts(state: State, prefix: str) -> tuple[int, ...]:
    counts = []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}layer{i}\.(\d+)\.", k))}
        counts.append(max(idx) + 1 if idx else 0)
    return tuple(counts)


def _linear_widths(state: State, prefix: str) -> list[tuple[int, int]]:
    """(index, out_features) of each Linear in an nn.Sequential, in order."""
    found = [
        (int(m.group(1)), v.shape[0])
        for k, v in state.items()
        if (m := re.fullmatch(rf"{re.escape(prefix)}(\d+)\.weight", k)) and v.ndim == 2
    ]
    return sorted(found)


def _detect_seed_resnet(state: State) -> ModelConfig | None:
    if "resnet.fc.weight" not in state or "dense_neural_network.2.weight" not in state:
        return None
    depth = {blocks: d for d, blocks in RESNET_BLOCKS.items() if d >= 50}.get(_block_counts(state, "resnet."))
    widths = [out for _, out in _linear_widths(state, "dense_neural_network.")]
    head = next((h for h, (hidden, _) in SEED_HEADS.items() if tuple(widths[:-1]) == hidden), None)
    return resolve_config(f"resnet{depth}", head=head, num_classes=widths[-1]) if depth and head and widths else None


def _detect_seed_vgg(state: State) -> ModelConfig | None:
    if "vgg.features.28.weight" in state and "dense_neural_network.3.weight" in state:
        return resolve_config("vgg16", num_classes=state["dense_neural_network.3.weight"].shape[0])
    return None


def _detect_tinyvgg(state: State) -> ModelConfig | None:
    fe, lin = state.get("feature_extractor.0.weight"), state.get("dense_neural_network.2.weight")
    if fe is None or lin is None:
        return None
    width = fe.shape[0]
    side = (lin.shape[1] // width) ** 0.5
    if fe.ndim == 4 and side == int(side):
        return resolve_config("tinyvgg", width=width, input_size=int(side) * 4, num_classes=lin.shape[0])
    return None


def _detect_tv_resnet(state: State) -> ModelConfig | None:
    if "fc.weight" not in state or "conv1.weight" not in state:
        return None
    blocks = _block_counts(state, "")
    bottleneck = "layer1.0.conv3.weight" in state
    depth = next((d for d, b in RESNET_BLOCKS.items() if b == blocks and (d >= 50) == bottleneck), None)
    if depth in (18, 50, 101, 152):
        return resolve_config(f"tv-resnet{depth}", num_classes=state["fc.weight"].shape[0])
    return None


def _fixed(name: str) -> Callable[[nn.Module], str]:
    return lambda _model: name


def _last_child(parent: str) -> Callable[[nn.Module], str]:
    """The last child of an nn.Sequential trunk: ``features.norm5`` (DenseNet), ``features.8`` (EfficientNet-B0)."""
    return lambda model: f"{parent}.{list(model.get_submodule(parent).named_children())[-1][0]}"


def _resnet_trunk(m: nn.Module, x: Tensor) -> Tensor:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def _pooled(classifier: str, *, relu: bool = False) -> Callable[[nn.Module, Tensor], Tensor]:
    """Head = classifier(flatten(global average pool(a))) (after a ReLU for DenseNet, whose forward applies one)."""

    def head(m: nn.Module, a: Tensor) -> Tensor:
        a = F.relu(a) if relu else a
        return m.get_submodule(classifier)(torch.flatten(F.adaptive_avg_pool2d(a, 1), 1))

    return head


def _convnext_head(m: nn.Module, a: Tensor) -> Tensor:
    return m.classifier(m.avgpool(a))  # classifier = LayerNorm2d, Flatten, Linear


def _vgg_head(m: nn.Module, a: Tensor) -> Tensor:
    return m.classifier(torch.flatten(m.avgpool(a), 1))  # adaptive 7x7 pool: the identity at 224


def _features_attr(m: nn.Module, x: Tensor) -> Tensor:
    return m.features(x)


def _head_attr(m: nn.Module, a: Tensor) -> Tensor:
    return m.head(a)


@dataclass(frozen=True)
class Family:
    """One family of classifiers. ``target_layer`` (None: the generic rule) and ``head_layer`` map a built model to
    dotted module names. ``features``/``head`` split the model at the default target layer (model(x) ==
    head(features(x))), which the CAM's closed form uses (``enhancer.explain.compute.compute_cam``); None where no
    split is known (the CAM then cuts the graph at the layer with a forward hook)."""

    name: str
    target_layer: Callable[[nn.Module], str] | None
    head_layer: Callable[[nn.Module], str]
    features: Callable[[nn.Module, Tensor], Tensor] | None = None
    head: Callable[[nn.Module, Tensor], Tensor] | None = None
    zoo_archs: tuple[str, ...] = ()  # zoo names of the family
    tv_pattern: str | None = None  # torchvision builder names of the family (regular expression, full match)
    detect: Callable[[State], ModelConfig | None] | None = None  # recognise a bare state_dict of the family


def _last_linear_name(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else "-"


def _timm_head(model: nn.Module) -> str:
    return str(getattr(model, "pretrained_cfg", {}).get("classifier") or _last_linear_name(model))


_SEED = {"features": _features_attr, "head": _head_attr}
FAMILIES: tuple[Family, ...] = (
    Family(
        "seed-resnet",
        _fixed("resnet.layer4"),
        _fixed("dense_neural_network"),
        **_SEED,
        zoo_archs=("resnet50", "resnet101", "resnet152"),
        detect=_detect_seed_resnet,
    ),
    # features[:30]: the last ReLU before the final max-pool, as the seed notebook hooked it
    Family("seed-vgg16", _fixed("feature_extractor"), _fixed("dense_neural_network"), **_SEED, zoo_archs=("vgg16",)),
    Family("tinyvgg", _fixed("feature_extractor"), _fixed("dense_neural_network"), **_SEED, zoo_archs=("tinyvgg",)),
    Family(
        "tv-resnet",
        _fixed("layer4"),
        _fixed("fc"),
        **_SEED,
        zoo_archs=("tv-resnet18", "tv-resnet50", "tv-resnet101", "tv-resnet152"),
        detect=_detect_tv_resnet,
    ),
    Family(
        "resnet",
        _fixed("layer4"),
        _fixed("fc"),
        _resnet_trunk,
        _pooled("fc"),
        tv_pattern=r"(resnet|resnext|wide_resnet).*",
    ),
    Family(
        "densenet",
        _last_child("features"),
        _fixed("classifier"),
        _features_attr,
        _pooled("classifier", relu=True),
        tv_pattern=r"densenet.*",
    ),
    Family(
        "efficientnet",
        _last_child("features"),
        _fixed("classifier"),
        _features_attr,
        _pooled("classifier"),
        tv_pattern=r"efficientnet_.*",
    ),
    Family(
        "mobilenet",
        _last_child("features"),
        _fixed("classifier"),
        _features_attr,
        _pooled("classifier"),
        tv_pattern=r"mobilenet_v[23].*",
    ),
    Family(
        "convnext",
        _last_child("features"),
        _fixed("classifier"),
        _features_attr,
        _convnext_head,
        tv_pattern=r"convnext_.*",
    ),
    Family("vgg", _last_child("features"), _fixed("classifier"), _features_attr, _vgg_head, tv_pattern=r"vgg.*"),
    Family(
        "regnet",
        _fixed("trunk_output"),
        _fixed("fc"),
        lambda m, x: m.trunk_output(m.stem(x)),
        _pooled("fc"),
        tv_pattern=r"regnet_.*",
    ),
)
TIMM = Family(
    "timm", None, _timm_head, lambda m, x: m.forward_features(x), lambda m, a: m.forward_head(a)
)  # forward_features / forward_head: timm's own split
GENERIC = Family("generic", None, _last_linear_name)
_BY_NAME = {f.name: f for f in (*FAMILIES, TIMM, GENERIC)}
_SEED_DETECTORS = (_detect_seed_resnet, _detect_seed_vgg, _detect_tinyvgg, _detect_tv_resnet)


def detect_config(state: State) -> ModelConfig | None:
    """Recognise a zoo architecture from parameter names and shapes; None when nothing matches."""
    return next((cfg for detect in _SEED_DETECTORS if (cfg := detect(state)) is not None), None)


def family_of(arch: str) -> Family:
    """The family of a model name (zoo name, ``tv:NAME``, ``timm:NAME`` or ``package.module:callable``)."""
    parsed = parse_model_name(arch)
    if parsed.kind == "zoo":
        return next(f for f in FAMILIES if arch in f.zoo_archs)
    if parsed.kind == "tv":
        return next((f for f in FAMILIES if f.tv_pattern and re.fullmatch(f.tv_pattern, parsed.name)), GENERIC)
    return TIMM if parsed.kind == "timm" else GENERIC


def family_named(name: str) -> Family:
    return _BY_NAME[name]


def build(config: ModelConfig, *, in_chans: int | None = None) -> nn.Module:
    """The model of ``config`` with random weights (a zoo model, or one from torchvision, timm or a user's
    builder); it carries ``config`` as ``model.config``."""
    if parse_model_name(config.arch).kind == "zoo":
        return build_from_config(config)
    model = build_external(config.arch, num_classes=config.num_classes, in_chans=in_chans)
    model.config = config
    return model


def stem_channels(model: nn.Module) -> int | None:
    """Input channels of the first convolution (registration order), or None without one."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


def _stats_for(in_chans: int, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[tuple, tuple]:
    if len(mean) == in_chans and len(std) == in_chans:
        return tuple(mean), tuple(std)
    return (SEED_MEAN, SEED_STD) if in_chans == 1 else (IMAGENET_MEAN, IMAGENET_STD)


def library_preprocessing(model: nn.Module) -> Preprocessing:
    """The preprocessing the model's own library gives it: the zoo's table; torchvision: 3 channels, ImageNet
    mean/std, 224x224; timm: its ``pretrained_cfg``; a user's builder: its ``pretrained_cfg`` when it has one, else
    224x224 with the stem's channel count (1: the seed's statistics, 3: ImageNet's)."""
    config: ModelConfig = model.config
    kind = parse_model_name(config.arch).kind
    if kind == "zoo":
        return preprocessing_for(config.arch, config.input_size)
    cfg = getattr(model, "pretrained_cfg", None) if kind != "tv" else None
    size = (224, 224)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if isinstance(cfg, dict):
        size = tuple(int(v) for v in cfg.get("input_size", (3, 224, 224))[-2:])
        mean, std = tuple(cfg.get("mean", mean)), tuple(cfg.get("std", std))
    in_chans = 3 if kind == "tv" else stem_channels(model) or 3
    mean, std = _stats_for(in_chans, mean, std)
    return Preprocessing(size=size, in_chans=in_chans, mean=mean, std=std)


class SplitView:
    """A model seen as its two halves at the target layer: ``features`` (input -> target activations) and ``head``
    (activations -> logits), the interface of the zoo models that the CAM's closed form uses. A view, not a module:
    it has no state of its own (``training`` is the model's) and is never saved."""

    def __init__(self, model: nn.Module, family: Family) -> None:
        assert family.features is not None and family.head is not None
        self.model = model
        self._features, self._head = family.features, family.head

    @property
    def training(self) -> bool:
        return self.model.training

    def features(self, x: Tensor) -> Tensor:
        return self._features(self.model, x)

    def head(self, a: Tensor) -> Tensor:
        return self._head(self.model, a)

    def __call__(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True, eq=False)
class TargetLayer:
    """The Grad-CAM target layer of a model: its dotted ``name``, the ``module``, its output ``shape`` for one
    input at the model's input size, whether it is the family's default, and ``split``: the model as features/head
    halves at this layer (the model itself for zoo models), or None where none is known (the CAM then uses the
    generic head-only gradient, a forward hook at the layer)."""

    name: str
    module: nn.Module
    shape: tuple[int, ...]
    default: bool
    split: nn.Module | SplitView | None
    family: str
    head_layer: str
    layers: tuple[LayerOutput, ...]  # every submodule's output in the probe, registration order


def resolve_target(model: nn.Module, preprocessing: Preprocessing, name: str | None = None) -> TargetLayer:
    """The target layer ``name`` (default: the family's) of ``model``, checked by one probe forward of a zero image
    at ``preprocessing``'s size: it must exist, run once and output a spatial map (N, C, h, w)."""
    family = family_of(model.config.arch)
    first = next(iter(model.parameters()), None)
    x = torch.zeros(1, preprocessing.in_chans, *preprocessing.size, device=first.device if first is not None else None)
    layers, trunk = probe(model, x)
    default = family.target_layer(model) if family.target_layer is not None else shallowest(trunk)
    if default is None and name is None:
        raise ModelError(f"{model.config.arch} has no layer with a spatial output; it cannot be explained by a CAM")
    chosen = name or default
    shape = check_target_layer(model, chosen, layers, model_name=model.config.arch)
    same = chosen == default or (default in trunk and chosen in trunk)
    split = None
    if same and family.features is not None:
        split = model if family.zoo_archs else SplitView(model, family)
    return TargetLayer(
        chosen, model.get_submodule(chosen), shape, same, split, family.name, family.head_layer(model), tuple(layers)
    )


def zoo_target_layer(arch: str) -> str:
    """The default target layer of a zoo architecture (its name does not depend on the built model)."""
    family = family_of(arch)
    assert family.target_layer is not None and family.zoo_archs, arch
    return family.target_layer(None)  # type: ignore[arg-type]  # zoo families name a fixed layer
