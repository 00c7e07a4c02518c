"""HDF5 store of the enhanced dataset: shard writer, merge/manifest, verify, torch Dataset. The only h5py user.

Usage::

    from enhancer.store import ShardWriter, merge, verify, EnhancedDataset
    with ShardWriter(out, shard_id, num_shards, fields=fields, shapes=shapes, attrs=provenance) as w:
        w.write(batch)
    merge(out)                      # after all shards: manifest.json, rejected.csv, README.md
    assert verify(out).ok
    ds = EnhancedDataset(out, fields=("enhanced", "label"))

Names load their module on first access: ``EnhancedDataset`` and ``export_imagefolder`` import torch/PIL, so writing,
merging and verifying never import torch, and reading a file name from ``layout`` imports no h5py.
"""

from __future__ import annotations

import importlib
from typing import Any

# Every public name loads its module on first access (PEP 562): importing ``enhancer.store.layout`` for a file name
# (the launching code does) must not pull in h5py, and EnhancedDataset must not pull torch into writing or merging.
_HOMES = {
    "shard_name": "layout",
    "shard_path": "layout",
    "Manifest": "manifest",
    "merge": "manifest",
    "FIELDS": "schema",
    "OPTIONAL_FIELDS": "schema",
    "REQUIRED_FIELDS": "schema",
    "SCHEMA_VERSION": "schema",
    "StoreError": "schema",
    "per_sample_shapes": "schema",
    "resolve_fields": "schema",
    "VerifyReport": "verification",
    "verify": "verification",
    "AsyncShardWriter": "writer",
    "ShardWriteError": "writer",
    "ShardWriter": "writer",
    "is_complete": "writer",
    "shard_status": "writer",
    "EnhancedDataset": "dataset",
    "export_imagefolder": "dataset",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(f"enhancer.store.{_HOMES[name]}"), name)
        globals()[name] = value  # found once; no public name is also a module's name, so nothing rebinds it
        return value
    raise AttributeError(f"module 'enhancer.store' has no attribute {name!r}")
