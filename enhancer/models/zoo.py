"""The model zoo: the original research's architectures, with the exact state_dict layout of its checkpoints.

Usage::

    from enhancer.models.zoo import build_model
    model = build_model("resnet101")            # seed ResNet-101, 1-channel stem, "220k" head, random init
    a = model.features(x)                       # (N, 2048, 7, 7): the Grad-CAM target layer
    logits = model.head(a)                      # (N, 2); model(x) == model.head(model.features(x))

Every model exposes the same two halves, ``features`` (input -> Grad-CAM target activations) and ``head``
(target activations -> logits), so Grad-CAM never has to guess hook points; the name of the module whose output
``features`` returns is on the model's family in ``enhancer.models.registry``. Attribute names and ``nn.Sequential``
indices follow the seed notebook exactly (``resnet.*``, ``conv1.*``, ``dense_neural_network.*``; ``vgg.*``,
``feature_extractor.*``, ``classifier.*``): its checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from enhancer.models.backbones import VGG16, ResNet
from enhancer.preprocessing import RGB_PREPROCESSING, SEED_PREPROCESSING, Preprocessing

log = logging.getLogger(__name__)

DEFAULT_CLASS_NAMES = ("NORMAL", "PNEUMONIA")

# Seed heads on top of the 1000 ImageNet logits: (hidden widths, dropout before each Linear).
# "220k" is the best model's head (220,502 parameters), "10k" the ResNet-50 / early ResNet-101 one,
# "15k" the ResNet-152 one, "vgg" the VGG-16 one (no leading ReLU/Dropout: Linear, ReLU, Dropout, Linear).
SEED_HEADS: dict[str, tuple[tuple[int, ...], tuple[float, ...]]] = {
    "220k": ((200, 100), (0.5, 0.4, 0.2)),
    "10k": ((10,), (0.2, 0.5)),
    "15k": ((15,), (0.5, 0.5)),
}


class ModelError(ValueError):
    """A model cannot be built or initialised as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a zoo model's structure (not its weights)."""

    arch: str
    head: str | None = None  # seed head name; None for architectures with a fixed head
    num_classes: int = 2
    input_size: int = 224  # TinyVGG's classifier size depends on it; the others accept any size
    width: int | None = None  # TinyVGG hidden units

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelError(f"unknown model config keys {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


def _seed_mlp(head: str, num_classes: int) -> nn.Sequential:
    """ReLU/Dropout/Linear stack on the 1000 ImageNet logits, indices as in the seed."""
    if head not in SEED_HEADS:
        raise ModelError(f"unknown head {head!r}; valid: {sorted(SEED_HEADS)}")
    widths, dropouts = SEED_HEADS[head]
    layers: list[nn.Module] = []
    fan_in = 1000
    for width, p in zip((*widths, num_classes), dropouts, strict=True):
        layers += [nn.ReLU(), nn.Dropout(p), nn.Linear(fan_in, width)]
        fan_in = width
    return nn.Sequential(*layers)


def _one_channel_conv_like(conv: nn.Conv2d) -> nn.Conv2d:
    """A 1-input-channel copy of ``conv`` whose weights are the mean over its RGB weights (the seed's stem)."""
    stem = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None).to(
        conv.weight.device
    )
    with torch.no_grad():
        stem.weight.copy_(conv.weight.mean(dim=1, keepdim=True))
        if conv.bias is not None:
            stem.bias.copy_(conv.bias)
    return stem


def _layer_groups(resnet: ResNet) -> dict[str, list[nn.Module]]:
    """Trainable groups of a ResNet's stages: ``layer1``..``layer4`` and each block, ``layer4[2]``."""
    groups: dict[str, list[nn.Module]] = {}
    for i in range(1, 5):
        layer = getattr(resnet, f"layer{i}")
        groups[f"layer{i}"] = [layer]
        groups.update({f"layer{i}[{j}]": [block] for j, block in enumerate(layer)})
    return groups


class SeedResNet(nn.Module):
    """The seed's ResNet: a 1-channel stem ``conv1`` in front of a torchvision-layout ResNet (whose own 3-channel
    ``resnet.conv1`` stays unused in the state_dict), the ImageNet ``resnet.fc`` kept, and an MLP head
    ``dense_neural_network`` on the 1000 logits."""

    def __init__(self, depth: int, head: str, num_classes: int = 2) -> None:
        super().__init__()
        self.resnet = ResNet(depth)
        self.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.conv1.weight.requires_grad_(False)  # frozen in the seed
        self.dense_neural_network = _seed_mlp(head, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(self.conv1(x))))
        return r.layer4(r.layer3(r.layer2(r.layer1(x))))

    def head(self, a: torch.Tensor) -> torch.Tensor:
        r = self.resnet
        return self.dense_neural_network(r.fc(torch.flatten(r.avgpool(a), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def init_stem_from_rgb(self) -> None:
        with torch.no_grad():
            self.conv1.weight.copy_(self.resnet.conv1.weight.mean(dim=1, keepdim=True))

    def param_groups(self) -> dict[str, list[nn.Module]]:
        r = self.resnet
        return {"head": [self.dense_neural_network], "fc": [r.fc], "stem": [self.conv1, r.bn1], **_layer_groups(r)}


class TorchvisionResNet(ResNet):
    """A 3-channel ResNet (torchvision's layout) with a new ``fc`` (keys ``conv1.*``, ``layer1.*``, ``fc.*``)."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(a), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def param_groups(self) -> dict[str, list[nn.Module]]:
        return {"head": [self.fc], "fc": [self.fc], "stem": [self.conv1, self.bn1], **_layer_groups(self)}


class SeedVGG16(nn.Module):
    """The seed's VGG-16: vgg16 (torchvision's layout) with a 1-channel first conv; ``feature_extractor``,
    ``max_pool`` and ``classifier`` are aliases into ``vgg`` (so the state_dict holds both names, as the seed's
    did); head ``dense_neural_network`` on the 1000 logits."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.vgg = VGG16()
        self.vgg.features[0] = nn.Conv2d(1, 64, kernel_size=3, padding=1)
        self._alias_parts()
        self.dense_neural_network = nn.Sequential(
            nn.Linear(1000, 10), nn.ReLU(), nn.Dropout(0.2), nn.Linear(10, num_classes)
        )

    def _alias_parts(self) -> None:
        self.feature_extractor = self.vgg.features[:30]
        self.max_pool = self.vgg.features[30]
        self.classifier = self.vgg.classifier

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_extractor(x)

    def head(self, a: torch.Tensor) -> torch.Tensor:
        a = self.vgg.avgpool(self.max_pool(a))  # adaptive 7x7 pool: the identity at 224
        return self.dense_neural_network(self.classifier(torch.flatten(a, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def init_stem_from_rgb(self, rgb_conv: nn.Conv2d) -> None:
        self.vgg.features[0] = _one_channel_conv_like(rgb_conv)
        self._alias_parts()

    def param_groups(self) -> dict[str, list[nn.Module]]:
        return {
            "head": [self.dense_neural_network],
            "classifier": [self.classifier],
            "fc": [self.classifier],
            "features": [self.feature_extractor],
            "stem": [self.vgg.features[0]],
        }


class TinyVGG(nn.Module):
    """The seed's baseline ``CNN(input_shape=1, hidden_units=15, output_shape=2, inp_res=224)``."""

    def __init__(self, width: int = 15, input_size: int = 224, num_classes: int = 2) -> None:
        super().__init__()
        if input_size % 4:
            raise ModelError(f"tinyvgg needs an input size divisible by 4, got {input_size}")
        conv = {"kernel_size": 3, "padding": 1}
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(1, width, **conv),
            nn.ReLU(),
            nn.Conv2d(width, width, **conv),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Conv2d(width, width, **conv),
            nn.ReLU(),
            nn.Conv2d(width, width, **conv),
            nn.ReLU(),
        )
        self.max_pool = nn.MaxPool2d(2)
        self.dense_neural_network = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(width * (input_size // 4) ** 2, num_classes)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_extractor(x)

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.dense_neural_network(self.max_pool(a))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def param_groups(self) -> dict[str, list[nn.Module]]:
        return {"head": [self.dense_neural_network], "features": [self.feature_extractor]}


@dataclass(frozen=True)
class ArchInfo:
    name: str
    description: str
    builder: Callable[[ModelConfig], nn.Module]
    preprocessing: Preprocessing
    heads: tuple[str, ...] = ()
    default_head: str | None = None
    default_trainable: tuple[str, ...] = ("all",)
    imagenet_weights: str | None = None  # torchvision weights enum name


def _build_seed_resnet(depth: int) -> Callable[[ModelConfig], nn.Module]:
    return lambda cfg: SeedResNet(depth, cfg.head or "220k", cfg.num_classes)


def _build_tv_resnet(depth: int) -> Callable[[ModelConfig], nn.Module]:
    return lambda cfg: TorchvisionResNet(depth, num_classes=cfg.num_classes)


ZOO: dict[str, ArchInfo] = {
    "tinyvgg": ArchInfo(
        "tinyvgg",
        "seed baseline TinyVGG CNN (4 conv, 1 linear), 1-channel",
        lambda cfg: TinyVGG(cfg.width or 15, cfg.input_size, cfg.num_classes),
        SEED_PREPROCESSING,
    ),
    "vgg16": ArchInfo(
        "vgg16",
        "seed VGG-16, 1-channel first conv, 1000->10->2 head (only the head trains)",
        lambda cfg: SeedVGG16(cfg.num_classes),
        SEED_PREPROCESSING,
        default_trainable=("head",),
        imagenet_weights="VGG16_Weights",
    ),
    **{
        f"resnet{d}": ArchInfo(
            f"resnet{d}",
            f"seed ResNet-{d}, 1-channel stem, ImageNet fc + MLP head",
            _build_seed_resnet(d),
            SEED_PREPROCESSING,
            heads=tuple(SEED_HEADS),
            default_head=head,
            default_trainable=("head", "fc", "layer4"),
            imagenet_weights=f"ResNet{d}_Weights",
        )
        for d, head in ((50, "10k"), (101, "220k"), (152, "15k"))
    },
    **{
        f"tv-resnet{d}": ArchInfo(
            f"tv-resnet{d}",
            f"standard torchvision ResNet-{d} (3-channel) with a new fc",
            _build_tv_resnet(d),
            RGB_PREPROCESSING,
            imagenet_weights=f"ResNet{d}_Weights",
        )
        for d in (18, 50, 101, 152)
    },
}


def _arch_info(arch: str) -> ArchInfo:
    if arch not in ZOO:
        raise ModelError(f"unknown architecture {arch!r}; valid: {', '.join(ZOO)}")
    return ZOO[arch]


def resolve_config(
    arch: str, *, head: str | None = None, num_classes: int = 2, input_size: int = 224, width: int | None = None
) -> ModelConfig:
    """Validate the options against the zoo entry and fill in its defaults."""
    info = _arch_info(arch)
    if head is not None and head not in info.heads:
        valid = ", ".join(info.heads) if info.heads else "none (this architecture has a fixed head)"
        raise ModelError(f"head {head!r} is not available for {arch}; valid: {valid}")
    if width is not None and arch != "tinyvgg":
        raise ModelError(f"width applies to tinyvgg only, not {arch}")
    if num_classes < 2:
        raise ModelError(f"num_classes must be at least 2, got {num_classes}")
    return ModelConfig(
        arch=arch,
        head=head or info.default_head,
        num_classes=num_classes,
        input_size=input_size,
        width=(width or 15) if arch == "tinyvgg" else None,
    )


def build_model(
    arch: str,
    *,
    head: str | None = None,
    num_classes: int = 2,
    input_size: int = 224,
    width: int | None = None,
    init: str = "random",
    download: bool = True,
) -> nn.Module:
    """Build a zoo model. ``init`` is ``"random"`` or ``"imagenet"`` (torchvision's default ImageNet weights,
    the 1-channel stem set to the mean of the RGB first-conv weights, as the seed did). The model is returned in
    train mode with the architecture's default trainable groups (see ``set_trainable``) and carries its
    ``ModelConfig`` as ``model.config``."""
    cfg = resolve_config(arch, head=head, num_classes=num_classes, input_size=input_size, width=width)
    return build_from_config(cfg, init=init, download=download)


def build_from_config(cfg: ModelConfig, *, init: str = "random", download: bool = True) -> nn.Module:
    info = _arch_info(cfg.arch)
    model = info.builder(cfg)
    if init == "imagenet":
        _load_imagenet(model, info, download=download)
    elif init != "random":
        raise ModelError(f"unknown init {init!r}; valid: random, imagenet (or load a checkpoint)")
    model.config = cfg
    set_trainable(model, info.default_trainable)
    return model


def preprocessing_for(arch: str, input_size: int = 224) -> Preprocessing:
    p = _arch_info(arch).preprocessing
    return Preprocessing(size=(input_size, input_size), in_chans=p.in_chans, mean=p.mean, std=p.std)


def imagenet_cache_path(arch: str) -> str:
    """Where torchvision keeps (or would download) the ImageNet weights of ``arch``."""
    weights = _imagenet_weights(arch)
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))


def _imagenet_weights(arch: str) -> Any:
    info = _arch_info(arch)
    if info.imagenet_weights is None:
        raise ModelError(f"{arch} has no ImageNet weights; use init='random' or a checkpoint")
    import torchvision  # only here: the weights' URLs and downloader (importing torchvision costs ~1.5 s)

    return getattr(torchvision.models, info.imagenet_weights).DEFAULT


def _load_imagenet(model: nn.Module, info: ArchInfo, *, download: bool) -> None:
    weights = _imagenet_weights(info.name)
    path = imagenet_cache_path(info.name)
    if not os.path.exists(path) and not download:
        raise ModelError(_offline_message(info.name, path, "downloads are disabled"))
    try:
        state = weights.get_state_dict(progress=False, weights_only=True)
    except Exception as exc:  # network errors come in many types (URLError, OSError, HTTPError, timeouts)
        raise ModelError(_offline_message(info.name, path, f"{type(exc).__name__}: {exc}")) from exc
    if isinstance(model, SeedResNet):
        model.resnet.load_state_dict(state)
        model.init_stem_from_rgb()
    elif isinstance(model, SeedVGG16):
        state = dict(state, **{"features.0.weight": state["features.0.weight"].mean(dim=1, keepdim=True)})
        model.vgg.load_state_dict(state)
    elif isinstance(model, TorchvisionResNet):
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and set(missing) == {"fc.weight", "fc.bias"}, (missing, unexpected)
    log.info("initialised %s from ImageNet weights %s", info.name, path)


def _offline_message(arch: str, path: str, reason: str) -> str:
    weights = _arch_info(arch).imagenet_weights
    return (
        f"ImageNet weights for {arch} are not cached at {path} and cannot be fetched ({reason}). "
        f'On a machine with internet access run `TORCH_HOME=/shared/torch python -c "import torchvision; '
        f'torchvision.models.{weights}.DEFAULT.get_state_dict()"`, then set TORCH_HOME=/shared/torch here; '
        f"or start from a checkpoint instead (--init CHECKPOINT)."
    )


def set_trainable(model: nn.Module, groups: Iterable[str]) -> None:
    """Freeze everything, then unfreeze the named groups (``all`` unfreezes everything). Group names per model
    come from ``model.param_groups()``, e.g. ``head``, ``fc``, ``layer4``, ``layer4[2]`` for the ResNets.
    The seed's 1-channel ``conv1`` stays frozen unless ``stem`` or ``all`` is named."""
    groups = list(groups)
    available = model.param_groups()
    unknown = [g for g in groups if g != "all" and g not in available]
    if unknown:
        raise ModelError(f"unknown trainable group(s) {unknown}; valid: all, {', '.join(available)}")
    everything = "all" in groups
    for p in model.parameters():
        p.requires_grad_(everything)
    for g in groups:
        for module in available.get(g, []):
            module.requires_grad_(True)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts; shared (aliased) tensors are counted once."""
    params = list(model.parameters())  # nn.Module.parameters() already de-duplicates aliases
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
