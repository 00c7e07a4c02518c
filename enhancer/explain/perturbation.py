"""Gradient-free CAM channel weights from forward passes of perturbed copies: Score-CAM and Ablation-CAM, batched.

Usage::

    w = scorecam_weights(model, x, a, score_of, batch=64)            # (N, K): softmax over channels of masked scores
    w = ablation_weights(head, a, base_score, score_of, batch=64)    # (N, K): relative score drop per channel

Both need one forward pass per (image, channel) pair: N * K copies, ``batch`` of them per pass, taken from every
image of the batch at once (no per-image loop, no host synchronisation). ``score_of(logits, rows)`` is the explained
class's score of the copies (``rows`` (B,): the image each copy comes from). Definitions as pytorch-grad-cam 1.5.7;
see ``enhancer.explain.methods.METHOD_NOTES``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

ScoreOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Ablation-CAM's replacement value where activations can be negative: far below any activation (pytorch-grad-cam).
ABLATION_OFFSET = 1e7


def _pairs(n: int, k: int, batch: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(image rows, channels) of the n * k (image, channel) pairs in chunks of ``batch``, image-major."""
    flat = torch.arange(n * k, device=device)
    return [(chunk // k, chunk % k) for chunk in flat.split(batch)]


def scorecam_masks(a: torch.Tensor, rows: torch.Tensor, channels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks (B, 1, H, W): activation maps A[rows, channels] upsampled to the input size (bilinear, corners aligned,
    as ``nn.UpsamplingBilinear2d``), each min-max scaled to [0, 1] (+1e-8 in the denominator)."""
    up = F.interpolate(a[rows, channels][:, None], size=size, mode="bilinear", align_corners=True)
    flat = up.flatten(1)
    low, high = flat.amin(1)[:, None, None, None], flat.amax(1)[:, None, None, None]
    return (up - low) / (high - low + 1e-8)


def scorecam_weights(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    a: torch.Tensor,
    score_of: ScoreOf,
    *,
    batch: int,
) -> torch.Tensor:
    """Score-CAM weights (N, K): softmax over channels of the scores of x * mask_k, for input x (N, C, H, W) and
    activations a (N, K, h, w). ``model`` runs without autograd."""
    n, k = a.shape[:2]
    scores = []
    for rows, channels in _pairs(n, k, batch, x.device):
        masked = x[rows] * scorecam_masks(a, rows, channels, tuple(x.shape[-2:])).to(x.dtype)
        with torch.no_grad():
            scores.append(score_of(model(masked), rows).float())
    return torch.cat(scores).view(n, k).softmax(1)


def ablation_values(a: torch.Tensor) -> torch.Tensor:
    """Per image (N,): 0 where the activations' minimum is exactly 0 (ReLU outputs), else min - 1e7."""
    low = a.flatten(1).amin(1)
    return torch.where(low == 0, torch.zeros_like(low), low - ABLATION_OFFSET)


def ablation_weights(
    head: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    a: torch.Tensor,
    base_score: torch.Tensor,
    score_of: ScoreOf,
    *,
    batch: int,
) -> torch.Tensor:
    """Ablation-CAM weights (N, K): (score - score with channel k ablated) / score.

    ``head(activations, rows)`` gives the logits of the copies from the target layer on; ``base_score`` (N,) the
    unablated scores. pytorch-grad-cam 1.5.7 re-reads the minimum after each ablation inside its batch, so its k-th
    copy of a batch gets min - k * 1e7; the same result wherever a ReLU follows the layer or min A == 0."""
    n, k = a.shape[:2]
    value = ablation_values(a)
    drops = []
    for rows, channels in _pairs(n, k, batch, a.device):
        ablated = a[rows].clone()
        ablated[torch.arange(len(rows), device=a.device), channels] = value[rows, None, None].to(a.dtype)
        with torch.no_grad():
            drops.append(score_of(head(ablated, rows), rows).float())
    ablated_scores = torch.cat(drops).view(n, k)
    base = base_score.float()[:, None]
    return (base - ablated_scores) / base
