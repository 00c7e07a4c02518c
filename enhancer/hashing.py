"""One way to fingerprint a file, used for checkpoints, shards, lung models and the sample images."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (checkpoints and shards can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def file_sha256_in_background(path: str | os.PathLike[str]) -> Callable[[], str]:
    """Start hashing ``path`` on a thread and return the function that waits for its digest (re-raising any error).
    hashlib releases the GIL on large blocks, so a checkpoint hashes while the caller loads it: the hash leaves the
    start-up's critical path."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="sha256")
    future = pool.submit(file_sha256, path)
    pool.shutdown(wait=False)  # the thread ends with its one task
    return future.result
