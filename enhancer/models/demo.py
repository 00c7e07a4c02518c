"""Untrained zoo models that still give meaningful Grad-CAMs: for tests, benchmarks and demos without a checkpoint.

Usage::

    python -c "from enhancer.models.demo import build_demo_model, xray_like_batch; \
m = build_demo_model('resnet50', input_size=64); print(m(xray_like_batch(4, 64)))"

Why this exists: a randomly initialised ResNet in eval mode uses BatchNorm's default running statistics
(mean 0, var 1), so activations grow through every block (logits ~1e4-1e5), the softmax saturates and every
Grad-CAM of the probability is zero. Two fixes make such a model a fair test subject:

1. ``calibrate_batchnorm``: recompute every BatchNorm's running statistics as the plain (cumulative) average over
   a few batches of X-ray-like inputs, so each normalisation really normalises;
2. ``scale_head_to_unit_logits``: shift and scale the last Linear layer so the logits over a reference batch are
   centred per class with standard deviation ~1, so predictions vary and probabilities are not saturated.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from enhancer.models.registry import family_of
from enhancer.models.zoo import build_model, preprocessing_for
from enhancer.preprocessing import Preprocessing


class SyntheticCanvas:
    """The drawing kit of synthetic X-rays: pixel coordinates in [-1, 1] of a ``size`` x ``size`` image, a seeded
    uniform source and soft ellipses, batched over ``n`` images (``xray_like_images`` and the audit's phantoms)."""

    def __init__(self, size: int, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        self.yy, self.xx = yy[None], xx[None]

    def u(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) draws from the canvas's generator."""
        return torch.rand(*shape, generator=self.g)

    def ellipse(
        self, cx: torch.Tensor, cy: torch.Tensor, rx: torch.Tensor, ry: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft ellipses (n, S, S), ~1 inside and ~0 outside, and the hard inside test ``d < 1``; centres and radii
        (n,) in canvas coordinates."""
        d = ((self.xx - cx[:, None, None]) / rx[:, None, None]) ** 2 + (
            (self.yy - cy[:, None, None]) / ry[:, None, None]
        ) ** 2
        return torch.sigmoid((1 - d) * 8), d < 1


def xray_like_images(n: int, size: int = 224, *, seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) float32 in [0, 1]: a bright body, two dark lungs with rib stripes and, in a random
    lung of about half the images, a bright opacity. Deterministic for a given seed."""
    canvas = SyntheticCanvas(size, seed)
    g, u, yy = canvas.g, canvas.u, canvas.yy

    def ellipse(cx: torch.Tensor, cy: torch.Tensor, rx: torch.Tensor, ry: torch.Tensor) -> torch.Tensor:
        return canvas.ellipse(cx, cy, rx, ry)[0]

    body = ellipse(torch.zeros(n), 0.1 + 0.1 * u(n), 0.85 + 0.1 * u(n), 1.1 + 0.1 * u(n))
    img = 0.1 + 0.6 * body
    for side in (-1, 1):
        lung = ellipse(side * (0.38 + 0.08 * u(n)), -0.05 + 0.1 * u(n), 0.25 + 0.05 * u(n), 0.55 + 0.1 * u(n))
        img = img - 0.45 * lung
        ribs = 0.5 + 0.5 * torch.sin(yy * (18 + 4 * u(n)[:, None, None]) + 6 * u(n)[:, None, None])
        img = img + 0.08 * lung * ribs
    sick = (u(n) < 0.5).float()
    side = torch.where(u(n) < 0.5, -1.0, 1.0)
    blob = ellipse(side * (0.35 + 0.1 * u(n)), 0.1 + 0.3 * u(n), 0.1 + 0.1 * u(n), 0.1 + 0.15 * u(n))
    img = img + 0.35 * sick[:, None, None] * blob
    img = img + 0.03 * torch.randn(n, size, size, generator=g)
    return img.clamp(0, 1)[:, None]


def to_model_input(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """[0, 1] greyscale (N, 1, H, W) -> normalised (N, in_chans, H, W) as the loaders produce it."""
    x = images.expand(-1, preprocessing.in_chans, -1, -1)
    mean = torch.tensor(preprocessing.mean).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, -1, 1, 1)
    return (x - mean) / std


def xray_like_batch(n: int, size: int = 224, *, in_chans: int = 1, seed: int = 0) -> torch.Tensor:
    """Normalised model input (n, in_chans, size, size) of ``xray_like_images`` (seed or ImageNet statistics)."""
    arch = "resnet50" if in_chans == 1 else "tv-resnet50"
    return to_model_input(xray_like_images(n, size, seed=seed), preprocessing_for(arch, size))


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> nn.Module:
    """Replace every BatchNorm's running mean/var by the cumulative average over ``batches`` (train-mode
    forwards with ``momentum=None``; Dropout stays off). Weights are untouched; returns the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    for x in batches:
        model(x)
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    return model.eval()


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to scale")
    return linears[-1]  # registration order: the classifier output layer in every zoo model


@torch.no_grad()
def scale_head_to_unit_logits(model: nn.Module, x: torch.Tensor, std: float = 1.0) -> nn.Module:
    """Shift and scale the last Linear layer so that, on batch ``x``, each class's logit has mean 0 and the logits
    have standard deviation ``std``. Returns the model in eval mode."""
    model.eval()
    z = model(x)
    spread = float((z - z.mean(0)).std())
    if not math.isfinite(spread) or spread == 0:
        raise ValueError(f"logits on the reference batch have spread {spread}; calibrate BatchNorm first")
    fc = _last_linear(model)
    k = std / spread
    fc.weight.mul_(k)
    if fc.bias is not None:
        fc.bias.sub_(z.mean(0)).mul_(k)
    else:
        raise ValueError("the last Linear layer has no bias; cannot centre the logits")
    return model


def scale_logits(model: nn.Module, factor: float) -> nn.Module:
    """Multiply the model's logits by ``factor`` (scales the last Linear layer): same Grad-CAM shape, more or less
    confident probabilities."""
    fc = _last_linear(model)
    with torch.no_grad():
        fc.weight.mul_(factor)
        if fc.bias is not None:
            fc.bias.mul_(factor)
    return model


def build_demo_model(
    arch: str, *, input_size: int = 64, seed: int = 0, n_calibration: int = 16, damped: bool = False
) -> nn.Module:
    """A zoo model with random weights (``torch.manual_seed(seed)``), BatchNorm calibrated and head scaled on
    X-ray-like inputs; eval mode. ``damped``: residual branches damped first (``damp_residual_branches``)."""
    torch.manual_seed(seed)
    model = build_model(arch, input_size=input_size)
    if damped:
        damp_residual_branches(model)
    in_chans = preprocessing_for(arch, input_size).in_chans
    calibrate_batchnorm(model, [xray_like_batch(n_calibration, input_size, in_chans=in_chans, seed=seed + 1)])
    return scale_head_to_unit_logits(
        model, xray_like_batch(n_calibration, input_size, in_chans=in_chans, seed=seed + 2)
    )


def hook_target(model: nn.Module) -> nn.Module:
    """The submodule whose output is ``model.features(x)`` (a zoo model; the registry's default target layer):
    where a classic hook-based Grad-CAM attaches."""
    family = family_of(model.config.arch)
    if family.target_layer is None:
        raise ValueError(f"no fixed Grad-CAM target layer for {model.config.arch}; use registry.resolve_target")
    return model.get_submodule(family.target_layer(model))


_NOT_MEDICAL = "its heatmaps show the pipeline working, not medical evidence"
DEMO_NOTE_SYNTHETIC = (
    f"demonstration model: random weights, BatchNorm calibrated on synthetic X-ray-like images; {_NOT_MEDICAL}"
)
DEMO_NOTE_FITTED = (
    "demonstration model: random weights, BatchNorm calibrated and the output layer fitted on the sample images it "
    f"is shown with; {_NOT_MEDICAL}"
)


def fit_output_layer(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, *, steps: int = 300) -> nn.Module:
    """Fit only the last Linear layer to ``labels`` on the fixed inputs ``x`` (logistic regression on the
    penultimate activations; few enough steps that the probabilities stay below saturation). Returns the model in
    eval mode."""
    model.eval()
    fc = _last_linear(model)
    captured: list[torch.Tensor] = []
    handle = fc.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    h = captured[0]
    optimizer = torch.optim.Adam(fc.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(fc(h), labels).backward()
        optimizer.step()
    return model.eval()


def damp_residual_branches(model: nn.Module, factor: float = 0.1) -> nn.Module:
    """Scale the last BatchNorm of every residual branch (a ResNet's ``Bottleneck.bn3`` / ``BasicBlock.bn2``) by
    ``factor``; other families are left as they are. Why: a random ResNet-101 adds 33 random branches at full
    strength, and its Grad-CAM maps become chaotic, as a trained network's are not. Measured on the CPU with the
    demo model fitted on the 16 sample X-rays, bfloat16 autocast against float32 maps, median correlation per image:
    0.44 as built; damped before calibration by 0.5, 0.86; by 0.25, 0.97; by 0.1, 0.993. Call it before
    ``calibrate_batchnorm``, so that the later layers' statistics see the damped branches."""
    with torch.no_grad():
        for block in model.modules():
            if not hasattr(block, "downsample"):  # a residual block (ours and torchvision's have the attribute)
                continue
            last = getattr(block, "bn3", None) or getattr(block, "bn2", None)
            if isinstance(last, nn.BatchNorm2d):
                last.weight.mul_(factor)
                last.bias.mul_(factor)
    return model


def save_demo_checkpoint(
    path: str, arch: str = "resnet101", *, seed: int = 0, data: str | None = None, damped: bool = False
) -> str:
    """Save a demonstration model for ``arch`` at its 224 input in enhancer's checkpoint format, marked as such in
    its metadata (``enhancer inspect`` shows the note).

    Without ``data`` it is calibrated on synthetic X-ray-like images. With ``data`` (an ImageFolder, e.g. the 16
    sample X-rays) BatchNorm is calibrated on those images and the output layer fitted to their labels, so that a
    demo on them shows varied, mostly correct predictions; it has learnt nothing beyond them. ``damped``: residual
    branches damped first (``damp_residual_branches``), for maps that are as stable under rounding as a trained
    network's (the GPU check compares bfloat16 maps with float32 ones)."""
    from enhancer.models.checkpoints import save_checkpoint

    preprocessing = preprocessing_for(arch, 224)
    if data is None:
        model = build_demo_model(arch, input_size=224, seed=seed, damped=damped)
    else:
        from enhancer.data import make_loader, scan, validate

        samples, _ = validate(list(scan(data).samples)[:64], level="full")
        batches = list(make_loader(samples, preprocessing, batch_size=64, loader="torch", device="cpu", num_threads=0))
        x = torch.cat([b.image for b in batches])
        labels = torch.cat([b.label for b in batches])
        torch.manual_seed(seed)
        model = build_model(arch, input_size=224)
        if damped:
            damp_residual_branches(model)
        calibrate_batchnorm(model, [x])
        scale_head_to_unit_logits(model, x)
        fit_output_layer(model, x, labels)
    note = DEMO_NOTE_SYNTHETIC if data is None else DEMO_NOTE_FITTED
    save_checkpoint(path, model, preprocessing=preprocessing, meta={"demo": True, "note": note})
    return path
