"""A training run's directory: its file names and the files written after every epoch and at the end.

Usage::

    from enhancer.train import rundir
    Path(out) / rundir.BEST                                     # the result of the run
    rundir.write_epoch_files(run, history, unreadable, best)    # rank 0, after every epoch
    rundir.write_summary(run, summary)                          # rank 0, at the end

``last.pt`` holds everything a resumed run needs; ``best.pt`` the best weights; ``metrics.csv`` / ``metrics.jsonl``
one row per epoch; ``curves.png`` the loss and accuracy curves; ``unreadable.csv`` the images that could not be read
(epoch, index, path, reason); ``summary.json`` the outcome with the spec and provenance. Every file is replaced
atomically, so a run killed while writing leaves the previous epoch's version.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enhancer.atomic import atomic_write
from enhancer.train.curves import draw_curves
from enhancer.train.data import Unreadable

LAST = "last.pt"
BEST = "best.pt"
METRICS_CSV = "metrics.csv"
METRICS_JSONL = "metrics.jsonl"
CURVES = "curves.png"
UNREADABLE = "unreadable.csv"
SUMMARY = "summary.json"


def write_epoch_files(
    run: Path, history: Sequence[dict[str, Any]], unreadable: Sequence[tuple[int, Unreadable]], best: int
) -> None:
    """The per-epoch metrics (CSV: scalars only; JSON lines: everything), the unreadable list and the curves."""
    scalars = [{k: v for k, v in r.items() if not isinstance(v, dict | list)} for r in history]
    with atomic_write(run / METRICS_CSV, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(scalars[0]))
        writer.writeheader()
        writer.writerows(scalars)
    with atomic_write(run / METRICS_JSONL) as f:
        f.writelines(json.dumps(r) + "\n" for r in history)
    with atomic_write(run / UNREADABLE, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "index", "path", "reason"])
        writer.writerows([u[0], u[1].index, u[1].path, u[1].reason] for u in unreadable)
    draw_curves(history, run / CURVES, best_epoch=best or None)


def write_summary(run: Path, summary: dict[str, Any]) -> None:
    (run / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
