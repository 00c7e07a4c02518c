"""The ResNet and VGG-16 trunks the zoo builds on, module for module as torchvision builds them, without torchvision.

Usage::

    from enhancer.models.backbones import VGG16, ResNet
    net = ResNet(101)       # torchvision.models.resnet101(weights=None): same modules, state_dict, init, forward
    vgg = VGG16()           # torchvision.models.vgg16(weights=None)

Importing torchvision at all costs about 2 s on a small CPU (its ``__init__`` imports its ops, which import
``torch._dynamo``), more than the rest of the model code together, and the enhance job needs nothing else from it.
These classes follow the published architectures (He et al. 2015 with the stride on the 3x3 convolution of the
bottleneck, "ResNet v1.5"; Simonyan & Zisserman 2014, configuration D) as torchvision 0.29 lays them out:
attribute names, ``nn.Sequential`` indices, module construction order and the initialisation loop are the same, so
every torchvision-shaped state_dict loads with ``strict=True`` and the same ``torch.manual_seed`` gives bit-equal
random weights (the project's demo checkpoints and tests are seeded random models). Only what the zoo uses is here:
no groups, widths, dilation or zero-initialised residual branches.
"""

from __future__ import annotations

import torch
from torch import nn

# residual blocks per stage (layer1..layer4) by depth; below 50 the blocks are basic (two 3x3), from 50 bottlenecks
RESNET_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
# VGG-16 (configuration D): output channels of each 3x3 convolution, "M" a 2x2 max-pool
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34); ``downsample`` matches the shortcut's shape."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 down, 3x3 (carrying the stride), 1x1 up to ``4 * planes``, and a shortcut (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


def _stage(block: type[BasicBlock | Bottleneck], inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """One stage: the first block changes stride and width (with a 1x1 convolution + BatchNorm shortcut where the
    shape changes), the others keep them. Construction order as torchvision's: shortcut, then the blocks."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            _conv1x1(inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
        )
    first = block(inplanes, planes, stride, downsample)
    return nn.Sequential(first, *(block(planes * block.expansion, planes) for _ in range(1, blocks)))


def _initialise(model: nn.Module, *, linear_std: float | None = None) -> None:
    """torchvision's initialisation loop, in module order: convolutions Kaiming-normal (fan out, ReLU gain) with zero
    bias, BatchNorm weight 1 / bias 0, and (VGG only, ``linear_std``) linear layers normal(0, std) with zero bias.
    Skipped on the meta device (a structure for a checkpoint's tensors): there is nothing to draw, and ``normal_`` on
    a meta tensor goes through ``torch._refs``, which imports ``torch._dynamo`` (~1.5 s) in torch 2.14."""
    if any(p.is_meta for p in model.parameters()):
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.constant_(m.bias, 0)


class ResNet(nn.Module):
    """ResNet-``depth`` (18, 34, 50, 101 or 152) for 3-channel input with a ``num_classes`` linear layer ``fc``."""

    def __init__(self, depth: int, num_classes: int = 1000) -> None:
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise ValueError(f"no ResNet of depth {depth}; valid: {', '.join(map(str, RESNET_BLOCKS))}")
        block = BasicBlock if depth < 50 else Bottleneck
        blocks = RESNET_BLOCKS[depth]
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(block, 64, 64, blocks[0], stride=1)
        self.layer2 = _stage(block, 64 * block.expansion, 128, blocks[1], stride=2)
        self.layer3 = _stage(block, 128 * block.expansion, 256, blocks[2], stride=2)
        self.layer4 = _stage(block, 256 * block.expansion, 512, blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _initialise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _vgg_features(layout: tuple[int | str, ...], in_channels: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in layout:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = int(v)
    return nn.Sequential(*layers)


class VGG16(nn.Module):
    """VGG-16 for 3-channel input: ``features`` (13 convolutions, 5 max-pools), an adaptive 7x7 ``avgpool`` and the
    three-layer ``classifier`` ending in ``num_classes`` outputs."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = _vgg_features(VGG16_LAYOUT)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        _initialise(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
