"""A model's trunk compiled with ``torch.compile``, its head left eager: what ``grad_cam`` runs with ``--compile``.

Usage::

    split = CompiledTrunk(model, batch_size=16)        # model: anything with features / head halves (eval mode)
    result = grad_cam(split, x)                        # the first call compiles (seconds to minutes), later ones run

Only the trunk is compiled: it runs once per batch without autograd and holds nearly all the work; the head is
differentiated (``torch.autograd.grad``), which compiles poorly and costs little. Every batch reaches the compiled
trunk with the same shape: a short last batch is padded to ``batch_size`` (rows are independent in eval mode) and
cut back after, so torch compiles once instead of again for the odd size. Compiled kernels land in torch's on-disk
caches (inductor's FX graph cache, ``TORCHINDUCTOR_CACHE_DIR``), which later runs reuse.
"""

from __future__ import annotations

from typing import Any

import torch


class CompiledTrunk:
    """``split`` (a model or view with ``features``, ``head``, ``training``) with ``features`` compiled."""

    def __init__(self, split: Any, *, batch_size: int, mode: str | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split = split
        self.batch_size = batch_size
        self._features = torch.compile(split.features, dynamic=False, mode=mode)

    @property
    def training(self) -> bool:
        return self.split.training

    def features(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n > self.batch_size:
            raise ValueError(f"a batch of {n} is larger than the compiled batch size {self.batch_size}")
        if n < self.batch_size:  # zero rows up to the compiled size, in the input's memory format
            channels_last = x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)
            x = torch.cat([x, x.new_zeros((self.batch_size - n, *x.shape[1:]))])
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        return self._features(x)[:n]

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.split.head(a)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
