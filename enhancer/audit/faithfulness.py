"""Faithfulness of saliency maps: does the model's score move when what a map highlights is taken away?

Usage::

    from enhancer.audit.faithfulness import Scorer, perturbation_curves, road, confidence_change, auc
    scorer = Scorer(model, target, score="prob")                 # the explained class's probability (or logit)
    curves = perturbation_curves(scorer, x, maps, steps=10, baseline="blur", generator=g)
    auc(curves.deletion), auc(curves.insertion)                  # (N,) each
    road(scorer, x, maps, order="morf", generator=g)             # (N,) mean score change over 10..90 percentiles
    confidence_change(scorer, x, maps)                           # (N,) score(x * map) - score(x)

Definitions (x: normalised model input (N, C, H, W); maps (N, H, W) >= 0 at the input's resolution):

- deletion / insertion (Petsiuk et al. 2018, RISE): pixels ordered most salient first (ties in a seeded random
  order); at fraction k/steps of the pixels, deletion shows the baseline there and the image elsewhere, insertion
  the image there and the baseline elsewhere. Baseline: ``"blur"`` (a Gaussian blur of the image, sigma
  ``blur_sigma`` pixels) or ``"mean"`` (each image's per-channel mean). AUC: trapezoid rule over the fraction,
  [0, 1]. A faithful map has a low deletion AUC and a high insertion AUC.
- ROAD (Rong et al. 2022), as ``pytorch_grad_cam.metrics.road``: at percentile p of each map, pixels with
  ``map < percentile`` are kept (MoRF: most relevant first removed) or, on ``1 - map``, the least relevant are
  removed first (LeRF); removed pixels are filled by noisy linear imputation; the value is
  ``score(imputed) - score(x)`` averaged over the percentiles. A faithful map: MoRF strongly negative, LeRF near 0;
  ``(lerf - morf) / 2`` is ``ROADCombined``.
- confidence change, as ``pytorch_grad_cam.metrics.cam_mult_image``: ``score(x * map) - score(x)``; its drop is
  ``max(0, -change)`` (``DropInConfidence``) and its increase ``change > 0`` (``IncreaseInConfidence``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from enhancer.audit.imputation import NOISE, add_noise, linear_impute
from enhancer.audit.similarity import gaussian_filter, gaussian_taps

SCORES = ("prob", "logit")
ACTIVATIONS = ("softmax", "sigmoid")  # how a model's outputs become probabilities
BASELINES = ("blur", "mean")
ROAD_ORDERS = ("morf", "lerf")
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


class Scorer:
    """The score of each image's explained class: its probability (``"prob"``: softmax over the classes, or the
    class's own sigmoid for a multi-label model, ``activation="sigmoid"``) or logit; batched, no autograd. Counts the
    images it has scored (``calls``)."""

    def __init__(
        self,
        model: nn.Module,
        target: torch.Tensor,
        *,
        score: str = "prob",
        activation: str = "softmax",
        batch_size: int = 32,
        on_scored: Callable[[int], object] | None = None,
    ) -> None:
        if score not in SCORES:
            raise ValueError(f"score={score!r} is not valid; choose one of {', '.join(SCORES)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not valid; choose one of {', '.join(ACTIVATIONS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.target, self.score, self.batch_size = model, target.long(), score, batch_size
        self.activation = activation
        self.on_scored = on_scored  # called with the number of images after each call (a progress bar's update)
        self.calls = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (N,) of a batch x (N, C, H, W) that lines up with ``target``."""
        out = []
        for i in range(0, len(x), self.batch_size):
            logits = self.model(x[i : i + self.batch_size]).float()
            prob = self.score == "prob"
            if prob and self.activation == "softmax":
                logits = logits.softmax(1)
            picked = logits.gather(1, self.target[i : i + self.batch_size, None].to(logits.device))[:, 0]
            out.append(picked.sigmoid() if prob and self.activation == "sigmoid" else picked)
        self.calls += len(x)
        if self.on_scored is not None:
            self.on_scored(len(x))
        return torch.cat(out)


def baseline_images(x: torch.Tensor, kind: str = "blur", *, blur_sigma: float = 5.0) -> torch.Tensor:
    """What removed pixels show in deletion / insertion: a Gaussian blur of x (N, C, H, W) or its per-channel mean."""
    if kind == "mean":
        return x.mean((2, 3), keepdim=True).expand_as(x).clone()
    if kind != "blur":
        raise ValueError(f"baseline={kind!r} is not valid; choose one of {', '.join(BASELINES)}")
    n, c, h, w = x.shape
    taps = gaussian_taps(blur_sigma, device=x.device)
    return gaussian_filter(x.float().reshape(n * c, h, w), taps).view(n, c, h, w).to(x.dtype)


def salience_rank(maps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, H*W) rank of every pixel, 0 = most salient; equal values in a random order (``generator``)."""
    flat = maps.flatten(1).float()
    shuffle = torch.rand(flat.shape, generator=generator, device=flat.device).argsort(1)
    order = shuffle.gather(1, flat.gather(1, shuffle).argsort(dim=1, descending=True, stable=True))
    return torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))


@dataclass
class Curves:
    """Scores along the removal (deletion) and insertion of pixels; fractions (K+1,), deletion/insertion (N, K+1)."""

    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor


def perturbation_curves(
    scorer: Scorer,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    steps: int = 10,
    baseline: str = "blur",
    blur_sigma: float = 5.0,
    generator: torch.Generator | None = None,
    ends: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Curves:
    """Deletion and insertion curves of ``maps`` at ``steps`` + 1 fractions 0, 1/steps, ..., 1. ``ends`` = the
    scores of x and of the baseline images, when already known (they are the same for every map)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    base = baseline_images(x, baseline, blur_sigma=blur_sigma)
    full, empty = ends if ends is not None else (scorer(x), scorer(base))
    rank = salience_rank(maps, generator).view(maps.shape)
    n_pixels = maps.shape[-2] * maps.shape[-1]
    inner = [round(k * n_pixels / steps) for k in range(1, steps)]
    deletion, insertion = [full], [empty]
    for count in inner:  # one batch per step: the stack of all steps would hold steps x the batch
        removed = (rank < count)[:, None]
        deletion.append(scorer(torch.where(removed, base, x)))
        insertion.append(scorer(torch.where(removed, x, base)))
    deletion.append(empty)
    insertion.append(full)
    fractions = torch.linspace(0, 1, steps + 1, device=x.device)
    return Curves(fractions, torch.stack(deletion, 1), torch.stack(insertion, 1))


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Area under curves (N, K+1) sampled at K+1 equally spaced fractions of [0, 1] (trapezoid rule); (N,)."""
    steps = curve.shape[1] - 1
    return (curve[:, :-1] + curve[:, 1:]).sum(1) / (2 * steps)


def percentile_keep(maps: torch.Tensor, percentile: float, order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ROAD's kept pixels (N, H, W) bool at one percentile, and the thresholds (N,): ``m < percentile(m)`` with
    m = maps (MoRF) or 1 - maps (LeRF); the percentile interpolates linearly as ``numpy.percentile`` does."""
    if order not in ROAD_ORDERS:
        raise ValueError(f"order={order!r} is not valid; choose one of {', '.join(ROAD_ORDERS)}")
    m = maps.float() if order == "morf" else 1 - maps.float()
    threshold = torch.quantile(m.flatten(1).double(), percentile / 100, dim=1).float()
    return m < threshold[:, None, None], threshold


def road(
    scorer: Scorer,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    order: str = "morf",
    percentiles: tuple[float, ...] = PERCENTILES,
    noise: float = NOISE,
    generator: torch.Generator | None = None,
    before: torch.Tensor | None = None,
    solver: str = "auto",
) -> torch.Tensor:
    """ROAD score change (N,) averaged over ``percentiles`` (``before``: the scores of x, when already known).
    An image whose threshold does not move from one percentile to the next (a map with a plateau: Grad-CAM's
    zeros) keeps the same pixels, so its imputation is reused and only the noise is drawn anew."""
    before = scorer(x) if before is None else before
    changes = []
    solved: torch.Tensor | None = None
    last: torch.Tensor | None = None
    for p in percentiles:
        keep, threshold = percentile_keep(maps, p, order)
        if solved is None or last is None:
            solved = linear_impute(x, keep, solver=solver)
        else:
            redo = (threshold != last).nonzero()[:, 0]
            if len(redo):
                solved = solved.index_copy(0, redo, linear_impute(x[redo], keep[redo], solver=solver))
        last = threshold
        imputed = add_noise(solved, keep, noise, generator)
        changes.append(scorer(imputed.to(x.dtype)) - before)
    return torch.stack(changes).mean(0)


def confidence_change(
    scorer: Scorer, x: torch.Tensor, maps: torch.Tensor, *, before: torch.Tensor | None = None
) -> torch.Tensor:
    """score(x * map) - score(x) per image (N,); maps (N, H, W) in [0, 1] multiply every channel."""
    before = scorer(x) if before is None else before
    return scorer(x * maps[:, None].to(x.dtype)) - before


def random_maps(
    n: int,
    feature_size: tuple[int, int],
    size: tuple[int, int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The random-map baseline: uniform noise at the maps' own (feature) resolution, bilinearly upsampled to
    ``size`` and scaled to a maximum of 1; as smooth as the real maps but unrelated to the image. (n, H, W)."""
    noise = torch.rand(n, 1, *feature_size, generator=generator, device=device)
    up = F.interpolate(noise, size=size, mode="bilinear", align_corners=False)[:, 0]
    return up / up.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
