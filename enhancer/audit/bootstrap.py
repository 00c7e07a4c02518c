"""Percentile bootstrap confidence intervals of a mean, vectorised on the values' device.

Usage::

    from enhancer.audit.bootstrap import bootstrap_ci
    est = bootstrap_ci(torch.tensor([0.2, 0.4, 0.9, 0.5]), resamples=1000, seed=0)
    est.value, est.ci_low, est.ci_high, est.n        # the mean, its 95% interval, the defined values used

One call draws all ``resamples`` x n indices at once (``torch.randint`` with a generator seeded by ``seed`` on the
values' device): the same seed on the same kind of device gives the same interval. Percentile interval: the
``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (linear interpolation, as ``numpy.percentile``) of the
resampled means. Undefined values (NaN) are left out first; with none left the estimate is NaN with n = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean with its percentile bootstrap interval over ``n`` defined values (NaN when n = 0)."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n}


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def bootstrap_means(
    values: torch.Tensor, *, resamples: int = RESAMPLES, seed: int = 0, chunk: int = 64
) -> torch.Tensor:
    """Resampled means of each row of ``values`` (R, n) (or one row (n,)): (R, resamples), every row with its own
    resampling indices. Rows are processed ``chunk`` at a time to bound memory (R x resamples x n indices)."""
    rows = values.reshape(-1, values.shape[-1]).float()
    r, n = rows.shape
    if n == 0:
        raise ValueError("bootstrap_means needs at least one value per row")
    g = _generator(rows.device, seed)
    out = []
    for start in range(0, r, chunk):
        part = rows[start : start + chunk]
        idx = torch.randint(n, (len(part), resamples, n), generator=g, device=rows.device)
        out.append(part.gather(1, idx.flatten(1)).view(len(part), resamples, n).mean(2))
    return torch.cat(out)


def percentile_interval(means: torch.Tensor, level: float = LEVEL) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) percentile bounds of resampled means (..., resamples)."""
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1), e.g. 0.95")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=means.dtype, device=means.device)
    low, high = torch.quantile(means, q, dim=-1)
    return low, high


def bootstrap_ci(values: torch.Tensor, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Estimate:
    """Mean of the defined (finite) entries of ``values`` (any shape, flattened) with its percentile bootstrap
    interval."""
    v = values.detach().flatten().float()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    low, high = percentile_interval(bootstrap_means(v, resamples=resamples, seed=seed)[0], level)
    stats = torch.stack([v.mean(), low, high]).tolist()  # one transfer for the three numbers
    return Estimate(stats[0], stats[1], stats[2], int(v.numel()))
