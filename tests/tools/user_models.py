"""A user's own model builder, as ``--model tests.tools.user_models:tiny_net`` names it: a 1-channel CNN that no
registry family knows, so its target layer comes from the generic rule."""

from __future__ import annotations

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.body(x)).flatten(1))


def tiny_net(num_classes: int = 2) -> nn.Module:
    return TinyNet(num_classes)


NOT_A_BUILDER = 3
