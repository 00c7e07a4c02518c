"""Synthetic, schema-valid batches for the store tests (tiny sizes, no model involved).

Usage: ``batch = make_batch(range(0, 5), FIELDS_ALL, SIZES, seed=0)``; ``write_dataset(tmp_path, 3, 10)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from enhancer.store import ShardWriter, per_sample_shapes, resolve_fields

SIZES = {"H": 8, "W": 8, "h": 2, "w": 2, "Hc": 4, "Wc": 6, "C": 3}
CLASS_NAMES = ["COVID", "NORMAL", "PNEUMONIA"]
FIELDS_ALL = resolve_fields("all")
SHAPES_ALL = per_sample_shapes(FIELDS_ALL, **SIZES)


def make_batch(indices: Iterable[int], fields: Sequence[str] = FIELDS_ALL, seed: int = 0) -> dict[str, Any]:
    """A valid batch for ``indices``: probabilities sum to 1, pred = argmax, boxes inside the original size."""
    idx = np.asarray(list(indices), dtype=np.int64)
    n = len(idx)
    rng = np.random.default_rng(seed + (int(idx[0]) if n else 0))
    s = SIZES
    logits = rng.normal(size=(n, s["C"])).astype(np.float32)
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    hw = rng.integers(20, 40, size=(n, 2), dtype=np.int32)
    x0 = rng.integers(0, 5, size=n)
    y0 = rng.integers(0, 5, size=n)
    box = np.stack([x0, y0, x0 + rng.integers(1, 15, n), y0 + rng.integers(1, 15, n)], axis=1).astype(np.int32)
    full = {
        "index": idx,
        "label": (idx % s["C"]).astype(np.int16),
        "pred": prob.argmax(axis=1).astype(np.int16),
        "prob": prob.astype(np.float32),
        "path": [f"{CLASS_NAMES[i % s['C']]}/img_{i:04d}.png" for i in idx.tolist()],
        "orig_size": hw,
        "image": rng.integers(0, 256, size=(n, 1, s["H"], s["W"]), dtype=np.uint8),
        "cam": rng.random(size=(n, s["h"], s["w"]), dtype=np.float32),
        "heatmap": rng.integers(0, 256, size=(n, s["H"], s["W"]), dtype=np.uint8),
        "crop": rng.integers(0, 256, size=(n, 1, s["Hc"], s["Wc"]), dtype=np.uint8),
        "crop_box": box,
        "enhanced": rng.integers(0, 256, size=(n, 1, s["H"], s["W"]), dtype=np.uint8),
    }
    return {k: full[k] for k in fields}


def write_shard(
    out: Path,
    shard_id: int,
    num_shards: int,
    indices: Sequence[int],
    rejected: Sequence[int] = (),
    fields: Sequence[str] = FIELDS_ALL,
    batch_size: int = 4,
    **kwargs: Any,
) -> Path:
    attrs = kwargs.pop("attrs", {"class_names": CLASS_NAMES, "architecture": "resnet101", "slurm_task": shard_id})
    shapes = {k: v for k, v in SHAPES_ALL.items() if k in fields}
    with ShardWriter(out, shard_id, num_shards, fields=fields, shapes=shapes, attrs=attrs, **kwargs) as w:
        for i in range(0, len(indices), batch_size):
            w.write(make_batch(indices[i : i + batch_size], fields))
        w.add_rejected([(r, f"NORMAL/bad_{r}.png", "decode", f"cannot decode bad_{r}.png") for r in rejected])
    return w.path


def write_dataset(out: Path, num_shards: int = 3, n: int = 10, rejected: Sequence[int] = (3, 7)) -> list[int]:
    """Round-robin shards over indices 0..n-1 (``rejected`` go to the rejected list); returns all indices."""
    for k in range(num_shards):
        mine = [i for i in range(n) if i % num_shards == k]
        write_shard(out, k, num_shards, [i for i in mine if i not in rejected], [i for i in mine if i in rejected])
    return list(range(n))
