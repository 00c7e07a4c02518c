"""The commands that rewrite damaged shards, as ``enhancer verify --repair-list`` prints them.

Usage::

    lines = repair_commands("out", manifest, [0, 3])
    # rm -f out/shard-00000-of-00004.h5 out/shard-00003-of-00004.h5 out/manifest.json
    # enhancer enhance --data /data/val --checkpoint /m/model.pth --out out --num-shards 4 --shard-id 0 --set ...
    # ...
    # enhancer merge out

The enhance command of a shard is rebuilt from the spec the shard recorded when it was written (the manifest keeps it
per shard): the same data, checkpoint and settings, so the rewritten shard joins the others (the output directory
refuses a shard of different settings). A complete shard is skipped on a rerun, so the damaged files go first, and
the manifest with them (merge writes it again).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from enhancer.specs import EnhanceSpec, to_plain, toml_value
from enhancer.store.layout import MANIFEST, shard_path

_OWN_OPTIONS = ("data", "checkpoint", "out", "shard_id", "num_shards")


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def enhance_command(
    spec: Mapping[str, Any], out_dir: str | Path, shard_id: int, num_shards: int, *, data: str, checkpoint: str
) -> str:
    """``enhancer enhance ...`` writing shard ``shard_id`` of ``data`` with ``checkpoint`` and the other settings of
    ``spec`` (a recorded spec dict); settings equal to today's defaults are left out, unknown ones dropped."""
    words = ["enhancer", "enhance", "--data", data, "--checkpoint", checkpoint, "--out", str(out_dir)]
    words += ["--num-shards", str(num_shards), "--shard-id", str(shard_id)]
    plain = to_plain(EnhanceSpec())
    defaults = _flat(plain)
    tables = {k for k, v in plain.items() if v == {}}  # free-form tables, e.g. [enhance.codec]
    for key, value in sorted(_flat(spec).items()):
        known = key in defaults or key.split(".")[0] in tables
        if known and key not in _OWN_OPTIONS and value is not None and value != defaults.get(key):
            words += ["--set", f"{key}={toml_value(value)}"]
    return shlex.join(words)


def repair_commands(out_dir: str | Path, manifest: Any, shard_ids: Iterable[int]) -> list[str]:
    """Shell lines that remove the damaged shards and the manifest, rewrite the shards and merge again."""
    ids = sorted(set(shard_ids))
    if not ids:
        return []
    n = manifest.num_shards
    removed = [str(shard_path(out_dir, i, n)) for i in ids] + [str(Path(out_dir) / MANIFEST)]
    lines = [shlex.join(["rm", "-f", *removed])]
    given = manifest.provenance
    for i in ids:
        entry = next((s for s in manifest.shards if s.shard_id == i), None)
        spec = (entry.attrs.get("spec") if entry is not None else None) or given.get("spec") or {}
        data = str(given.get("data_root") or spec.get("data") or "DATA")
        checkpoint = str(given.get("checkpoint") or spec.get("checkpoint") or "CHECKPOINT")
        lines.append(enhance_command(spec, out_dir, i, n, data=data, checkpoint=checkpoint))
    lines.append(shlex.join(["enhancer", "merge", str(out_dir)]))
    return lines
