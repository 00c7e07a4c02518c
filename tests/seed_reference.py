"""The original notebook's model classes, re-typed independently of ``enhancer.models.zoo`` as the reference that
checkpoint compatibility is tested against. Attribute names, creation order and forward passes follow the
notebook as described in the seed notes; nothing here imports the package under test."""

from __future__ import annotations

import torch
import torchvision
from torch import nn


class NotebookResNet(nn.Module):
    def __init__(self, depth: int = 101, hidden: tuple[int, ...] = (200, 100), dropouts=(0.5, 0.4, 0.2)) -> None:
        super().__init__()
        self.resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.conv1.weight = nn.Parameter(self.resnet.conv1.weight.mean(dim=1, keepdim=True), requires_grad=False)
        layers: list[nn.Module] = []
        fan_in = 1000
        for width, p in zip((*hidden, 2), dropouts, strict=True):
            layers += [nn.ReLU(), nn.Dropout(p), nn.Linear(fan_in, width)]
            fan_in = width
        self.dense_neural_network = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.resnet.bn1(x)
        x = self.resnet.relu(x)
        x = self.resnet.maxpool(x)
        x = self.resnet.layer1(x)
        x = self.resnet.layer2(x)
        x = self.resnet.layer3(x)
        x = self.resnet.layer4(x)
        x = self.resnet.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.resnet.fc(x)
        return self.dense_neural_network(x)


class NotebookVGG16(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vgg = torchvision.models.vgg16(weights=None)
        rgb = self.vgg.features[0]
        self.vgg.features[0] = nn.Conv2d(1, 64, 3, padding=1)
        self.vgg.features[0].weight = nn.Parameter(rgb.weight.mean(dim=1, keepdim=True))
        self.feature_extractor = self.vgg.features[:30]
        self.max_pool = self.vgg.features[30]
        self.classifier = self.vgg.classifier
        self.dense_neural_network = nn.Sequential(nn.Linear(1000, 10), nn.ReLU(), nn.Dropout(0.2), nn.Linear(10, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.max_pool(self.feature_extractor(x))
        x = self.vgg.avgpool(x)
        x = self.classifier(torch.flatten(x, 1))
        return self.dense_neural_network(x)


class NotebookTinyVGG(nn.Module):
    """``CNN(input_shape=1, hidden_units=15, output_shape=2, inp_res=224)``."""

    def __init__(self, input_shape: int = 1, hidden_units: int = 15, output_shape: int = 2, inp_res: int = 224):
        super().__init__()
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(input_shape, hidden_units, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_units, hidden_units, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Conv2d(hidden_units, hidden_units, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_units, hidden_units, 3, padding=1),
            nn.ReLU(),
        )
        self.max_pool = nn.MaxPool2d(2)
        self.dense_neural_network = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(hidden_units * (inp_res // 4) ** 2, output_shape)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_neural_network(self.max_pool(self.feature_extractor(x)))


def save_seed_checkpoint(model: nn.Module, path) -> None:
    """Write the notebook's checkpoint dict exactly: model/optimizer/scheduler state, tensor loss, float acc."""
    opt = torch.optim.RAdam([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=15)
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
            "scheduler_state_dict": sched.state_dict(),
            "test_loss": torch.tensor(0.2641),
            "test_acc": 91.56,
            "epoch": 12,
            "desc": "ResNet-101 220k head, layer4 unfrozen, centre-cropped training",
        },
        path,
    )
