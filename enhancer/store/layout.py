"""Every file name of an enhanced dataset and of the enhance job's output directory, and the guard that keeps one
dataset per directory.

Usage::

    from enhancer.store import layout
    layout.shard_path("out", 3, 8)                 # out/shard-00003-of-00008.h5
    Path("out") / layout.MANIFEST                  # written last by merge: its presence means "merged"
    layout.check_output_dir(out_dir, identity)     # before a job writes a shard
    layout.read_shard_attrs(path)

An output directory ``OUT``::

    shard-00000-of-00004.h5 ...  the shards; ``shard-....h5.tmp`` while one is being written (store.writer),
                                 ``shard-....h5.lock``: the claim of the job writing it (store.claims)
    manifest.json                shards with offsets and sha256, fields, counts, provenance (store.manifest)
    rejected.csv                 the inputs that were not written, with the reason (store.manifest)
    README.md                    the dataset card (store.card)
    enhance-spec.toml            the resolved spec ``--workers`` and ``enhancer submit`` run (run.launch, run.slurm)
    logs/                        worker-K.log (``--workers``); the SLURM jobs' logs unless ``slurm.log_dir`` is set

No other module spells these names (tests/test_code_rules.py); they take them from here.

Every shard stores an ``identity`` attribute (data root, sample count, shard count, checkpoint hash, fields and
Grad-CAM/crop/enhance settings). A job whose identity differs from a shard already in the directory would mix two
datasets, so it is refused with the differing settings named.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from enhancer.store.schema import StoreError, decode_attrs

SHARD_SUFFIX = ".h5"
TMP_SUFFIX = ".tmp"  # a shard being written: renamed to its final name once complete
LOCK_SUFFIX = ".lock"  # the claim of the job writing a shard (store.claims): removed when it is done
SHARD_GLOB = f"shard-*-of-*{SHARD_SUFFIX}"
MANIFEST = "manifest.json"
REJECTED = "rejected.csv"
CARD = "README.md"
LOGS = "logs"
# Names that mean "an HDF5 file": one in an output directory that is not a shard belongs to a foreign layout.
HDF5_SUFFIXES = (SHARD_SUFFIX, ".hdf5", ".he5", SHARD_SUFFIX + TMP_SUFFIX)

_SHARD_RE = re.compile(rf"^shard-(\d{{5}})-of-(\d{{5}}){re.escape(SHARD_SUFFIX)}({re.escape(TMP_SUFFIX)})?$")


def spec_file(kind: str = "enhance") -> str:
    """The resolved job spec a launcher writes into the output directory: ``enhance-spec.toml``, ``train-spec.toml``."""
    return f"{kind}-spec.toml"


SPEC = spec_file("enhance")
# Files an enhanced dataset directory may hold besides its shards.
DATASET_FILES = frozenset({MANIFEST, REJECTED, CARD, SPEC})


def worker_log(worker: int) -> str:
    """Log file of local worker ``worker`` (``enhancer enhance --workers``), inside ``LOGS``."""
    return f"worker-{worker}.log"


def slurm_log(job: str, *, array: bool = False) -> str:
    """sbatch ``--output`` pattern of a job: ``enhance-%A_%a.out`` (array: job id, task id), ``merge-%j.out``."""
    return f"{job}-%A_%a.out" if array else f"{job}-%j.out"


def shard_name(shard_id: int, num_shards: int) -> str:
    """File name of shard ``shard_id`` of ``num_shards``: ``shard-00003-of-00008.h5``."""
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise StoreError(f"shard id {shard_id} out of range for {num_shards} shards (valid: 0..{num_shards - 1})")
    return f"shard-{shard_id:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def parse_shard_name(name: str) -> tuple[int, int, bool] | None:
    """``(shard_id, num_shards, is_tmp)`` for a shard file name, None for any other name."""
    m = _SHARD_RE.match(name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), m.group(3) is not None


def shard_path(out_dir: str | os.PathLike, shard_id: int, num_shards: int) -> Path:
    """Final path of a shard: ``out_dir/shard-00003-of-00008.h5``."""
    return Path(out_dir) / shard_name(shard_id, num_shards)


def tmp_path_for(path: Path) -> Path:
    """Where shard ``path`` is written until it is complete: ``shard-00003-of-00008.h5.tmp``."""
    return path.with_name(path.name + TMP_SUFFIX)


def lock_path_for(path: Path) -> Path:
    """The claim file of shard ``path`` while a job writes it: ``shard-00003-of-00008.h5.lock``."""
    return path.with_name(path.name + LOCK_SUFFIX)


def is_lock_name(name: str) -> bool:
    """Whether ``name`` is the claim file of a shard (``shard-....h5.lock``)."""
    if not name.endswith(LOCK_SUFFIX):
        return False
    parsed = parse_shard_name(name[: -len(LOCK_SUFFIX)])
    return parsed is not None and not parsed[2]


def is_merged(out_dir: str | os.PathLike) -> bool:
    """True when ``out_dir`` is a merged enhanced dataset (merge writes the manifest last)."""
    return (Path(out_dir) / MANIFEST).is_file()


def read_shard_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded attributes of a shard file (complete or ``.tmp``)."""
    try:
        import h5py  # here, so that the file names above load without h5py

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
        and not is_lock_name(p.name)
        and p.name not in DATASET_FILES
        and not p.name.startswith(".")
        and not p.name.endswith("." + REJECTED)
        and p.name != LOGS
    )
    if foreign:
        raise StoreError(
            f"{out_dir} holds files that are not part of an enhanced dataset ({', '.join(foreign[:5])}); "
            "choose an empty or new --out directory"
        )
    for path in sorted(out_dir.glob(SHARD_GLOB)):
        theirs = read_shard_attrs(path).get("identity")
        if theirs is None:
            raise StoreError(f"{path} was not written by this version of enhancer; choose a new --out")
        differing = sorted(k for k in set(identity) | set(theirs) if identity.get(k) != theirs.get(k))
        if differing:
            raise StoreError(
                f"{out_dir} holds another enhanced dataset ({path.name} differs in {', '.join(differing)}); "
                "choose a new --out directory, or delete the old one to replace it"
            )
