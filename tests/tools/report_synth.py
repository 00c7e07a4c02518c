"""A synthetic enhanced dataset for the report tests, written through the product's writer and merge: any number of
samples, small images, every localisation metric (with undefined values), rejected rows.

Usage: ``write_report_dataset(tmp_path / "synth", n=2000, rejected=7)`` (fast: ~2 s for 2,000 samples);
``make_audit_dir(tmp_path / "audit")`` lays out an ``enhancer audit`` output with the keys its issue fixes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from enhancer.store import ShardWriter, merge, per_sample_shapes, resolve_fields
from enhancer.store.schema import BOX_FIELDS, LUNG_FIELDS

CLASSES = ["COVID", "NORMAL", "PNEUMONIA"]
SIZE = 32
FIELDS = resolve_fields(["all", *LUNG_FIELDS, *BOX_FIELDS])


def _blob(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, SIZE, SIZE) uint8 heatmaps: one Gaussian blob each, peak 255."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cy, cx = rng.uniform(4, SIZE - 4, size=(2, n, 1, 1))
    heat = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 6.0**2))
    return (255 * heat / heat.max(axis=(1, 2), keepdims=True)).astype(np.uint8)


def make_samples(indices: np.ndarray, seed: int) -> dict[str, object]:
    rng = np.random.default_rng([seed, int(indices[0]) if len(indices) else 0])
    n, c = len(indices), len(CLASSES)
    label = rng.integers(0, c, size=n)
    logits = rng.normal(size=(n, c)) + 2.5 * np.eye(c)[label] * (rng.random(n) < 0.8)[:, None]
    prob = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    orig = rng.integers(200, 600, size=(n, 2))
    x0 = rng.integers(0, orig[:, 1] // 2)
    y0 = rng.integers(0, orig[:, 0] // 2)
    box = np.stack([x0, y0, x0 + rng.integers(20, orig[:, 1] // 2), y0 + rng.integers(20, orig[:, 0] // 2)], 1)
    image = rng.integers(0, 256, size=(n, 1, SIZE, SIZE), dtype=np.uint8)
    metric = rng.random((3, n)).astype(np.float32)
    metric[:, rng.random(n) < 0.1] = np.nan  # undefined (no lung found, no box)
    return {
        "index": indices,
        "label": label,
        "pred": prob.argmax(1),
        "prob": prob,
        "path": [f"{CLASSES[k]}/img_{i:05d}.png" for k, i in zip(label.tolist(), indices.tolist(), strict=True)],
        "orig_size": orig,
        "image": image,
        "cam": rng.random((n, 2, 2)),
        "heatmap": _blob(rng, n),
        "crop": image,
        "crop_box": box,
        "enhanced": image // 2,
        "lung_mask": np.ones((n, SIZE, SIZE), np.uint8),
        "lung_energy": metric[0],
        "lung_hit": np.where(np.isnan(metric[0]), -1, metric[0] > 0.3),
        "box_energy": metric[1],
        "box_hit": np.where(np.isnan(metric[1]), -1, metric[1] > 0.5),
        "box_iou": metric[2],
    }


def write_report_dataset(out: Path, n: int = 2000, *, rejected: int = 7, num_shards: int = 2, seed: int = 0) -> Path:
    """``n`` written samples over ``num_shards`` shards plus ``rejected`` rejected inputs, merged."""
    shapes = per_sample_shapes(FIELDS, H=SIZE, W=SIZE, h=2, w=2, Hc=SIZE, Wc=SIZE, C=len(CLASSES))
    total = n + rejected
    bad = set(np.linspace(0, total - 1, rejected).astype(int).tolist()) if rejected else set()
    good = np.array([i for i in range(total) if i not in bad], dtype=np.int64)
    for shard, part in enumerate(np.array_split(good, num_shards)):
        attrs = {"class_names": CLASSES, "architecture": "synthetic"}
        with ShardWriter(out, shard, num_shards, fields=FIELDS, shapes=shapes, attrs=attrs) as w:
            for start in range(0, len(part), 500):
                w.write(make_samples(part[start : start + 500], seed))
            mine = [i for i in sorted(bad) if i % num_shards == shard]
            w.add_rejected(
                [(i, f"NORMAL/bad,{i}.png", "decode", f'cannot decode "bad,{i}.png" <truncated>') for i in mine]
            )
    merge(out, expected_indices=range(total))
    return out


def make_audit_dir(path: Path) -> Path:
    """An audit directory laid out as issue 17 fixes it (audit.json keys and PNGs)."""
    path.mkdir(parents=True)
    audit = {
        "verdict": "fail",
        "randomisation": {
            "verdict": "pass",
            "stages": [
                {"stage": "fc", "ssim": 0.41, "baseline_ssim_hi": 0.3, "spearman": 0.5, "verdict": "fail"},
                {"stage": "layer4", "ssim": 0.12, "baseline_ssim_hi": 0.3, "verdict": "pass"},
            ],
        },
        "deletion": {"auc": 0.2125, "baseline": {"auc": 0.31}},
        "insertion": {"auc": 0.6631},
        "road": {"most_relevant_first": {"10": 0.05, "50": 0.2}, "verdict": "pass"},
        "localisation": {
            "miou": {"value": 0.3412, "ci_low": 0.3011, "ci_high": 0.3798},
            "hit_rate": {"value": 0.81, "ci_low": 0.7, "ci_high": 0.9},
        },
        "repeatability": {"ssim": 0.93},
    }
    (path / "audit.json").write_text(json.dumps(audit))
    Image.new("RGB", (40, 20), "red").save(path / "deletion_curves.png")
    (path / "randomisation").mkdir()
    Image.new("RGB", (40, 20), "blue").save(path / "randomisation" / "stage-fc.png")
    return path


ML_CLASSES = ["Atelectasis", "Effusion", "Mass", "Nodule"]  # Nodule never gets a map
ML_FIELDS = resolve_fields(["all", "targets", "explained", *BOX_FIELDS])
ML_PER_CLASS = ("cam", "heatmap", *BOX_FIELDS)


def make_class_samples(indices: np.ndarray, seed: int) -> dict[str, object]:
    """Multi-label samples with 2 map slots: the classes their targets name among the first three (in id order,
    then -1), the most probable of those three where none is positive; box metrics per map, NaN / -1 in empty
    slots and where undefined; heatmap of (sample, slot) a blob."""
    rng = np.random.default_rng([seed, int(indices[0]) if len(indices) else 0])
    n, c = len(indices), len(ML_CLASSES)
    targets = (rng.random((n, c)) < 0.4).astype(np.int8)
    targets[:, 3] = 0
    targets[rng.random(n) < 0.1, 0] = -1  # uncertain
    prob = rng.random((n, c)).astype(np.float32)
    explained = np.full((n, 2), -1, np.int16)
    for i in range(n):
        chosen = [k for k in range(3) if targets[i, k] == 1][:2] or [int(prob[i, :3].argmax())]
        explained[i, : len(chosen)] = chosen
    filled = explained >= 0
    metric = rng.random((3, n, 2)).astype(np.float32)
    metric[:, (rng.random((n, 2)) < 0.2) | ~filled] = np.nan
    image = rng.integers(0, 256, size=(n, 1, SIZE, SIZE), dtype=np.uint8)
    heat = _blob(rng, 2 * n).reshape(n, 2, SIZE, SIZE) * filled[:, :, None, None]
    return {
        "index": indices,
        "label": np.full(n, -1),
        "pred": prob.argmax(1),
        "prob": prob,
        "path": [f"images/img_{i:05d}.png" for i in indices.tolist()],
        "orig_size": np.full((n, 2), 64),
        "image": image,
        "cam": rng.random((n, 2, 2, 2)) * filled[:, :, None, None],
        "heatmap": heat.astype(np.uint8),
        "crop": image,
        "crop_box": np.tile(np.array([4, 4, 60, 60]), (n, 1)),
        "enhanced": image // 2,
        "targets": targets,
        "explained": explained,
        "box_energy": metric[0],
        "box_hit": np.where(np.isnan(metric[0]), -1, metric[0] > 0.5).astype(np.int8),
        "box_iou": metric[2],
    }


def write_per_class_dataset(out: Path, n: int = 60, seed: int = 0) -> Path:
    """A merged dataset of maps per class (multi-label, 2 slots, box metrics per map) of ``n`` samples, 2 shards."""
    shapes = per_sample_shapes(
        ML_FIELDS, per_class=ML_PER_CLASS, H=SIZE, W=SIZE, h=2, w=2, Hc=SIZE, Wc=SIZE, C=len(ML_CLASSES), K=2
    )
    attrs = {"class_names": ML_CLASSES, "architecture": "synthetic", "activation": "sigmoid"}
    for shard, part in enumerate(np.array_split(np.arange(n), 2)):
        with ShardWriter(out, shard, 2, fields=ML_FIELDS, shapes=shapes, attrs=attrs, per_class=ML_PER_CLASS) as w:
            w.write(make_class_samples(part, seed))
    merge(out, expected_indices=range(n))
    return out
