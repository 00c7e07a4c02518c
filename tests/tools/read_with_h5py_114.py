"""Read enhancer shards with a second h5py that bundles HDF5 1.14, to prove the files stay portable.

Usage (from an interpreter with ``h5py==3.14.0``, which bundles HDF5 1.14.6; numpy is its only dependency)::

    python3.11 -m venv /opt/h5py114 && /opt/h5py114/bin/pip install h5py==3.14.0
    /opt/h5py114/bin/python tests/tools/read_with_h5py_114.py out/shard-00000-of-00001.h5 [...]

Prints one JSON object: library versions and, per file, every dataset's shape, dtype and sha256 of its contents,
plus the file attributes. Exits non-zero if the bundled HDF5 is not 1.14 or any file cannot be read fully.
It deliberately imports nothing from enhancer: that interpreter has only h5py and numpy.
"""

from __future__ import annotations

import hashlib
import json
import sys

import h5py
import numpy as np


def digest(ds: h5py.Dataset) -> str:
    data = ds[()]
    if h5py.check_string_dtype(ds.dtype):
        text = "\n".join(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.ravel(data))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    if h5py.check_vlen_dtype(ds.dtype) is not None:  # e.g. JPEG files: hash each element's bytes, length first
        h = hashlib.sha256()
        for item in np.ravel(data):
            raw = np.ascontiguousarray(item).tobytes()
            h.update(len(raw).to_bytes(8, "little") + raw)
        return h.hexdigest()
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def main(paths: list[str]) -> int:
    if not h5py.version.hdf5_version.startswith("1.14."):
        print(
            f"this check needs an h5py bundling HDF5 1.14 (e.g. h5py==3.14.0), got HDF5 {h5py.version.hdf5_version}",
            file=sys.stderr,
        )
        return 2
    out = {"h5py": h5py.version.version, "hdf5": h5py.version.hdf5_version, "files": {}}
    for path in paths:
        datasets = {}

        def visit(name, obj, datasets=datasets):
            if isinstance(obj, h5py.Dataset):
                datasets[name] = {"shape": list(obj.shape), "dtype": str(obj.dtype), "sha256": digest(obj)}

        with h5py.File(path, "r") as f:
            f.visititems(visit)
            attrs = {k: plain(v) for k, v in f.attrs.items()}
        out["files"][path] = {"datasets": datasets, "attrs": attrs}
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
