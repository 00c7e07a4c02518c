"""What every loader yields: ``Batch``, plus the small pieces the DALI and torch loaders share.

Usage::

    for batch in loader:                 # any loader from enhancer.data.make_loader
        logits = model(batch.image)      # (N, C, H, W), normalised, on the loader's device
        batch.index                      # (N,) Sample.index of each row, CPU int64

``image`` and ``source`` are on the loader's device; ``orig_size``, ``index`` and ``label`` stay on the CPU (they
are bookkeeping for the writer, not model inputs).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from enhancer.data.scan import Sample
from enhancer.data.validate import Rejection
from enhancer.preprocessing import Preprocessing

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class Batch:
    """One batch of decoded, preprocessed samples (rows in ``Sample.index`` order within the pass)."""

    image: torch.Tensor  # (N, C, H, W) normalised model input, C = preprocessing.in_chans
    source: torch.Tensor  # (N, 1, S, S) uint8 grey crop source: the original squash-resized to S x S
    orig_size: torch.Tensor  # (N, 2) int64 (height, width) of the original file
    index: torch.Tensor  # (N,) int64 Sample.index
    label: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.index.shape[0])


def normalise(grey: torch.Tensor, preprocessing: Preprocessing, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``(N, 1, H, W)`` grey -> ``(N, in_chans, H, W)`` ``(x / 255 - mean) / std`` in ``dtype``."""
    x = grey.to(torch.float32).div_(255.0)
    if preprocessing.in_chans == 3:
        x = x.expand(-1, 3, -1, -1)
    mean, std = _mean_std(tuple(preprocessing.mean), tuple(preprocessing.std), x.device)
    return ((x - mean) / std).to(dtype).contiguous()


@functools.lru_cache(maxsize=8)
def _mean_std(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) float32 constants on ``device``, made once: building them per batch is a host-to-device copy."""
    as_tensor = functools.partial(torch.tensor, dtype=torch.float32, device=device)
    return as_tensor(mean).view(1, -1, 1, 1), as_tensor(std).view(1, -1, 1, 1)


def resize_grey(grey: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, H, W) uint8 -> (1, h, w) uint8, bilinear with antialias: PIL's ``Resize`` filter. On the CPU torch has a
    uint8 kernel for this (as fast as Pillow, within 1/255 of it, borders included); on a GPU the resize runs in
    float32 and is rounded like PIL's uint8 output."""
    x = grey.unsqueeze(0)
    if x.device.type == "cpu":
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    y = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)[0]


class Loader:
    """Base of the loaders: iterable of ``Batch``.

    ``rejected`` collects the decode-time failures of the current (or last) pass and ``n_loaded`` counts the rows
    yielded; both restart with every pass, so ``len(samples) == n_loaded + len(rejected)`` after a full pass.
    """

    name: str = "loader"

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocessing: Preprocessing,
        *,
        batch_size: int,
        device: str = "cpu",
        source_size: int = 512,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        indices = [s.index for s in samples]
        if len(set(indices)) != len(indices):
            raise ValueError("samples contain duplicate Sample.index values; pass each sample once")
        self.samples = list(samples)
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.source_size = source_size
        self.dtype = dtype
        self.rejected: list[Rejection] = []
        self.n_loaded = 0

    def __len__(self) -> int:
        """Batches expected in one pass (fewer rows arrive when files are rejected at decode time)."""
        return math.ceil(len(self.samples) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, samples={len(self.samples)}, batch_size={self.batch_size})"
