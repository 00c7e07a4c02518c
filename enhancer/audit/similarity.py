"""Similarity of two batches of saliency maps on the device: SSIM and Spearman rank correlation, one value per pair.

Usage::

    from enhancer.audit.similarity import ssim, spearman
    ssim(a, b)        # a, b (N, H, W) maps in [0, 1] -> (N,) mean SSIM
    spearman(a, b)    # (N,) rank correlation of the pixel values, ties given their average rank

SSIM is scikit-image's ``structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)``: local means, variances and covariance under a Gaussian window
(sigma 1.5, truncated at 3.5 sigma: 11 taps, borders mirrored as scipy's ``mode="reflect"``), K1 = 0.01,
K2 = 0.03, averaged over the image without the 5-pixel border the window overhangs. Spearman is the Pearson
correlation of average ranks (``scipy.stats.spearmanr``); a constant map has no ranking, so its correlation with
anything is 0, not undefined.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIGMA = 1.5
TRUNCATE = 3.5
K1, K2 = 0.01, 0.03


def gaussian_taps(
    sigma: float = SIGMA, truncate: float = TRUNCATE, *, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ``int(truncate * sigma + 0.5)`` (scipy's ``gaussian_filter``), float64."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _symmetric_index(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-n axis padded by ``radius`` on both sides, mirrored with the edge repeated (d c b a | a b
    c d | d c b a: scipy's ``reflect``); valid for radius <= n."""
    i = torch.arange(-radius, n + radius, device=device)
    i = torch.where(i < 0, -i - 1, i)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian_filter(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of x (N, H, W) with scipy's ``reflect`` borders; same shape and dtype."""
    r = (len(taps) - 1) // 2
    n, h, w = x.shape
    if r > min(h, w):
        raise ValueError(f"maps of {h}x{w} pixels are smaller than the {len(taps)}-tap SSIM window's radius")
    k = taps.to(x.dtype)
    padded = x.index_select(2, _symmetric_index(w, r, x.device)).index_select(1, _symmetric_index(h, r, x.device))
    y = F.conv2d(padded[:, None], k.view(1, 1, 1, -1))
    return F.conv2d(y, k.view(1, 1, -1, 1))[:, 0]


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, sigma: float = SIGMA) -> torch.Tensor:
    """Mean structural similarity of each pair of maps a, b (N, H, W); (N,) in the maps' float dtype (float32 for
    integer maps)."""
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"ssim needs two (N, H, W) batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    dtype = a.dtype if a.is_floating_point() else torch.float32
    a, b = a.to(dtype), b.to(dtype)
    taps = gaussian_taps(sigma, device=a.device)
    n = a.shape[0]
    # the five local moments in one filtering pass over a (5N, H, W) stack
    m = gaussian_filter(torch.cat([a, b, a * a, b * b, a * b]), taps).view(5, n, *a.shape[1:])
    ux, uy, uxx, uyy, uxy = m
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (len(taps) - 1) // 2
    return s[:, pad : s.shape[1] - pad, pad : s.shape[2] - pad].double().mean((1, 2)).to(dtype)


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..P of each row of x (N, P), ties sharing their average rank (``scipy.stats.rankdata``); float64."""
    n, p = x.shape
    values, order = x.sort(dim=1, stable=True)
    pos = torch.arange(p, device=x.device).expand(n, p)
    new = torch.ones_like(values, dtype=torch.bool)
    new[:, 1:] = values[:, 1:] != values[:, :-1]
    first = torch.where(new, pos, torch.zeros_like(pos)).cummax(1).values  # start of each tie group
    ends = torch.ones_like(new)
    ends[:, :-1] = new[:, 1:]
    last = torch.where(ends, pos, torch.full_like(pos, p)).flip(1).cummin(1).values.flip(1)  # end of each group
    ranks = (first + last).double() / 2 + 1
    return torch.empty_like(ranks).scatter_(1, order, ranks)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps a, b (N, ...) over their pixels; (N,) float32, 0 where either
    map is constant."""
    if a.shape != b.shape:
        raise ValueError(f"spearman needs two batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    rho = (ra * rb).sum(1) / torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, rho, torch.zeros_like(rho)).float()
