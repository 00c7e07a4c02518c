"""Compare two enhanced-dataset directories shard by shard: every dataset's bytes, dtype, shape, chunking, filters
and attributes, and every file attribute, except those that record when, where and from which code revision a
shard was written. Exit status 0 when they are equal, 1 with the differences listed.

Usage::

    python scripts/compare_datasets.py OLD_DIR NEW_DIR                  # the output of two versions, same input
    python scripts/compare_datasets.py OLD_DIR NEW_DIR --ignore-spec-keys labels,head   # spec keys a version added

``--ignore-spec-keys``: keys of the ``spec`` attribute (the resolved job spec) that only NEW_DIR has, i.e. settings
a newer version added; they are ignored when they are absent from OLD_DIR's spec, everything else is compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np

VOLATILE_ATTRS = frozenset({"created", "host", "code_revision", "package_version", "slurm"})


def _attrs(obj: h5py.HLObject) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in obj.attrs.items()}


def _spec(value: Any, drop: set[str]) -> Any:
    spec = json.loads(value)
    return {k: v for k, v in spec.items() if k not in drop}


def compare_attrs(where: str, a: dict[str, Any], b: dict[str, Any], new_spec_keys: set[str]) -> list[str]:
    """Differences between two attribute sets, volatile keys left out (``spec``: keys new in ``b`` too)."""
    out = []
    for key in sorted((set(a) | set(b)) - VOLATILE_ATTRS):
        if key not in a or key not in b:
            out.append(f"{where}: attribute {key!r} only in {'new' if key in b else 'old'}")
            continue
        va, vb = a[key], b[key]
        if key == "spec":
            added = set(json.loads(vb)) - set(json.loads(va))
            unexpected = added - new_spec_keys
            if unexpected:
                out.append(f"{where}: spec has new keys {sorted(unexpected)} (not in --ignore-spec-keys)")
            va, vb = _spec(va, set()), _spec(vb, added & new_spec_keys)
        if va != vb:
            out.append(f"{where}: attribute {key!r} differs: {str(va)[:200]} != {str(vb)[:200]}")
    return out


def compare_datasets(where: str, a: h5py.Dataset, b: h5py.Dataset) -> list[str]:
    """Layout and every stored byte of one HDF5 dataset."""
    layout = ("shape", "dtype", "chunks", "compression", "compression_opts", "shuffle", "maxshape")
    out = [f"{where}: {k} {getattr(a, k)} != {getattr(b, k)}" for k in layout if getattr(a, k) != getattr(b, k)]
    if out:
        return out
    if a.chunks is not None and a.compression is not None and len(a):
        # compressed chunks as written (direct chunk reads): the stored bytes, not only what they decode to
        for i in range(a.id.get_num_chunks()):
            info = a.id.get_chunk_info(i)
            raw_a = a.id.read_direct_chunk(info.chunk_offset)
            raw_b = b.id.read_direct_chunk(info.chunk_offset)
            if raw_a != raw_b:
                return [f"{where}: stored chunk {info.chunk_offset} differs"]
        return []
    va, vb = a[()], b[()]
    equal = (
        all(np.array_equal(x, y) for x, y in zip(va, vb, strict=True))
        if va.dtype == object
        else va.tobytes() == vb.tobytes()
    )
    return [] if equal else [f"{where}: values differ"]


def compare_shard(path_a: Path, path_b: Path, new_spec_keys: set[str]) -> list[str]:
    problems: list[str] = []
    with h5py.File(path_a, "r") as fa, h5py.File(path_b, "r") as fb:
        problems += compare_attrs(path_a.name, _attrs(fa), _attrs(fb), new_spec_keys)
        names_a, names_b = set(), set()
        fa.visit(names_a.add)
        fb.visit(names_b.add)
        for name in sorted(names_a ^ names_b):
            problems.append(f"{path_a.name}: {name} only in {'new' if name in names_b else 'old'}")
        for name in sorted(names_a & names_b):
            oa, ob = fa[name], fb[name]
            where = f"{path_a.name}:{name}"
            problems += compare_attrs(where, _attrs(oa), _attrs(ob), new_spec_keys)
            if isinstance(oa, h5py.Dataset):
                problems += compare_datasets(where, oa, ob)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--ignore-spec-keys", default="", help="comma-separated spec keys only the new version has")
    args = parser.parse_args(argv)
    new_keys = {k.strip() for k in args.ignore_spec_keys.split(",") if k.strip()}
    shards_a = sorted(p.name for p in args.old.glob("shard-*.h5"))
    shards_b = sorted(p.name for p in args.new.glob("shard-*.h5"))
    if not shards_a or shards_a != shards_b:
        print(f"shard files differ: {shards_a} vs {shards_b}")
        return 1
    problems = [p for name in shards_a for p in compare_shard(args.old / name, args.new / name, new_keys)]
    for p in problems:
        print(p)
    print(f"{len(shards_a)} shard(s) compared: {'equal' if not problems else f'{len(problems)} difference(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
