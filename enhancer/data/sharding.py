"""Deterministic sharding of a sample list into contiguous blocks.

Usage::

    from enhancer.data import shard
    mine = shard(samples, shard_id=3, num_shards=8)   # e.g. shard_id from a SLURM array index

Shard ``k`` of ``n`` gets the contiguous block ``samples[k * N // n : (k + 1) * N // n]``: blocks are disjoint,
together cover every sample exactly once, differ in size by at most one, and keep the scan order (so each HDF5
shard holds a contiguous index range). With more shards than samples some shards are simply empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from enhancer.data.errors import DataError

T = TypeVar("T")


def shard_bounds(n: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """``[start, stop)`` of shard ``shard_id`` of ``num_shards`` over ``n`` items."""
    if num_shards < 1:
        raise DataError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard_id < num_shards:
        raise DataError(f"shard_id must be in [0, {num_shards - 1}] for num_shards={num_shards}, got {shard_id}")
    return shard_id * n // num_shards, (shard_id + 1) * n // num_shards


def shard(samples: Sequence[T], shard_id: int, num_shards: int) -> list[T]:
    """The contiguous block of ``samples`` that shard ``shard_id`` of ``num_shards`` owns."""
    start, stop = shard_bounds(len(samples), shard_id, num_shards)
    return list(samples[start:stop])
