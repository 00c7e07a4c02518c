"""The audit's building blocks against their references: SSIM (scikit-image), Spearman (scipy), Otsu (scikit-image),
ROAD's linear imputation (pytorch-grad-cam's solver), percentile bootstrap (reproducible, covers a known mean)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from enhancer.audit.bootstrap import bootstrap_ci, bootstrap_means, percentile_interval
from enhancer.audit.faithfulness import auc, percentile_keep, salience_rank
from enhancer.audit.imputation import add_noise, linear_impute
from enhancer.audit.localisation import localisation_values, mask_iou, otsu_masks, otsu_threshold, to_levels
from enhancer.audit.similarity import average_ranks, spearman, ssim
from tests.tools.missing import require_module

skimage_metrics = require_module("skimage.metrics", install="scikit-image==0.26.0")
skimage_filters = require_module("skimage.filters", install="scikit-image==0.26.0")
stats = require_module("scipy.stats", install="scipy")


def smooth_maps(n: int, size: tuple[int, int], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 6, 5, generator=g, dtype=torch.float64)
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[:, 0].to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ssim_equals_scikit_image_gaussian_population_covariance(dtype):
    a = smooth_maps(4, (40, 37), 0, dtype)
    b = (a + 0.2 * torch.rand(a.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)).clamp(0, 1)
    b[3] = 0  # an empty map against a real one
    ours = ssim(a, b)
    ref = [
        skimage_metrics.structural_similarity(
            a[i].numpy(), b[i].numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
        )
        for i in range(4)
    ]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-12 if dtype == torch.float64 else 1e-6)
    assert torch.allclose(ssim(a, a), torch.ones(4, dtype=dtype))


def test_spearman_equals_scipy_with_ties_and_is_zero_for_a_flat_map():
    a = (smooth_maps(3, (20, 30), 2) * 6).round()  # many ties
    b = (smooth_maps(3, (20, 30), 3) * 6).round()
    ref = [stats.spearmanr(a[i].flatten(), b[i].flatten()).statistic for i in range(3)]
    np.testing.assert_allclose(spearman(a, b).numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(average_ranks(a.flatten(1)).numpy(), stats.rankdata(a.flatten(1).numpy(), axis=1))
    assert spearman(torch.zeros(1, 4, 4), a[:1, :4, :4]).item() == 0.0
    assert spearman(a, a).sub(1).abs().max() < 1e-6 and spearman(a, -a).add(1).abs().max() < 1e-6


def test_otsu_equals_scikit_image_on_the_8_bit_levels():
    maps = smooth_maps(5, (48, 48), 4) ** 3
    maps[4] = 0.5  # a flat map: its own level, nothing above it
    levels = to_levels(maps)
    ref = [skimage_filters.threshold_otsu(levels[i].numpy().astype(np.uint8)) for i in range(5)]
    assert otsu_threshold(levels).tolist() == [int(r) for r in ref]
    assert torch.equal(otsu_masks(maps)[:4], levels[:4] > torch.tensor(ref[:4])[:, None, None])
    assert not otsu_masks(maps)[4].any()


def test_localisation_values_on_a_hand_made_case():
    maps = torch.zeros(3, 8, 8)
    maps[0, 1:3, 1:3] = 1.0  # exactly on the region
    maps[1, 5:7, 5:7] = 1.0  # off it
    regions = torch.zeros(3, 8, 8, dtype=torch.bool)
    regions[:2, 1:3, 1:3] = True  # sample 2 has no region: undefined
    v = localisation_values(maps, regions)
    assert v["iou"][:2].tolist() == [1.0, 0.0] and v["hit"][:2].tolist() == [1.0, 0.0]
    assert v["energy"][:2].tolist() == [1.0, 0.0] and v["area"][0].item() == 4 / 64
    assert all(math.isnan(v[k][2].item()) for k in v)
    empty_map = localisation_values(torch.zeros(1, 8, 8), regions[:1])  # a region but no evidence: a miss
    assert (empty_map["iou"].item(), empty_map["hit"].item(), empty_map["energy"].item()) == (0.0, 0.0, 0.0)
    assert math.isnan(mask_iou(regions[2:], regions[2:]).item())


def test_linear_imputation_equals_pytorch_grad_cam_with_both_solvers():
    road = require_module("pytorch_grad_cam.metrics.road", install="grad-cam==1.5.7")
    g = torch.Generator().manual_seed(5)
    x = F.avg_pool2d(torch.randn(3, 2, 30, 26, generator=g), 5, 1, 2)
    keep = torch.rand(3, 30, 26, generator=g) < torch.tensor([0.1, 0.5, 0.9])[:, None, None]
    keep[1, :, :13] = False  # a large hole
    ref = torch.stack([road.NoisyLinearImputer(noise=0.0)(x[i], keep[i].float()) for i in range(3)])
    assert (linear_impute(x, keep, solver="direct") - ref).abs().max() < 1e-5
    assert (linear_impute(x, keep, solver="cg", tol=1e-7) - ref).abs().max() < 1e-5
    assert torch.equal(linear_impute(x, keep)[keep[:, None].expand_as(x)], x[keep[:, None].expand_as(x)])


def test_imputation_without_kept_pixels_fills_and_noise_touches_only_imputed_pixels():
    x = torch.randn(2, 1, 12, 12)
    keep = torch.zeros(2, 12, 12, dtype=torch.bool)
    keep[1, ::3, ::3] = True
    filled = linear_impute(x, keep, fill=0.0)
    assert torch.equal(filled[0], torch.zeros(1, 12, 12)) and torch.isfinite(filled).all()
    noisy = add_noise(filled, keep, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(noisy[1][keep[1][None]], x[1][keep[1][None]])
    assert 0.3 < (noisy - filled)[0].std().item() < 0.7


def test_road_keeps_pixels_below_numpy_percentile():
    maps = smooth_maps(2, (32, 32), 6)
    for order, m in (("morf", maps), ("lerf", 1 - maps)):
        keep, thr = percentile_keep(maps, 30, order)
        ref = np.stack([np.float32(m[i].numpy() < np.percentile(m[i].numpy(), 30)) for i in range(2)])
        np.testing.assert_array_equal(keep.numpy(), ref.astype(bool))


def test_salience_rank_orders_most_salient_first_ties_at_random():
    maps = torch.tensor([[[0.0, 1.0], [0.5, 0.0]]])
    rank = salience_rank(maps, torch.Generator().manual_seed(0)).view(2, 2)
    assert rank[0, 1] == 0 and rank[1, 0] == 1 and {rank[0, 0].item(), rank[1, 1].item()} == {2, 3}
    assert auc(torch.tensor([[1.0, 1.0, 0.0]])).item() == pytest.approx(0.75)


def test_bootstrap_is_reproducible_with_the_seed():
    v = torch.randn(40, generator=torch.Generator().manual_seed(7))
    a, b = bootstrap_ci(v, seed=3), bootstrap_ci(v, seed=3)
    assert a == b and a.n == 40 and a.ci_low < a.value < a.ci_high
    assert bootstrap_ci(v, seed=4) != a
    with_nan = bootstrap_ci(torch.cat([v, torch.tensor([math.nan])]), seed=3)
    assert with_nan == a  # undefined values are left out first
    assert bootstrap_ci(torch.tensor([math.nan])).n == 0


def test_bootstrap_interval_covers_a_known_mean():
    """200 repeats of 40 draws from an exponential distribution (mean 1, skewed): the 95% percentile interval from
    1,000 resamples contains the true mean in >= 90% of them."""
    g = torch.Generator().manual_seed(11)
    samples = torch.empty(200, 40).exponential_(1.0, generator=g)
    low, high = percentile_interval(bootstrap_means(samples, resamples=1000, seed=0))
    coverage = ((low <= 1.0) & (1.0 <= high)).float().mean().item()
    assert coverage >= 0.90, coverage
