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

import torch
from torch import nn

from enhancer.audit.phantoms import MARKER_MODES, Phantoms, TinyGapCNN, make_phantoms, model_input, train_tiny
from enhancer.explain.cam import CamSettings, grad_cam, upsample
from enhancer.explain.localisation import box_iou, boxes_mask, energy_inside, pointing_hit

__all__ = ["MARKER_MODES", "Phantoms", "TinyGapCNN", "make_phantoms", "measure", "model_input", "run", "train_tiny"]


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
