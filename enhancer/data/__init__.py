"""Data ingestion: scan and validate every file, shard, and load batches with DALI (CPU or GPU) or torch.

Usage::

    from enhancer.data import make_loader, scan, shard, validate
    found = scan("/data/chest_xray/val")                        # ImageFolder root or path,label CSV
    ok, rejected = validate(found.samples, level="header")      # every file accepted or rejected with a reason
    loader = make_loader(shard(ok, 0, 1), preprocessing, loader="auto", device="cpu")
    for batch in loader:                                        # Batch(image, source, orig_size, index, label)
        ...
    rejected += loader.rejected                                 # decode-time failures, isolated per file

Accounting: ``len(found.samples) == loader.n_loaded + len(rejected)`` after a full pass.
DALI is imported lazily, only when a DALI loader runs.
"""

from enhancer.data.batch import Batch, Loader
from enhancer.data.errors import DataError
from enhancer.data.loader import make_loader
from enhancer.data.scan import Sample, Scan, scan, scan_csv, scan_folder
from enhancer.data.sharding import shard
from enhancer.data.validate import REJECTION_CODES, Rejection, validate

__all__ = [
    "REJECTION_CODES",
    "Batch",
    "DataError",
    "Loader",
    "Rejection",
    "Sample",
    "Scan",
    "make_loader",
    "scan",
    "scan_csv",
    "scan_folder",
    "shard",
    "validate",
]
