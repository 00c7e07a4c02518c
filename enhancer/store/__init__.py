"""HDF5 store of the enhanced dataset: shard writer, merge/manifest, verify, torch Dataset. The only h5py user.

Usage::

    from enhancer.store import ShardWriter, merge, verify, EnhancedDataset
    with ShardWriter(out, shard_id, num_shards, fields=fields, shapes=shapes, attrs=provenance) as w:
        w.write(batch)
    merge(out)                      # after all shards: manifest.json, rejected.csv, README.md
    assert verify(out).ok
    ds = EnhancedDataset(out, fields=("enhanced", "label"))

``EnhancedDataset`` and ``export_imagefolder`` import torch/PIL, so they load on first access: writing, merging
and verifying never import torch.
"""

from __future__ import annotations

from typing import Any

from enhancer.store.layout import shard_name, shard_path
from enhancer.store.manifest import Manifest, merge
from enhancer.store.schema import (
    FIELDS,
    OPTIONAL_FIELDS,
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
    StoreError,
    per_sample_shapes,
    resolve_fields,
)
from enhancer.store.verify import VerifyReport, verify
from enhancer.store.writer import AsyncShardWriter, ShardWriteError, ShardWriter, is_complete, shard_status

_LAZY = {"EnhancedDataset", "export_imagefolder"}

__all__ = [
    "FIELDS",
    "OPTIONAL_FIELDS",
    "REQUIRED_FIELDS",
    "SCHEMA_VERSION",
    "AsyncShardWriter",
    "EnhancedDataset",
    "Manifest",
    "ShardWriteError",
    "ShardWriter",
    "StoreError",
    "VerifyReport",
    "export_imagefolder",
    "is_complete",
    "merge",
    "per_sample_shapes",
    "resolve_fields",
    "shard_name",
    "shard_path",
    "shard_status",
    "verify",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from enhancer.store import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'enhancer.store' has no attribute {name!r}")
