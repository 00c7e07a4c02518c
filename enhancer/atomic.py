"""Files that appear all at once: readers see the old version or the new one, never half a file.

Usage::

    from enhancer.atomic import atomic_path, atomic_write, move_into_place
    with atomic_write(run / "metrics.csv", newline="") as f:     # text ("w") or bytes ("wb")
        f.write(text)
    with atomic_path(run / "best.pt") as tmp:                    # for writers that want a file name (torch.save)
        torch.save(payload, tmp)
    move_into_place(staging / "a.jpeg", dest / "a.jpeg")         # a finished file into its place

The temporary is ``<name>.partial-<random>`` in the target's own directory (a rename is atomic only within one
filesystem), so two writers of one file never share a temporary. On success it is flushed, fsynced and renamed over
the target; on any exception it is removed and the old file stays as it was. The temporary is the target's name plus
one suffix without dots: ``torch.save`` names the records inside a checkpoint after the file name less its last
suffix, so they are named after the target (``best.pt/data.pkl``) and the bytes do not depend on the random part.

The only module that renames files: everything else goes through these three functions (tests/test_code_rules.py).
Stdlib only, so every package (models, data, store, train, run) may import it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

PARTIAL = ".partial-"


def move_into_place(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, sync_dir: bool = False) -> None:
    """fsync ``src``, rename it to ``dst`` (replacing it) and, with ``sync_dir``, fsync ``dst``'s directory so the
    rename itself survives a crash. Both must be on one filesystem."""
    _fsync(src)
    os.replace(src, dst)
    if sync_dir:
        _fsync(Path(dst).parent, directory=True)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` for the caller to write; moved into place when the block ends without an
    exception, removed (``path`` untouched) when it raises."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}{PARTIAL}{secrets.token_hex(4)}")
    try:
        yield tmp
        move_into_place(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = None, newline: str | None = None
) -> Iterator[IO[Any]]:
    """``open(path, mode)`` that replaces ``path`` only once the block has finished: ``mode`` is ``"w"`` (text,
    with ``encoding`` and ``newline`` as for ``open``) or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode.replace("w", "x"), encoding=encoding, newline=newline) as f:
        yield f


def _fsync(path: str | os.PathLike[str], directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
