"""Batched Grad-CAM, heatmaps, Grad-CAM-guided crops and enhanced images: pure tensor code on any device.

The settings, result and building blocks every CAM method shares live here too; any method for any model and layer
is ``enhancer.explain.compute.compute_cam``.

Usage::

    python -c "import torch; from enhancer.models.zoo import build_model; from enhancer.explain.cam import grad_cam; \
r = grad_cam(build_model('tinyvgg', input_size=64).eval(), torch.randn(4, 1, 64, 64)); print(r.cam.shape)"

    r = grad_cam(model.eval(), x)                       # x (N, C, H, W) normalised model input, on any device
    heat = upsample(r.cam, x.shape[-2:])                # (N, H, W) in [0, 1]
    rgb = colorize_jet(heat)                            # (N, 3, H, W) uint8
    boxes = crop_boxes(heat, orig_size)                 # (N, 4) int32 xyxy in original pixels
    crops = crop(source, boxes, orig_size, (224, 224))  # (N, 1, 224, 224) uint8 from the high-resolution source
    enhanced = enhance(image01, heat)                   # (N, 1, H, W) uint8

Grad-CAM here needs only the model's two halves (``features``: input -> target-layer activations, ``head``:
activations -> logits; every ``enhancer.models.zoo`` zoo model has them). The trunk runs once without autograd, then
only the head is differentiated w.r.t. the activations: the same gradient a hook + full backward pass gives, for
about the cost of one forward pass, and the whole batch stays on the device. Nothing here does I/O or picks a
device: every result lives on the input's device. The settings (``CamSettings``, ``CropSettings``,
``EnhanceSettings``) and the method names are torch-free and live in ``enhancer.settings``; they are re-exported here.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from enhancer.explain.roi_resample import roi_resample
from enhancer.settings import (
    ACTIVATION_METHODS,
    AMP_MODES,
    GRADIENT_METHODS,
    METHODS,
    PERTURBATION_METHODS,
    CamSettings,
    CropSettings,
    EnhanceSettings,
)

__all__ = [
    "ACTIVATION_METHODS",
    "AMP",
    "GRADIENT_METHODS",
    "METHODS",
    "PERTURBATION_METHODS",
    "RAW_CAM_SCALE_NOTE",
    "CamResult",
    "CamSettings",
    "CropSettings",
    "EnhanceSettings",
    "LayerGrads",
    "colorize_jet",
    "crop",
    "crop_boxes",
    "enhance",
    "grad_cam",
    "largest_region",
    "prefers_channels_last",
    "upsample",
]

# Stored by the shard writer next to the raw ``cam`` dataset: what one unit of the raw map means.
RAW_CAM_SCALE_NOTE = (
    "raw = ReLU(reduce_k(w_k * A_k)) at feature resolution, A = target-layer activations, w_k = spatial mean of "
    "d score / d A_k, reduce = mean (seed) or sum over channels. score='logit': score = z_c, the target logit "
    "(pytorch-grad-cam's scale). score='prob' (seed): score = log(p_c / (1 - p_c)) = z_c - logsumexp_{k!=c} z_k, "
    "the log-odds of the target class, because d p_c = p_c (1 - p_c) d log-odds: the seed's probability-gradient "
    "map equals raw * p_c * (1 - p_c), which underflows to exactly 0 once p_c rounds to 1 (float32 logit gap ~17, "
    "bf16 ~6) while raw does not. Normalised maps (cam, heatmap) are identical for both forms."
)

# The autocast dtype of each ``CamSettings.amp`` mode (the settings themselves are torch-free).
AMP = dict(zip(AMP_MODES, (None, torch.bfloat16, torch.float16), strict=True))


@dataclass
class CamResult:
    """Grad-CAM of a batch; every tensor is on the input's device.

    raw (N, h, w) float32: the un-normalised map at feature resolution (scale: ``RAW_CAM_SCALE_NOTE``).
    raw_max (N,) float32: max of ``raw`` per image.
    cam (N, h, w) float32 in [0, 1]: ``raw`` normalised per image; all zeros where ``empty``.
    empty (N,) bool: the map has no positive evidence (max == 0; for minmax max == min) or is not finite.
    logits, probs (N, num_classes) float32; target (N,) int64: the explained class; pred (N,) int64: the argmax.
    """

    raw: torch.Tensor
    raw_max: torch.Tensor
    cam: torch.Tensor
    empty: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    target: torch.Tensor
    pred: torch.Tensor


@dataclass
class LayerGrads:
    """What every CAM method starts from, for a batch (on the input's device).

    activations (N, K, h, w): the target layer's output, float32 (float64 for a float64 model), no graph.
    gradients (N, K, h, w) or None: d score / d activations per image (None when the method needs none).
    logits (N, num_classes) float32; target (N,) int64: the explained class; pred (N,) int64: the argmax.
    """

    activations: torch.Tensor
    gradients: torch.Tensor | None
    logits: torch.Tensor
    target: torch.Tensor
    pred: torch.Tensor


def check_inputs(model: nn.Module, x: torch.Tensor) -> None:
    """The model in eval mode and a 4-d batch: what makes each map depend on its own image only."""
    if model.training:
        raise ValueError(
            "CAM needs the model in eval mode (call model.eval()): train-mode BatchNorm and "
            "Dropout would make each map depend on the rest of the batch and on chance"
        )
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")


def trunk_context(settings: CamSettings, x: torch.Tensor) -> tuple[torch.Tensor, contextlib.AbstractContextManager]:
    """(x in the trunk's memory format, the trunk's autocast). ``channels_last`` applies on any device (the enhance
    job sets it where it is faster, ``prefers_channels_last``); autocast applies on CUDA only."""
    on_cuda = x.device.type == "cuda"
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    amp = (
        torch.autocast("cuda", dtype=AMP[settings.amp])
        if settings.amp is not None and on_cuda
        else contextlib.nullcontext()  # leave any caller's autocast in charge of the trunk
    )
    return x, amp


def head_dtype(a: torch.Tensor) -> torch.Tensor:
    """Activations as the head gets them: float32 (float64 for a float64 model) whatever the trunk's autocast; in
    bf16 the logits' softmax saturates at a gap of ~6."""
    return a if a.dtype == torch.float64 else a.float()


def target_classes(
    settings: CamSettings, pred: torch.Tensor, labels: torch.Tensor | None, num_classes: int
) -> torch.Tensor:
    """The class each image's map explains, (N,) int64."""
    if settings.target == "predicted":
        return pred
    if settings.target == "label":
        if labels is None:
            raise ValueError("CamSettings(target='label') needs labels=(N,) class indices; or use target='predicted'")
        target = torch.as_tensor(labels).long().reshape(-1)
        if target.shape != pred.shape:
            raise ValueError(f"labels has {target.numel()} entries for a batch of {pred.numel()}")
        _check_classes(target, num_classes)
        return target.to(pred.device, non_blocking=True)  # async from pinned host labels (enhancer.data.prefetch)
    if int(settings.target) >= num_classes:
        raise ValueError(f"target class {settings.target} out of range for {num_classes} classes")
    return torch.full_like(pred, int(settings.target))


def _check_classes(target: torch.Tensor, num_classes: int) -> None:
    """Class indices in range, checked without waiting for the device: host labels on the host (numpy), device
    labels by an asynchronous device assertion (it fails the next synchronising call)."""
    if target.device.type == "cpu":
        t = target.numpy()
        bad = (t < 0) | (t >= num_classes)
        if bad.any():
            raise ValueError(f"target classes {sorted(set(t[bad].tolist()))} out of range for {num_classes} classes")
        return
    in_range = ((target >= 0) & (target < num_classes)).all()
    torch._assert_async(in_range, f"target classes out of range for {num_classes} classes")


def class_score(logits: torch.Tensor, target: torch.Tensor, score: str) -> torch.Tensor:
    """Per-image scalar whose gradient (or change) w.r.t. the activations gives the channel weights, (N,)."""
    z_c = logits.gather(1, target[:, None])[:, 0]
    if score == "logit":
        return z_c
    # d p_c = p_c (1 - p_c) d(log-odds): same map up to a positive per-image factor, but log-odds' gradient is a
    # convex combination of (d z_c - d z_k), which cannot underflow when p_c rounds to 1.
    # a comparison, not F.one_hot: one_hot reads the targets' range back to the host (a device sync per batch)
    is_target = torch.arange(logits.shape[1], device=logits.device) == target[:, None]
    others = logits.masked_fill(is_target, float("-inf"))
    return z_c - others.logsumexp(1)


def normalize_maps(raw: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cam in [0, 1], raw_max, empty) for raw (N, h, w); empty maps give zeros, never NaN."""
    flat = raw.flatten(1)
    raw_max = flat.amax(1)
    low = flat.amin(1) if mode == "minmax" else torch.zeros_like(raw_max)
    span = raw_max - low
    empty = ~(span > 0) | ~torch.isfinite(span)
    safe = torch.where(empty, torch.ones_like(span), span)
    cam = ((raw - low[:, None, None]) / safe[:, None, None]).clamp(0, 1)
    cam = torch.where(empty[:, None, None], torch.zeros_like(cam), cam)
    return cam, raw_max, empty


def cam_result(raw: torch.Tensor, grads: LayerGrads, settings: CamSettings) -> CamResult:
    """ReLU, normalise and package a map (N, h, w) before ReLU."""
    raw = raw.relu().float()
    cam, raw_max, empty = normalize_maps(raw, settings.normalize)
    logits = grads.logits.detach()
    return CamResult(raw, raw_max, cam, empty, logits.float(), logits.softmax(1).float(), grads.target, grads.pred)


def head_gradients(
    model: nn.Module,
    x: torch.Tensor,
    settings: CamSettings = CamSettings(),
    labels: torch.Tensor | None = None,
    *,
    need_gradients: bool = True,
) -> LayerGrads:
    """The closed form for models with ``features`` / ``head`` halves (every zoo model): the trunk once without
    autograd, then only the head differentiated w.r.t. the activations."""
    check_inputs(model, x)
    x, amp = trunk_context(settings, x)
    with torch.no_grad(), amp:
        feats = model.features(x)
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        a = head_dtype(feats.detach()).requires_grad_(need_gradients)
        logits = model.head(a)
        pred = logits.detach().argmax(1)
        target = target_classes(settings, pred, labels, logits.shape[1])
        grads = None
        if need_gradients:
            # Eval mode: image n's score depends on a[n] only, so one backward of the sum gives every image's gradient.
            (grads,) = torch.autograd.grad(class_score(logits, target, settings.score).sum(), a)
    return LayerGrads(a.detach(), grads, logits.detach(), target, pred)


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    settings: CamSettings = CamSettings(),
    labels: torch.Tensor | None = None,
) -> CamResult:
    """Grad-CAM of ``model`` (eval mode; needs ``features`` and ``head``) for a batch ``x`` (N, C, H, W).

    Each image's map depends only on that image (no batch statistics). ``labels`` (N,) is needed for
    ``target='label'``. Returns a ``CamResult`` on ``x``'s device. Every method, for any model and layer:
    ``enhancer.explain.compute.compute_cam``.
    """
    if settings.method != "gradcam":
        raise ValueError(f"grad_cam computes method='gradcam', not {settings.method!r}; use compute_cam for that")
    g = head_gradients(model, x, settings, labels)
    raw = torch.einsum("nc,nchw->nhw", g.gradients.mean((2, 3)), g.activations)
    if settings.channel_reduce == "mean":
        raw = raw / g.activations.shape[1]
    return cam_result(raw, g, settings)


# CPUs whose convolutions (oneDNN) run faster on channels_last inputs. Measured, ResNet-101 inference at 224, batch
# 16, 2 cores: 1.36x on an AVX512-VNNI machine (10.4 -> 14.1 images/s), 1.17x on an AVX2 one (4.0 -> 4.7); TinyVGG
# 1.5x. Other CPUs (e.g. ARM) keep NCHW until measured there.
CHANNELS_LAST_CPUS = ("AVX2", "AVX512")


def prefers_channels_last(device: str | torch.device) -> bool:
    """The rule the enhance job follows for the trunk's memory format: channels_last on CUDA (cuDNN's NHWC kernels,
    tensor cores) and on x86 CPUs with AVX2 or AVX-512 (see ``CHANNELS_LAST_CPUS``), NCHW elsewhere."""
    if torch.device(device).type == "cuda":
        return True
    return torch.backends.cpu.get_cpu_capability() in CHANNELS_LAST_CPUS


def upsample(maps: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of maps (N, h, w) to (N, H, W) float32."""
    return F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


@functools.lru_cache(maxsize=1)
def _jet_lut() -> torch.Tensor:
    """(256, 3) uint8 RGB: the classic (MATLAB / OpenCV ``COLORMAP_JET``) jet, channel = clip(1.5 - |4x - k|, 0, 1)
    with k = 3, 2, 1 for red, green, blue; within 1/255 of ``cv2.applyColorMap`` (which interpolates a 64-entry
    table). matplotlib's "jet" has a different green ramp (up to 33/255 apart)."""
    x = torch.arange(256, dtype=torch.float64)[:, None] / 255
    k = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    return ((1.5 - (4 * x - k).abs()).clamp(0, 1) * 255).round().to(torch.uint8)


def colorize_jet(heat: torch.Tensor) -> torch.Tensor:
    """JET colouring of heat (N, H, W) -> (N, 3, H, W) uint8 RGB, on heat's device; the one colour map of the
    package (``enhancer show`` draws its overlays with it).

    Float heat in [0, 1] becomes the levels ``uint8(255 * heat)`` (truncated, as pytorch-grad-cam's
    ``cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET)``); out-of-range values are clamped and NaN counts
    as 0. uint8 heat (a stored ``heatmap``) is used as the levels themselves."""
    if heat.dtype == torch.uint8:
        idx = heat.long()
    else:
        idx = (heat.float().nan_to_num(0.0).clamp(0, 1) * 255).long()
    return _jet_lut().to(heat.device)[idx].permute(0, 3, 1, 2).contiguous()


def _prefix_run_max(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max label from the start of each horizontal run of mask pixels up to each pixel; labels (N, H, W) int64."""
    run = (mask & ~F.pad(mask[..., :-1], (1, 0), value=False)).long().cumsum(-1)
    # run ids grow along the row, so a key led by the run id lets one cummax restart at every run
    stride = labels.flatten(1).amax(1).view(-1, 1, 1) + 1
    key = run * stride + labels
    return (key.cummax(-1).values - run * stride) * mask


def _run_max(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Every pixel of mask (N, H, W) takes the max label of its horizontal run of consecutive mask pixels."""
    backward = _prefix_run_max(labels.flip(-1), mask.flip(-1)).flip(-1)
    return torch.maximum(_prefix_run_max(labels, mask), backward)


def largest_region(mask: torch.Tensor, max_iter: int | None = None) -> torch.Tensor:
    """Keep each image's largest 8-connected region of mask (N, H, W) bool; ties go to the region whose
    last pixel in raster order comes first.

    Batched labelling: every pixel starts with its own raster index as label; each round spreads the max label
    along whole horizontal runs, then whole vertical runs, then to 3x3 neighbours (diagonal contacts), inside the
    mask, until nothing changes. Each region ends up labelled by its largest index; a blob-like region takes a
    handful of rounds (about one per turn a path inside it must take).
    """
    n, h, w = mask.shape
    labels = torch.arange(1, h * w + 1, device=mask.device).view(1, h, w) * mask
    for _ in range(max_iter or h * w):
        new = _run_max(labels, mask)
        new = _run_max(new.transpose(1, 2), mask.transpose(1, 2)).transpose(1, 2)
        # max_pool2d has no integer kernels: float32 holds the labels exactly up to 2**24 pixels
        new = F.max_pool2d(new[:, None].float(), 3, stride=1, padding=1)[:, 0].long() * mask
        if torch.equal(new, labels):
            break
        labels = new
    labels = labels.flatten(1)
    m = mask.float()
    counts = torch.zeros(n, h * w + 1, device=mask.device).scatter_add_(1, labels, torch.ones_like(m.flatten(1)))
    counts[:, 0] = 0  # background
    best = counts.argmax(1)  # first maximum: deterministic tie-break
    return (labels == best[:, None]).view(n, h, w) & mask


def crop_boxes(heat: torch.Tensor, orig_size: torch.Tensor, settings: CropSettings = CropSettings()) -> torch.Tensor:
    """Crop boxes from heat (N, H, W) in [0, 1] at model resolution (a squash-resize of the original).

    orig_size (N, 2) int (h, w) of the original images. Returns (N, 4) int32 xyxy in original pixels, x2/y2
    exclusive, inside the image. An empty map (max <= 0) gives the whole image.
    """
    n, h_m, w_m = heat.shape
    dev = heat.device
    heat = heat.float().nan_to_num(0.0)
    peak = heat.flatten(1).amax(1)
    valid = peak > 0
    mask = (heat >= settings.threshold * peak[:, None, None]) & valid[:, None, None]
    if settings.largest_region:
        mask = largest_region(mask)
    size = torch.as_tensor(orig_size, device=dev).long().reshape(n, 2)
    oh, ow = size[:, 0], size[:, 1]

    def extent(hit: torch.Tensor, n_model: int, n_orig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """First and one-past-last hot index along one axis, mapped outwards to original pixels."""
        idx = torch.arange(n_model, device=dev)
        lo = torch.where(hit, idx, n_model).amin(1)
        hi = torch.where(hit, idx, -1).amax(1) + 1
        # integer products first: float32 division is then exact whenever the true quotient is an integer
        lo = (torch.where(valid, lo, 0) * n_orig).float() / n_model
        hi = (torch.where(valid, hi, n_model) * n_orig).float() / n_model
        # fractional margin in the original scale, then outward rounding so every hot pixel stays inside
        pad = settings.margin * (hi - lo)
        return (lo - pad).floor().clamp_min(0).long(), torch.minimum((hi + pad).ceil().long(), n_orig)

    x1, x2 = extent(mask.any(1), w_m, ow)
    y1, y2 = extent(mask.any(2), h_m, oh)
    bw = torch.maximum(x2 - x1, (settings.min_size * ow).ceil().long())
    bh = torch.maximum(y2 - y1, (settings.min_size * oh).ceil().long())
    if settings.square:
        bw = bh = torch.maximum(bw, bh)
    bw, bh = torch.minimum(bw, ow), torch.minimum(bh, oh)

    def grow(lo: torch.Tensor, hi: torch.Tensor, side: torch.Tensor, n_orig: torch.Tensor) -> torch.Tensor:
        start = lo - (side - (hi - lo)) // 2
        return torch.minimum(start.clamp_min(0), n_orig - side)

    x1, y1 = grow(x1, x2, bw, ow), grow(y1, y2, bh, oh)
    return torch.stack([x1, y1, x1 + bw, y1 + bh], 1).int()


def crop(
    source: torch.Tensor, boxes: torch.Tensor, orig_size: torch.Tensor, size: tuple[int, int] = (224, 224)
) -> torch.Tensor:
    """Cut boxes (N, 4) xyxy in original pixels out of source (N, 1, S_h, S_w) and resize them to size (Hc, Wc).

    The boxes lie inside the image, as ``crop_boxes`` makes them (a box past its edges gets at most S // Hc + 1
    samples per bin and axis instead of ceil(box / Hc)).

    source is the original image squash-resized to S_h x S_w (as large as the loader provides, so crops are not
    upscaled from the model input): uint8, or float in [0, 1]. orig_size (N, 2) is the original (h, w).
    Resampling is ``roi_align(aligned=True, sampling_ratio=0)`` (``enhancer.explain.roi_resample``, plain torch):
    bilinear at pixel centres (as ``F.interpolate(bilinear, align_corners=False)`` of the sliced box) when enlarging,
    the mean of ceil(scale)^2 bilinear samples per output pixel when shrinking (exactly area resizing for integer
    factors). Returns (N, 1, Hc, Wc) uint8.
    """
    n, _, s_h, s_w = source.shape
    src = source.float() if source.dtype == torch.uint8 else source.float() * 255
    size_t = torch.as_tensor(orig_size, device=source.device).reshape(n, 2).float()
    scale = torch.stack([s_w / size_t[:, 1], s_h / size_t[:, 0]], 1).repeat(1, 2)  # x, y, x, y
    rois = boxes.to(source.device).float() * scale
    # boxes inside the image need at most ceil(S / size) samples per bin; // + 1 covers a rounding step past the edge
    max_grid = max(s_h // size[0], s_w // size[1]) + 1
    out = roi_resample(src, rois, tuple(size), max_grid=max_grid)
    return out.round().clamp(0, 255).to(torch.uint8)


def enhance(
    image: torch.Tensor,
    heat: torch.Tensor,
    settings: EnhanceSettings = EnhanceSettings(),
    lung_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Emphasise the Grad-CAM regions of image (N, 1, H, W) float in [0, 1] with heat (N, H, W) in [0, 1] (the
    upsampled ``cam``) and an optional lung_mask (N, H, W) (bool or probability). Returns (N, 1, H, W) uint8."""
    if heat.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"heat {tuple(heat.shape)} and image {tuple(image.shape)} sizes differ; upsample(cam, "
            "image.shape[-2:]) first"
        )
    weight = settings.floor + (1 - settings.floor) * heat.float().nan_to_num(0.0).clamp(0, 1) ** settings.gamma
    if lung_mask is not None:
        if lung_mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"lung_mask {tuple(lung_mask.shape)} and image {tuple(image.shape)} sizes differ")
        weight = weight * (settings.mask_floor + (1 - settings.mask_floor) * lung_mask.float().clamp(0, 1))
    out = image.float() * weight[:, None]
    return (out * 255).round().clamp(0, 255).to(torch.uint8)
