"""Phantom chest X-rays with known lesions and a tiny CNN to train on them: test subjects whose right answer is known.

Usage::

    from enhancer.audit.phantoms import make_phantoms, train_tiny, model_input
    ph = make_phantoms(512, 32, marker="random", seed=0)      # images, labels, lung masks, lesion boxes, markers
    model = train_tiny(ph, epochs=8)                          # a TinyGapCNN in eval mode
    logits = model(model_input(ph.images))

Phantoms are X-ray-like images with a known lung mask (two dark ellipses with ribs inside a bright body). A
PNEUMONIA phantom has a bright opacity inside one lung (its bounding box is the "annotation"); a marker (a bright
square, like a radiographer's letter or a hospital's tag) can sit in a corner outside the body, on exactly the
PNEUMONIA images (a shortcut to learn), on a random half (no information) or nowhere. ``benchmarks/phantom_bench.py``
and the audit's acceptance tests train on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from enhancer.models.demo import SyntheticCanvas, to_model_input
from enhancer.models.zoo import preprocessing_for

MARKER_MODES = ("label", "random", "none")


@dataclass
class Phantoms:
    images: torch.Tensor  # (N, 1, S, S) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64, 1 = PNEUMONIA (opacity inside a lung)
    lungs: torch.Tensor  # (N, S, S) bool, the known lung region
    boxes: torch.Tensor  # (N, 1, 4) float32 xyxy of the opacity in pixels; NaN for NORMAL
    marker: torch.Tensor  # (N,) bool, whether the marker is drawn


def make_phantoms(n: int, size: int = 64, *, marker: str = "label", seed: int = 0) -> Phantoms:
    """``n`` phantoms, half PNEUMONIA. ``marker``: ``"label"`` on exactly the PNEUMONIA images, ``"random"`` on an
    independent half, ``"none"`` never. Deterministic for a given seed."""
    if marker not in MARKER_MODES:
        raise ValueError(f"marker={marker!r} is not valid; choose one of {', '.join(MARKER_MODES)}")
    canvas = SyntheticCanvas(size, seed)
    g, u, yy, ellipse = canvas.g, canvas.u, canvas.yy, canvas.ellipse
    labels = (torch.arange(n) % 2).long()[torch.randperm(n, generator=g)]
    body, _ = ellipse(torch.zeros(n), 0.1 + 0.05 * u(n), 0.8 + 0.05 * u(n), 1.05 + 0.05 * u(n))
    img = 0.1 + 0.6 * body
    lungs = torch.zeros(n, size, size, dtype=torch.bool)
    centres = []
    for side in (-1, 1):
        cx, cy = side * (0.36 + 0.06 * u(n)), -0.02 + 0.08 * u(n)
        rx, ry = 0.22 + 0.04 * u(n), 0.5 + 0.08 * u(n)
        soft, hard = ellipse(cx, cy, rx, ry)
        img = img - 0.4 * soft
        img = img + 0.08 * soft * (0.5 + 0.5 * torch.sin(yy * (16 + 4 * u(n)[:, None, None]) + 6 * u(n)[:, None, None]))
        lungs |= hard
        centres.append((cx, cy, rx, ry))
    # the opacity: a bright blob well inside a random lung, for PNEUMONIA only
    pick = u(n) < 0.5
    cx, cy, rx, ry = (torch.where(pick, a, b) for a, b in zip(centres[0], centres[1], strict=True))
    ox = cx + (u(n) - 0.5) * rx
    oy = cy + (u(n) - 0.5) * ry
    orx, ory = 0.12 + 0.06 * u(n), 0.16 + 0.08 * u(n)
    blob, _ = ellipse(ox, oy, orx, ory)
    sick = labels.bool()
    img = img + 0.5 * sick[:, None, None] * blob
    boxes = torch.full((n, 1, 4), math.nan)
    edges = torch.stack([ox - orx, oy - ory, ox + orx, oy + ory], 1)
    box = ((edges + 1) / 2 * size).clamp(0, size)  # linspace(-1, 1) coordinates -> pixel edges
    boxes[sick, 0] = box[sick]
    # the marker: a bright square in the top-left corner, outside the body
    if marker == "label":
        has_marker = sick.clone()
    elif marker == "random":
        has_marker = u(n) < 0.5
    else:
        has_marker = torch.zeros(n, dtype=torch.bool)
    m = max(3, size // 12)
    for i in torch.nonzero(has_marker).flatten().tolist():
        x0, y0 = 2 + int(u(1) * 3), 2 + int(u(1) * 3)
        img[i, y0 : y0 + m, x0 : x0 + m] = 0.95
    img = img + 0.03 * torch.randn(n, size, size, generator=g)
    return Phantoms(img.clamp(0, 1)[:, None], labels, lungs, boxes, has_marker)


class TinyGapCNN(nn.Module):
    """Four 3x3 convolutions (one 2x pooling) and a global-average-pooling head: the ResNets' head structure in
    miniature, with the ``features`` / ``head`` halves of the zoo models (``compute_cam(model, x, split=model)``)."""

    target_layer = "feature_extractor"

    def __init__(self, width: int = 16, num_classes: int = 2) -> None:
        super().__init__()
        conv = {"kernel_size": 3, "padding": 1}
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(1, width, **conv),
            nn.ReLU(),
            nn.Conv2d(width, width, **conv),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, **conv),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, **conv),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_extractor(x)

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.classifier(a.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def model_input(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] phantoms -> the seed's normalised 1-channel input."""
    return to_model_input(images, preprocessing_for("tinyvgg", images.shape[-1]))


def train_tiny(ph: Phantoms, *, epochs: int = 8, batch_size: int = 32, lr: float = 2e-3, seed: int = 0) -> nn.Module:
    """A ``TinyGapCNN`` trained from scratch with Adam and cross-entropy; returned in eval mode."""
    torch.manual_seed(seed)
    model = TinyGapCNN()
    x = model_input(ph.images)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), ph.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
