"""Grad-CAM engine: head-only gradients against a hook + full-backward reference, pytorch-grad-cam, the seed's
semantics on a hand-computed example, batch independence and the saturated-softmax trap."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from enhancer.explain.cam import RAW_CAM_SCALE_NOTE, CamSettings, grad_cam, prefers_channels_last, upsample
from enhancer.models.demo import build_demo_model, hook_target, scale_logits, xray_like_batch
from enhancer.models.zoo import ZOO
from tests.tools.missing import require_module

SIZE = 64
_MODELS: dict[str, nn.Module] = {}


def demo(arch: str) -> nn.Module:
    if arch not in _MODELS:
        _MODELS[arch] = build_demo_model(arch, input_size=SIZE, seed=0)
    return _MODELS[arch]


def batch(arch: str, n: int = 4, seed: int = 7) -> torch.Tensor:
    return xray_like_batch(n, SIZE, in_chans=3 if arch.startswith("tv-") else 1, seed=seed)


def reference_grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    score: str = "prob",
    reduce: str = "mean",
    target: torch.Tensor | None = None,
    layer: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The classic way: a forward hook on the target layer, a full backward pass from the score through the whole
    network (input included), weights = spatial mean of the hooked gradient. Returns (raw map, logits)."""
    saved: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        saved["a"] = out
        out.register_hook(lambda g: saved.__setitem__("g", g))

    handle = (layer or hook_target(model)).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x.clone().requires_grad_(True))
            t = logits.argmax(1) if target is None else target
            s = logits.softmax(1) if score == "prob" else logits
            s.gather(1, t[:, None]).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    cam = (saved["g"].mean((2, 3), keepdim=True) * saved["a"]).detach()
    cam = cam.mean(1) if reduce == "mean" else cam.sum(1)
    return cam.relu(), logits.detach()


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Equal to ``rel`` times the largest magnitude of expected (per image)."""
    scale = expected.flatten(1).abs().amax(1).clamp_min(1e-30)[:, None, None]
    err = ((actual - expected).abs() / scale).max()
    assert err <= rel, f"max relative error {err:.3g} > {rel}"


@pytest.mark.parametrize("arch", list(ZOO))
def test_head_only_equals_full_backward_reference(arch: str) -> None:
    model, x = demo(arch), batch(arch, n=6)
    for score in ("prob", "logit"):
        r = grad_cam(model, x, CamSettings(score=score))
        ref_raw, ref_logits = reference_grad_cam(model, x, score)
        torch.testing.assert_close(r.logits, ref_logits, rtol=1e-5, atol=1e-5)
        if score == "prob":
            # raw is the log-odds map; the seed's probability map is raw * p_c (1 - p_c) (RAW_CAM_SCALE_NOTE)
            p = r.probs.gather(1, r.target[:, None])[:, 0]
            assert_close_rel(r.raw * (p * (1 - p))[:, None, None], ref_raw, 1e-5)
        else:
            assert_close_rel(r.raw, ref_raw, 1e-5)
        ref_max = ref_raw.flatten(1).amax(1)
        ref_cam = torch.where(ref_max[:, None, None] > 0, ref_raw / ref_max.clamp_min(1e-30)[:, None, None], 0)
        assert_close_rel(r.cam, ref_cam, 1e-5)
        # the test model must be a fair one: maps non-trivial, values in [0, 1], no NaN
        assert (~r.empty).sum() >= 1, r.logits
        assert torch.isfinite(r.cam).all() and r.cam.min() >= 0 and r.cam.max() <= 1
        assert torch.allclose(r.cam.flatten(1).amax(1), (~r.empty).float())


@pytest.mark.parametrize("arch", ["resnet101", "tinyvgg"])
def test_matches_pytorch_grad_cam(arch: str) -> None:
    GradCAM = require_module("pytorch_grad_cam", install="grad-cam==1.5.7").GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = demo(arch), batch(arch)
    r = grad_cam(model, x, CamSettings(score="logit", channel_reduce="sum", normalize="minmax"))
    with GradCAM(model=model, target_layers=[hook_target(model)]) as gc:
        theirs = torch.from_numpy(gc(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in r.pred]))
    model.zero_grad(set_to_none=True)
    # pytorch-grad-cam min-max scales, resizes to the input with cv2 (bilinear) and min-max scales again
    up = upsample(r.cam, x.shape[-2:])
    low, high = up.flatten(1).amin(1)[:, None, None], up.flatten(1).amax(1)[:, None, None]
    ours = (up - low) / (high - low).clamp_min(1e-7)
    assert (~r.empty).sum() >= 2
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


class _Identity(nn.Module):
    """features = identity, head = global average pool + Linear(2, 2) with weights I: logit_k = mean(a_k)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Identity()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2))
            self.fc.bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(a.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_seed_semantics_hand_computed() -> None:
    # a_0 = [[4, 2], [0, 0]], a_1 = [[0, 1], [0, 2]]: logits (1.5, 0.75), predicted class 0, p_0 = sigmoid(0.75).
    # d p_0 / d a_0 = p_0 p_1 / 4 per pixel, d p_0 / d a_1 = -p_0 p_1 / 4: channel weights (w, -w), w = p_0 p_1 / 4;
    # seed map = ReLU(mean_k w_k a_k) = ReLU(p_0 p_1 (a_0 - a_1) / 8) = p_0 p_1 * [[0.5, 0.125], [0, 0]],
    # divided by its max: [[1, 0.25], [0, 0]]. The stored raw (log-odds scale) is [[0.5, 0.125], [0, 0]].
    x = torch.tensor([[[[4.0, 2.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 2.0]]]])
    model = _Identity().eval()
    p0 = 1 / (1 + math.exp(-0.75))
    r = grad_cam(model, x)
    assert r.pred.tolist() == [0] and r.target.tolist() == [0]
    torch.testing.assert_close(r.logits, torch.tensor([[1.5, 0.75]]))
    torch.testing.assert_close(r.probs, torch.tensor([[p0, 1 - p0]]))
    torch.testing.assert_close(r.cam, torch.tensor([[[1.0, 0.25], [0.0, 0.0]]]))
    torch.testing.assert_close(r.raw, torch.tensor([[[0.5, 0.125], [0.0, 0.0]]]))
    torch.testing.assert_close(r.raw_max, torch.tensor([0.5]))
    seed_raw = p0 * (1 - p0) * torch.tensor([[[0.5, 0.125], [0.0, 0.0]]])  # = [[0.108947, 0.027237], [0, 0]]
    torch.testing.assert_close(reference_grad_cam(model, x, layer=model.trunk)[0], seed_raw)
    assert abs(float(seed_raw[0, 0, 0]) - 0.108947) < 1e-6

    # explaining class 1 flips the weights: ReLU((a_1 - a_0) / 8) = [[0, 0], [0, 0.25]] -> [[0, 0], [0, 1]]
    for settings, labels in ((CamSettings(target=1), None), (CamSettings(target="label"), torch.tensor([1]))):
        r1 = grad_cam(model, x, settings, labels=labels)
        assert r1.target.tolist() == [1] and r1.pred.tolist() == [0]
        torch.testing.assert_close(r1.cam, torch.tensor([[[0.0, 0.0], [0.0, 1.0]]]))
    # logit score, sum over channels: weights (1/4, 0) -> a_0 / 4 = [[1, 0.5], [0, 0]]
    r2 = grad_cam(model, x, CamSettings(score="logit", channel_reduce="sum"))
    torch.testing.assert_close(r2.raw, torch.tensor([[[1.0, 0.5], [0.0, 0.0]]]))
    # min-max: (raw - 0) / (1 - 0) here, since the min is 0 after ReLU
    r3 = grad_cam(model, x, CamSettings(score="logit", channel_reduce="sum", normalize="minmax"))
    torch.testing.assert_close(r3.cam, torch.tensor([[[1.0, 0.5], [0.0, 0.0]]]))


def test_empty_map_is_zeros_and_flagged_never_nan() -> None:
    model = _Identity().eval()
    x = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # target 1 has no positive evidence
    for normalize in ("max", "minmax"):
        r = grad_cam(model, x, CamSettings(target=1, normalize=normalize))
        assert r.empty.tolist() == [True] and r.raw_max.tolist() == [0.0]
        assert torch.equal(r.cam, torch.zeros(1, 2, 2))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_map_does_not_depend_on_the_rest_of_the_batch(dtype: torch.dtype) -> None:
    # float64 isolates the algorithm: no batch statistics, no cross-image term. In float32 the CPU convolution
    # libraries pick batch-size-dependent kernels (different summation order), which moves maps by ~1e-4.
    model = copy.deepcopy(demo("resnet50")).to(dtype)
    x, other = batch("resnet50", n=6).to(dtype), batch("resnet50", n=3, seed=99).to(dtype)
    tol = 1e-6 if dtype == torch.float64 else 1e-3
    full = grad_cam(model, x)
    assert (~full.empty).sum() >= 3
    for i in range(len(x)):
        alone = grad_cam(model, x[i : i + 1])
        mixed = grad_cam(model, torch.cat([other, x[i : i + 1]]))
        for r in (alone, mixed):
            torch.testing.assert_close(r.cam[-1], full.cam[i], rtol=0, atol=tol)
            torch.testing.assert_close(r.raw[-1], full.raw[i], rtol=0, atol=tol * float(full.raw_max.max()))
            assert torch.equal(r.pred[-1], full.pred[i])


@pytest.mark.parametrize("gap", [30.0, 110.0])
@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_probability_map_survives_a_saturated_softmax(autocast: bool, gap: float) -> None:
    model = demo("resnet50")
    xs = batch("resnet50", n=6)
    moderate = grad_cam(model, xs)
    i = int((~moderate.empty).nonzero()[0])  # an image with a non-trivial map
    x = xs[i : i + 1]
    z = moderate.logits[i]
    # a power-of-two factor scales every head gradient exactly: any difference left would come from the algorithm
    # (random models' maps are sums of 2048 nearly cancelling terms, so 1-ulp weight changes would show)
    factor = 2.0 ** math.ceil(math.log2(gap / float((z[0] - z[1]).abs())))
    hot = scale_logits(copy.deepcopy(model), factor)  # same map, confident model
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        calm = grad_cam(model, x)
        sat = grad_cam(hot, x)
        seed_calm, _ = reference_grad_cam(model, x)
        seed_sat, _ = reference_grad_cam(hot, x)
    assert sat.logits.dtype == torch.float32  # the head ran in float32 under bf16 autocast
    measured_gap = float((sat.logits[0, 0] - sat.logits[0, 1]).abs())
    if not autocast:  # a bf16 trunk moves the logits, but far beyond saturation all the same
        assert gap <= measured_gap < 2 * gap
    assert measured_gap > 17
    assert float(sat.probs.max()) == 1.0  # exactly 1 in float32: the seed's gradient p_c (1 - p_c) vanishes
    seed_ratio = float(seed_sat.float().abs().max() / seed_calm.float().abs().max())
    assert seed_ratio < 1e-9 if gap == 30.0 else seed_ratio == 0.0  # softmax's p_other underflows at gap > ~104
    assert not sat.empty.any() and float(sat.raw_max[0]) > 0  # the log-odds form does not vanish
    torch.testing.assert_close(sat.cam, calm.cam, rtol=0, atol=1e-5)
    # 2 classes: log-odds = z_c - z_other, so the raw map scales with the logits
    torch.testing.assert_close(sat.raw / sat.raw_max, calm.raw / calm.raw_max, rtol=0, atol=1e-5)


def test_amp_is_a_no_op_off_cuda_and_channels_last_gives_the_same_maps() -> None:
    model, x = demo("tinyvgg"), batch("tinyvgg")
    base = grad_cam(model, x)
    assert torch.equal(base.raw, grad_cam(model, x, CamSettings(amp="bf16")).raw)
    # channels_last applies on every device (the job uses it where it is faster): other kernels, the same maps
    nhwc_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    nhwc = grad_cam(nhwc_model, x, CamSettings(channels_last=True))
    torch.testing.assert_close(nhwc.raw, base.raw, rtol=1e-4, atol=1e-6 * float(base.raw.abs().max()))
    torch.testing.assert_close(nhwc.cam, base.cam, rtol=0, atol=1e-4)
    assert torch.equal(nhwc.pred, base.pred)


def test_damped_demo_resnet_keeps_its_maps_under_bf16_rounding() -> None:
    """A random ResNet-101's maps are chaotic: bfloat16 autocast alone decorrelates them from the float32 maps. With
    its residual branches damped (what the GPU check's demo model uses) they agree as a trained network's do."""
    x = xray_like_batch(8, 128, in_chans=1, seed=5)

    def bf16_agreement(model: nn.Module) -> float:
        fp32 = upsample(grad_cam(model, x).cam, x.shape[-2:]).flatten(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = upsample(grad_cam(model, x).cam, x.shape[-2:]).flatten(1)
        corr = [torch.corrcoef(torch.stack([a, b]))[0, 1] for a, b in zip(fp32, bf16.float(), strict=True)]
        return float(torch.stack(corr).nanmedian())

    assert bf16_agreement(build_demo_model("resnet101", input_size=128)) < 0.5
    assert bf16_agreement(build_demo_model("resnet101", input_size=128, damped=True)) >= 0.95


def test_channels_last_rule() -> None:
    assert prefers_channels_last("cuda") and prefers_channels_last(torch.device("cuda", 1))
    cpu = torch.backends.cpu.get_cpu_capability()
    assert prefers_channels_last("cpu") == (cpu in ("AVX2", "AVX512"))


def test_settings_validate_and_round_trip() -> None:
    s = CamSettings(
        method="gradcam++",
        target=1,
        score="logit",
        channel_reduce="sum",
        normalize="minmax",
        amp="bf16",
        scorecam_batch=8,
    )
    assert CamSettings.from_dict(s.to_dict()) == s
    assert CamSettings().to_dict() == {
        "method": "gradcam",
        "target": "predicted",
        "score": "prob",
        "channel_reduce": "mean",
        "normalize": "max",
        "amp": None,
        "channels_last": False,
        "scorecam_batch": 64,
    }
    for bad in (
        {"score": "softmax"},
        {"target": "best"},
        {"target": -1},
        {"normalize": "l2"},
        {"amp": "fp8"},
        {"method": "gradcam+"},
    ):
        with pytest.raises(ValueError, match="choose"):
            CamSettings(**bad)
    with pytest.raises(ValueError, match="unknown"):
        CamSettings.from_dict({"scores": "prob"})
    assert "log-odds" in RAW_CAM_SCALE_NOTE


def test_usage_errors() -> None:
    model = _Identity()
    x = torch.ones(1, 2, 2, 2)
    with pytest.raises(ValueError, match="eval mode"):
        grad_cam(model.train(), x)
    model.eval()
    with pytest.raises(ValueError, match="needs labels"):
        grad_cam(model, x, CamSettings(target="label"))
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(model, x, CamSettings(target=5))
