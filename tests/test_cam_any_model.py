"""Head-only gradients for any classifier: the forward hook that cuts the graph at the target layer gives exactly the
gradient of a hook + full backward through the whole network, on the seed's ResNet-101 and VGG-16 and on
torchvision's DenseNet-121, EfficientNet-B0, ConvNeXt-Tiny and MobileNet-V3-Large; grad mode, autocast and hooks
are restored whatever happens; a bad layer is a clear error."""

from __future__ import annotations

import functools
import re

import pytest
import torch
import torchvision
from torch import nn

from enhancer.explain.cam import METHODS, CamSettings
from enhancer.explain.capture import LayerError, layer_gradients
from enhancer.explain.compute import compute_cam
from enhancer.explain.methods import eigen_projection
from enhancer.explain.perturbation import ablation_values
from enhancer.models.demo import build_demo_model, calibrate_batchnorm, scale_head_to_unit_logits, xray_like_batch
from enhancer.models.registry import SplitView, family_of

# (builder, target layer, input size): the last spatial stage before the global pooling; 96 px keeps the CPU cost
# low and still gives 3x3 maps (6x6 for VGG's stride 16)
ARCHS = {
    "resnet101": ("zoo", "resnet.layer4", 96),
    "vgg16": ("zoo", "feature_extractor", 96),
    "densenet121": ("tv", "features.norm5", 96),
    "efficientnet_b0": ("tv", "features.8", 96),
    "convnext_tiny": ("tv", "features.7", 96),
    "mobilenet_v3_large": ("tv", "features.16", 96),
}


@functools.cache
def fair_model(arch: str) -> nn.Module:
    """Random weights made a fair test subject: BatchNorm calibrated and the last Linear layer scaled on X-ray-like
    inputs, so activations stay finite and the logits are of order 1 (no saturated softmax)."""
    kind, _, size = ARCHS[arch]
    if kind == "zoo":
        return build_demo_model(arch, input_size=size, n_calibration=8)
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=2)
    calibrate_batchnorm(model, [xray_like_batch(8, size, in_chans=3, seed=1)])
    return scale_head_to_unit_logits(model, xray_like_batch(8, size, in_chans=3, seed=2))


def batch_for(arch: str, n: int = 4) -> torch.Tensor:
    kind, _, size = ARCHS[arch]
    return xray_like_batch(n, size, in_chans=1 if kind == "zoo" else 3, seed=7)


def full_backward(
    model: nn.Module, x: torch.Tensor, layer: nn.Module, target: torch.Tensor, score: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The classic way: a forward hook keeps the layer's output, autograd runs through the whole network (input
    included) from the summed scores. Returns (activations, gradients, logits)."""
    saved: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        saved["a"] = out.clone().detach()  # a copy: DenseNet's in-place ReLU overwrites the output afterwards
        out.register_hook(lambda g: saved.__setitem__("g", g))

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x.clone().requires_grad_(True))
            z = logits.gather(1, target[:, None])[:, 0]
            if score == "prob":  # log-odds, the form the product differentiates (RAW_CAM_SCALE_NOTE)
                others = logits.masked_fill(nn.functional.one_hot(target, logits.shape[1]).bool(), float("-inf"))
                z = z - others.logsumexp(1)
            z.sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    return saved["a"], saved["g"], logits.detach()


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Equal within ``rel`` times the largest magnitude of expected, per image."""
    scale = expected.flatten(1).abs().amax(1).clamp_min(1e-30).view(-1, *[1] * (expected.ndim - 1))
    err = ((actual - expected).abs() / scale).max()
    assert err <= rel, f"max relative error {err:.3g} > {rel}"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_head_only_equals_full_backward(arch: str) -> None:
    model, x = fair_model(arch), batch_for(arch)
    layer = model.get_submodule(ARCHS[arch][1])
    settings = CamSettings(score="prob", channel_reduce="sum")  # the seed's score, in its log-odds form
    cut = layer_gradients(model, x, layer, settings)
    a, g, logits = full_backward(model, x, layer, cut.target, "prob")
    torch.testing.assert_close(cut.logits, logits, rtol=1e-5, atol=1e-5)
    assert_close_rel(cut.activations, a, 1e-5)
    assert_close_rel(cut.gradients, g, 1e-5)
    ref_raw = torch.einsum("nk,nkhw->nhw", g.mean((2, 3)), a).relu()
    r = compute_cam(model, x, layer=layer, settings=settings)  # the forward hook
    assert_close_rel(r.raw, ref_raw, 1e-5)
    # the closed form through the halves the enhance job uses at this layer: the zoo model itself, or the registry's
    # view of the torchvision family at its default layer
    split = model if ARCHS[arch][0] == "zoo" else SplitView(model, family_of(f"tv:{arch}"))
    assert_close_rel(compute_cam(model, x, split=split, settings=settings).raw, ref_raw, 1e-5)
    # a fair subject: maps with positive evidence that are not constant, finite, in [0, 1]
    assert (~r.empty).sum() >= 2, r.logits
    assert (r.cam[~r.empty].flatten(1).std(1) > 0.05).all()
    assert torch.isfinite(r.cam).all() and r.cam.min() >= 0 and r.cam.max() <= 1


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(64, 2)
    ).eval()


def test_grad_mode_autocast_and_hooks_are_restored_even_on_errors() -> None:
    model, x = _tiny(), torch.randn(2, 1, 4, 4)
    for bad in (model[4], model[3]):  # Linear: (N, 2); Flatten: (N, 64)
        with pytest.raises(LayerError, match=r"'[34]' outputs .* not a spatial \(N, C, h, w\) feature map"):
            compute_cam(model, x, layer=bad)
        assert torch.is_grad_enabled() and not bad._forward_hooks
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        r = compute_cam(model, x, layer=model[2])
        assert not torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
    assert r.logits.dtype == torch.float32  # after the layer the network ran in float32
    assert torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu") and not model[2]._forward_hooks


def test_layer_errors_name_the_layer_and_the_fix() -> None:
    model, x = _tiny(), torch.randn(2, 1, 4, 4)
    relu = nn.ReLU()
    twice = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), relu, nn.Conv2d(4, 4, 3, padding=1), relu, nn.Flatten())
    twice.append(nn.Linear(64, 2)).eval()
    with pytest.raises(LayerError, match="'1' runs more than once per forward"):
        compute_cam(twice, x, layer=relu)
    with pytest.raises(LayerError, match="'Conv2d' did not run"):
        compute_cam(model, x, layer=nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="eval mode"):
        compute_cam(model.train(), x, layer=model[2])
    with pytest.raises(ValueError, match=re.escape("method='gradcam+' is not valid; choose one of 'gradcam', 'hir")):
        CamSettings(method="gradcam+")
    with pytest.raises(ValueError, match="scorecam_batch=0 must be an integer >= 1"):
        CamSettings(scorecam_batch=0)


@functools.cache
def _independence_subjects() -> tuple[tuple[nn.Module, nn.Module | None, nn.Module | None], ...]:
    """(model, layer, halves) in float64: TinyVGG (the features/head closed form) and a generic CNN (the hook path)."""
    tiny = build_demo_model("tinyvgg", input_size=32, n_calibration=8).double()
    generic = _generic_cnn().double()
    return (tiny, None, tiny), (generic, generic[8], None)


def _generic_cnn() -> nn.Module:
    """No features/head halves, a flatten + linear head (not global pooling): the hook path. Layer ``"8"``: 64
    channels at 4x4 for 32 px inputs (more channels than pixels, the other eigen branch than TinyVGG's)."""
    torch.manual_seed(3)
    layers: list[nn.Module] = []
    for c_in, c_out in ((1, 8), (8, 32), (32, 64)):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 16, 2))
    calibrate_batchnorm(model, [xray_like_batch(16, 32, seed=1)])
    return scale_head_to_unit_logits(model, xray_like_batch(16, 32, seed=2))


@pytest.mark.parametrize("method", METHODS)
def test_each_map_depends_on_its_own_image_only(method: str) -> None:
    # float64 isolates the algorithm from the CPU kernels' batch-size-dependent summation order. Copies per forward
    # (7) straddle images, so Score-/Ablation-CAM batches mix them.
    for model, layer, split in _independence_subjects():
        x = xray_like_batch(4, 32, seed=11).double()
        other = xray_like_batch(3, 32, seed=12).double()
        settings = CamSettings(method=method, scorecam_batch=7)
        full = compute_cam(model, x, layer=layer, split=split, settings=settings)
        assert (~full.empty).sum() >= 3 and (full.cam[~full.empty].flatten(1).std(1) > 0.01).all()
        for i in range(len(x)):
            alone = compute_cam(model, x[i : i + 1], layer=layer, split=split, settings=settings)
            mixed = compute_cam(model, torch.cat([other, x[i : i + 1]]), layer=layer, split=split, settings=settings)
            for r in (alone, mixed):
                torch.testing.assert_close(r.cam[-1], full.cam[i], rtol=0, atol=1e-6)
                torch.testing.assert_close(r.raw[-1], full.raw[i], rtol=1e-6, atol=1e-6 * float(full.raw_max[i]))
                assert torch.equal(r.target[-1], full.target[i])


@pytest.mark.parametrize("shape", [(3, 40, 4, 5), (3, 6, 5, 5)], ids=["pixels<=channels", "pixels>channels"])
def test_eigen_projection_is_the_first_principal_component(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    n, k, h, w = shape
    # a dominant direction plus noise, so the first component is well defined
    a = torch.randn(n, k, 1, 1, generator=g, dtype=torch.float64) * torch.randn(n, 1, h, w, generator=g) * 3
    a = a + torch.randn(n, k, h, w, generator=g, dtype=torch.float64)
    m = a.flatten(2).transpose(1, 2)
    m = m - m.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(m, full_matrices=False)
    p = (m @ vh[:, 0, :, None])[..., 0]
    p = torch.where((p.amin(1).abs() > p.amax(1).abs())[:, None], -p, p)  # largest magnitude positive
    torch.testing.assert_close(eigen_projection(a), p.view(n, h, w), rtol=1e-9, atol=1e-9)
    assert (eigen_projection(a).flatten(1).amax(1) >= eigen_projection(a).flatten(1).amin(1).abs()).all()
    # a sign flip of the activations flips the centred data, not the map's convention
    torch.testing.assert_close(eigen_projection(-a), eigen_projection(a) * 1.0, rtol=1e-9, atol=1e-9)


def test_ablation_value_is_zero_for_relu_outputs_else_far_below() -> None:
    a = torch.tensor([[[[0.0, 2.0]]], [[[-1.5, 3.0]]], [[[0.5, 1.0]]]], dtype=torch.float64)
    assert ablation_values(a).tolist() == [0.0, -1.5 - 1e7, 0.5 - 1e7]
