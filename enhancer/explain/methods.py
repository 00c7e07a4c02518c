"""The CAM methods' maps from a target layer's activations A (N, K, h, w) and gradients G (N, K, h, w).

Usage::

    m = gradient_map("gradcam++", a, g, channel_reduce="sum")   # (N, h, w), before the ReLU
    m = weighted_map(weights, a, channel_reduce="sum")          # sum_k w_k A_k for any per-channel weights (N, K)
    m = eigen_projection(a)                                     # (N, h, w): first principal component

Each formula is the one of pytorch-grad-cam 1.5.7 (its ``get_cam_weights`` / ``get_cam_image``), on the whole batch
at once and on the input's device; ``METHOD_NOTES`` states them and goes into the dataset's attributes. The caller
applies the ReLU and the normalisation (``enhancer.explain.cam.cam_result``), as pytorch-grad-cam does for every
method. ``channel_reduce="mean"`` divides a channel sum by K (the seed's convention; the normalised map is the same).
"""

from __future__ import annotations

import torch

METHOD_NOTES = {
    "gradcam": "sum_k w_k A_k, w_k = mean_ij G_kij (Selvaraju et al. 2017)",
    "hirescam": "sum_k G_k * A_k (element-wise; Draelos & Carin 2020)",
    "gradcam++": (
        "sum_k w_k A_k, w_k = sum_ij ReLU(G_kij) a_kij, a_kij = G^2 / (2 G^2 + (sum_ij A_k) G^3 + 1e-6), "
        "0 where G == 0 (Chattopadhay et al. 2018, eq. 19, as pytorch-grad-cam)"
    ),
    "xgradcam": "sum_k w_k A_k, w_k = sum_ij G_kij A_kij / (sum_ij A_kij + 1e-7) (Fu et al. 2020)",
    "layercam": "sum_k ReLU(G_k) * A_k (Jiang et al. 2021)",
    "gradcam-elementwise": "sum_k ReLU(G_k * A_k)",
    "eigencam": (
        "projection of the pixels' K-vectors of A, centred over the pixels, on their first principal direction "
        "(Muhammad & Yeasin 2020); sign: the largest-magnitude value positive"
    ),
    "eigengradcam": "eigencam of G * A",
    "scorecam": (
        "sum_k w_k A_k, w = softmax_k(score(x * M_k)), M_k = A_k upsampled to the input (bilinear, corners aligned) "
        "and min-max scaled (+1e-8) (Wang et al. 2020)"
    ),
    "ablationcam": (
        "sum_k w_k A_k, w_k = (score - score with A_k set to v) / score, v = 0 when min A == 0, else min A - 1e7 "
        "(Desai & Ramaswamy 2020)"
    ),
}


def _reduce(per_channel: torch.Tensor, channel_reduce: str) -> torch.Tensor:
    """(N, K, h, w) -> (N, h, w): sum over channels, divided by K for ``"mean"``."""
    m = per_channel.sum(1)
    return m / per_channel.shape[1] if channel_reduce == "mean" else m


def weighted_map(weights: torch.Tensor, a: torch.Tensor, channel_reduce: str = "sum") -> torch.Tensor:
    """sum_k w_k A_k for weights (N, K) and activations (N, K, h, w) -> (N, h, w)."""
    m = torch.einsum("nk,nkhw->nhw", weights.to(a.dtype), a)
    return m / a.shape[1] if channel_reduce == "mean" else m


def gradcam_pp_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ channel weights (N, K): the closed-form alphas of an exponential score, with the ReLU of eq. 7."""
    g2 = g * g
    alpha = g2 / (2 * g2 + a.sum((2, 3), keepdim=True) * g2 * g + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return (g.relu() * alpha).sum((2, 3))


def gradient_map(method: str, a: torch.Tensor, g: torch.Tensor, channel_reduce: str = "sum") -> torch.Tensor:
    """The map (N, h, w), before the ReLU, of a gradient method (``GRADIENT_METHODS``)."""
    if method == "gradcam":
        return weighted_map(g.mean((2, 3)), a, channel_reduce)
    if method == "hirescam":
        return _reduce(g * a, channel_reduce)
    if method == "gradcam++":
        return weighted_map(gradcam_pp_weights(a, g), a, channel_reduce)
    if method == "xgradcam":
        return weighted_map((g * a / (a.sum((2, 3), keepdim=True) + 1e-7)).sum((2, 3)), a, channel_reduce)
    if method == "layercam":
        return _reduce(g.relu() * a, channel_reduce)
    if method == "gradcam-elementwise":
        return _reduce((g * a).relu(), channel_reduce)
    if method == "eigengradcam":
        return eigen_projection(g * a)
    raise ValueError(f"{method!r} is not a gradient CAM method")


def _top_eigenvector(gram: torch.Tensor, squarings: int = 24, refinements: int = 3) -> torch.Tensor:
    """Unit eigenvector (N, P) of the largest eigenvalue of symmetric PSD matrices gram (N, P, P).

    Repeated squaring (gram^(2^24), rescaled each time) leaves a matrix whose columns all point along the top
    eigenvector unless the two largest eigenvalues agree to ~1e-7 (where the direction is not defined anyway); the
    largest column is taken and polished by a few power steps. Fixed work, batched, no host synchronisation (the
    LAPACK / cuSOLVER eigen-solvers synchronise with the host on CUDA)."""
    power = gram / gram.flatten(1).norm(dim=1).clamp_min(torch.finfo(gram.dtype).tiny)[:, None, None]
    for _ in range(squarings):
        power = power @ power
        power = power / power.flatten(1).norm(dim=1).clamp_min(torch.finfo(gram.dtype).tiny)[:, None, None]
    col = power.norm(dim=1).argmax(1)  # (N,)
    v = power.gather(2, col[:, None, None].expand(-1, power.shape[1], 1))[..., 0]
    for _ in range(refinements):
        v = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(gram.dtype).tiny)
        v = (gram @ v[..., None])[..., 0]
    return v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(gram.dtype).tiny)


def eigen_projection(a: torch.Tensor) -> torch.Tensor:
    """First principal component of each image's pixels: (N, K, h, w) -> (N, h, w).

    M (hw, K) = the pixels' channel vectors centred over the pixels; the map is M v1 (v1: the first right singular
    vector), from the smaller Gram matrix (M M^T or M^T M) in float64. A singular vector's sign is arbitrary
    (LAPACK's choice in pytorch-grad-cam, which differs between solvers and devices); here it is fixed so that the
    value of largest magnitude is positive (the sign correction of Seg-Eigen-CAM, shipped in pytorch-grad-cam 1.5.7
    as ``get_2d_projection_with_sign_correction``). NaN activations count as 0, as there."""
    n, k, h, w = a.shape
    m = a.nan_to_num(0.0, posinf=0.0, neginf=0.0).double().flatten(2).transpose(1, 2)  # (N, hw, K)
    m = m - m.mean(1, keepdim=True)
    if h * w <= k:
        gram = m @ m.transpose(1, 2)  # (N, hw, hw): M v1 = s1 u1 = sqrt(lambda1) u1
        u = _top_eigenvector(gram)
        lam = ((gram @ u[..., None])[..., 0] * u).sum(1).clamp_min(0)  # Rayleigh quotient = s1^2
        p = u * lam.sqrt()[:, None]
    else:
        p = (m @ _top_eigenvector(m.transpose(1, 2) @ m)[..., None])[..., 0]  # (K, K) Gram: v1 itself
    flip = p.amin(1).abs() > p.amax(1).abs()
    p = torch.where(flip[:, None], -p, p)
    return p.view(n, h, w).to(a.dtype if a.dtype == torch.float64 else torch.float32)
