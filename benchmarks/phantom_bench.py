"""Localisation on phantoms: do the tool's metrics tell a model that looks at the lungs from one that looks at a
spurious marker outside them?

Usage::

    python benchmarks/phantom_bench.py                      # 512 training / 256 test phantoms, 32 px, 8 epochs, CPU
    python benchmarks/phantom_bench.py --n-train 1024 --epochs 10 --size 64 --seed 1

Phantoms are X-ray-like images with a known lung mask (two dark ellipses with ribs inside a bright body). A
PNEUMONIA phantom has a bright opacity inside one lung (its bounding box is the "annotation"); a marker (a bright
square, like a radiographer's letter or a hospital's tag) sits in a corner outside the body. Two tiny CNNs (four
convolutions and a global-average-pooling head: the ResNets' head structure in miniature) train with a plain torch
loop on the same images except for the marker:

- "marker": the marker is on exactly the PNEUMONIA training images: a shortcut outside the lungs;
- "opacity": the marker is on a random half of the images, independent of the label: only the opacity predicts.

Both are then measured with the tool's own Grad-CAM (``enhancer.explain.cam``, seed settings) and metrics
(``enhancer.explain.localisation``) on held-out phantoms where the marker correlates with the label as in the first
training set (accuracy alone cannot tell the two models apart there), and on phantoms with a random marker (which
exposes the shortcut through accuracy too). Printed: accuracy, lung energy / pointing hits, box energy / hits / IoU
per model.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from enhancer.explain.cam import CamSettings, grad_cam, upsample
from enhancer.explain.localisation import box_iou, boxes_mask, energy_inside, pointing_hit
from enhancer.models.demo import to_model_input
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
    g = torch.Generator().manual_seed(seed)

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    yy, xx = yy[None], xx[None]

    def ellipse(cx: torch.Tensor, cy: torch.Tensor, rx: torch.Tensor, ry: torch.Tensor) -> torch.Tensor:
        """Soft ellipse (n, S, S): ~1 inside, ~0 outside, plus the hard inside test ``d < 1``."""
        d = ((xx - cx[:, None, None]) / rx[:, None, None]) ** 2 + ((yy - cy[:, None, None]) / ry[:, None, None]) ** 2
        return torch.sigmoid((1 - d) * 8), d < 1

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
    miniature, with the ``features`` / ``head`` halves ``enhancer.explain.cam.grad_cam`` needs."""

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


def _mean(v: torch.Tensor) -> float:
    """Mean over defined values (float: finite, int: not -1); NaN when none is defined."""
    ok = v != -1 if not v.is_floating_point() else torch.isfinite(v)
    return float(v[ok].float().mean()) if bool(ok.any()) else math.nan


def measure(model: nn.Module, ph: Phantoms, *, batch_size: int = 128) -> dict[str, float]:
    """Accuracy and the tool's localisation metrics (seed Grad-CAM of the predicted class) on ``ph``. Localisation is
    averaged over the PNEUMONIA phantoms (the only ones with something in the lungs to find)."""
    size = ph.images.shape[-1]
    x = model_input(ph.images)
    rows: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("pred", "lung_energy", "lung_hit", "box_energy", "box_hit", "box_iou")
    }
    for i in range(0, len(x), batch_size):
        sl = slice(i, i + batch_size)
        r = grad_cam(model, x[sl], CamSettings())
        heat = upsample(r.cam, (size, size))
        gt = boxes_mask(ph.boxes[sl], torch.full((len(heat), 2), size), (size, size))
        rows["pred"].append(r.pred)
        rows["lung_energy"].append(energy_inside(heat, ph.lungs[sl]))
        rows["lung_hit"].append(pointing_hit(heat, ph.lungs[sl]))
        rows["box_energy"].append(energy_inside(heat, gt))
        rows["box_hit"].append(pointing_hit(heat, gt))
        rows["box_iou"].append(box_iou(heat, gt))
    cat = {k: torch.cat(v) for k, v in rows.items()}
    sick = ph.labels == 1
    out = {"accuracy": float((cat["pred"] == ph.labels).float().mean())}
    for k in ("lung_energy", "lung_hit", "box_energy", "box_hit", "box_iou"):
        out[k] = _mean(cat[k][sick])
    out["lung_area"] = float(ph.lungs.float().mean())  # what a uniform map would score as lung energy
    return out


def run(
    *, n_train: int = 512, n_test: int = 256, size: int = 32, epochs: int = 8, seed: int = 0
) -> dict[str, dict[str, dict[str, float]]]:
    """Train both models and measure them on both test sets: {model: {test set: metrics}}."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    tests = {
        "marker = label": make_phantoms(n_test, size, marker="label", seed=seed + 100),
        "marker random": make_phantoms(n_test, size, marker="random", seed=seed + 200),
    }
    for name, mode in (("marker", "label"), ("opacity", "random")):
        model = train_tiny(make_phantoms(n_train, size, marker=mode, seed=seed), epochs=epochs, seed=seed)
        results[name] = {t: measure(model, ph) for t, ph in tests.items()}
    return results


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    head = ["trained on", "test phantoms", "acc %", "lung energy", "lung hit %", "box energy", "box hit %", "box IoU"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for model, by_test in results.items():
        label = "marker = label (shortcut)" if model == "marker" else "marker random (opacity only)"
        for test, m in by_test.items():
            lines.append(
                f"| {label} | {test} | {100 * m['accuracy']:.1f} | {m['lung_energy']:.3f} | "
                f"{100 * m['lung_hit']:.1f} | {m['box_energy']:.3f} | {100 * m['box_hit']:.1f} | "
                f"{m['box_iou']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    from common import machine  # benchmarks/ is on sys.path when run as a script

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=512, help="training phantoms per model (default 512)")
    parser.add_argument("--n-test", type=int, default=256, help="phantoms per test set (default 256)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels, even (default 32)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of phantoms and training (default 0)")
    args = parser.parse_args()
    print(machine())
    started = time.perf_counter()
    results = run(n_train=args.n_train, n_test=args.n_test, size=args.size, epochs=args.epochs, seed=args.seed)
    area = next(iter(next(iter(results.values())).values()))["lung_area"]
    print(
        f"phantoms {args.size}x{args.size}, {args.n_train} training / {args.n_test} test per set, TinyGapCNN, "
        f"{args.epochs} epochs, seed {args.seed}; {time.perf_counter() - started:.1f} s; lung area {area:.3f} of "
        "the image (a uniform map's lung energy); localisation over the PNEUMONIA test phantoms"
    )
    print(table(results))


if __name__ == "__main__":
    main()
