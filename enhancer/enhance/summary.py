"""What one enhance job reports: ``EnhanceSummary`` (written, rejected, seconds, start-up and loop time, GPU busy
share) of a shard just written or of one a previous run completed.

Usage::

    summary = run_enhance(spec)  # an EnhanceSummary
    print(summary.line())        # "shard-00000-of-00001.h5: 16 written, 0 rejected of 16 in 3.1 s (...)"
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from enhancer.enhance.batch_loop import LoopStats
from enhancer.store import AsyncShardWriter
from enhancer.store.layout import read_shard_attrs


@dataclass(frozen=True)
class EnhanceSummary:
    shard: str
    skipped: bool  # the shard was already complete
    n_in: int
    n_written: int
    n_rejected: int
    seconds: float
    loader: str
    device: str
    writer_blocked_s: float = 0.0
    startup_s: float = 0.0  # from the start to the first batch loaded: model, scan, validation, loader
    loop_s: float = 0.0  # from the first batch loaded to the last one handed to the writer
    device_busy_s: float = 0.0  # CUDA time of the batches (events around each); 0 on the CPU

    @property
    def images_per_s(self) -> float:
        return self.n_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def device_busy_fraction(self) -> float | None:
        """Share of the loop the GPU spent on batches (None off CUDA): near 1 when the host keeps up."""
        return self.device_busy_s / self.loop_s if self.device.startswith("cuda") and self.loop_s > 0 else None

    def line(self) -> str:
        if self.skipped:
            return f"{self.shard}: already complete ({self.n_written} written, {self.n_rejected} rejected), skipped"
        busy = self.device_busy_fraction
        return (
            f"{self.shard}: {self.n_written} written, {self.n_rejected} rejected of {self.n_in} in "
            f"{self.seconds:.1f} s ({self.images_per_s:.1f} images/s, {self.loader} on {self.device}"
            f"{'' if busy is None else f', GPU busy {busy:.0%}'}; start-up {self.startup_s:.1f} s; "
            f"waited {self.writer_blocked_s:.1f} s for the writer)"
        )


def job_summary(
    final: Path,
    n_in: int,
    writer: AsyncShardWriter,
    n_rejected: int,
    loader: str,
    device: str,
    started: float,
    stats: LoopStats,
) -> EnhanceSummary:
    """The summary of the shard just written, its start-up and loop times and device time from ``stats``."""
    ended = time.perf_counter()
    first = stats.first_at if stats.first_at is not None else ended
    return EnhanceSummary(
        str(final),
        False,
        n_in,
        writer.n_samples,
        n_rejected,
        ended - started,
        loader,
        device,
        writer.blocked_s,
        startup_s=first - started,
        loop_s=(stats.ended_at or ended) - first,
        device_busy_s=stats.device_s,
    )


def already_complete(final: Path, n_in: int, device: str) -> EnhanceSummary:
    """The summary of a shard a previous run completed (a rerun skips it)."""
    done = read_shard_attrs(final)
    n_written, n_rejected = int(done.get("n_samples", 0)), int(done.get("n_rejected", 0))
    return EnhanceSummary(str(final), True, n_in, n_written, n_rejected, 0.0, "-", device)
