"""Guarding an output directory: it may hold only one enhanced dataset, made with one set of settings.

Usage: ``check_output_dir(out_dir, identity)`` before a job writes a shard; ``read_shard_attrs(path)``.

Every shard stores an ``identity`` attribute (data root, sample count, shard count, checkpoint hash, fields and
Grad-CAM/crop/enhance settings). A job whose identity differs from a shard already in the directory would mix two
datasets, so it is refused with the differing settings named.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py

from enhancer.store.schema import StoreError, decode_attrs, parse_shard_name

# Files an enhanced dataset directory may hold besides its shards.
DATASET_FILES = {"manifest.json", "rejected.csv", "README.md", "enhance-spec.toml"}


def read_shard_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded attributes of a shard file (complete or ``.tmp``)."""
    try:
        with h5py.File(path, "r") as f:
            return decode_attrs(f.attrs)
    except OSError as exc:
        raise StoreError(f"{path}: cannot be read as an HDF5 shard ({exc}); delete it and rerun its shard") from None


def check_output_dir(out_dir: str | os.PathLike[str], identity: dict[str, Any]) -> None:
    """Create ``out_dir`` if needed; refuse it when it holds foreign files or another dataset's shards."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise StoreError(f"{out_dir} exists and is not a directory; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    foreign = sorted(
        p.name
        for p in out_dir.iterdir()
        if parse_shard_name(p.name) is None
        and p.name not in DATASET_FILES
        and not p.name.startswith(".")
        and not p.name.endswith(".rejected.csv")
        and p.name != "logs"
    )
    if foreign:
        raise StoreError(
            f"{out_dir} holds files that are not part of an enhanced dataset ({', '.join(foreign[:5])}); "
            "choose an empty or new --out directory"
        )
    for path in sorted(out_dir.glob("shard-*-of-*.h5")):
        theirs = read_shard_attrs(path).get("identity")
        if theirs is None:
            raise StoreError(f"{path} was not written by this version of enhancer; choose a new --out")
        differing = sorted(k for k in set(identity) | set(theirs) if identity.get(k) != theirs.get(k))
        if differing:
            raise StoreError(
                f"{out_dir} holds another enhanced dataset ({path.name} differs in {', '.join(differing)}); "
                "choose a new --out directory, or delete the old one to replace it"
            )
