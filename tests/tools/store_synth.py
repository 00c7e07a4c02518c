"""Synthetic, schema-valid batches for the store tests (tiny sizes, no model involved).

Usage: ``batch = make_batch(range(0, 5), FIELDS_ALL, SIZES, seed=0)``; ``write_dataset(tmp_path, 3, 10)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from enhancer.store import FIELDS, ShardWriter, per_sample_shapes, resolve_fields

SIZES = {"H": 8, "W": 8, "h": 2, "w": 2, "Hc": 4, "Wc": 6, "C": 3}
CLASS_NAMES = ["COVID", "NORMAL", "PNEUMONIA"]
FIELDS_ALL = resolve_fields("all")
SHAPES_ALL = per_sample_shapes(FIELDS_ALL, **SIZES)


def make_batch(indices: Iterable[int], fields: Sequence[str] = FIELDS_ALL, seed: int = 0) -> dict[str, Any]:
    """A valid batch for ``indices``: probabilities sum to 1, pred = argmax, boxes inside the original size."""
    idx = np.asarray(list(indices), dtype=np.int64)
    rows = [_sample(int(i), seed) for i in idx.tolist()]
    full: dict[str, Any] = {}
    for name in FIELDS_ALL:
        if name == "path":
            full[name] = [r[name] for r in rows]
        else:
            dtype = np.dtype(FIELDS[name].dtype)
            full[name] = np.array([r[name] for r in rows], dtype=dtype).reshape(len(rows), *SHAPES_ALL[name])
    return {k: full[k] for k in fields}


def _sample(i: int, seed: int) -> dict[str, Any]:
    # One generator per sample index: a sample's content does not depend on how it was batched.
    rng = np.random.default_rng([seed, i])
    s = SIZES
    logits = rng.normal(size=s["C"])
    prob = (np.exp(logits) / np.exp(logits).sum()).astype(np.float32)
    x0, y0 = rng.integers(0, 5, size=2)
    return {
        "index": i,
        "label": i % s["C"],
        "pred": int(prob.argmax()),
        "prob": prob,
        "path": f"{CLASS_NAMES[i % s['C']]}/img_{i:04d}.png",
        "orig_size": rng.integers(20, 40, size=2),
        "image": rng.integers(0, 256, size=(1, s["H"], s["W"])),
        "cam": rng.random(size=(s["h"], s["w"])),
        "heatmap": rng.integers(0, 256, size=(s["H"], s["W"])),
        "crop": rng.integers(0, 256, size=(1, s["Hc"], s["Wc"])),
        "crop_box": [x0, y0, x0 + rng.integers(1, 15), y0 + rng.integers(1, 15)],
        "enhanced": rng.integers(0, 256, size=(1, s["H"], s["W"])),
    }


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
