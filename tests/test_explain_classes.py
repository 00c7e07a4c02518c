"""The explained-class policies (--explain): which classes of each image get a map, in which slot."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from enhancer.explain.classes import explained_classes, union_maps
from enhancer.settings import ExplainPolicy

PROBS = torch.tensor([[0.9, 0.2, 0.6, 0.1], [0.1, 0.3, 0.2, 0.4], [0.5, 0.5, 0.7, 0.8]], dtype=torch.float64)
LOGITS = (PROBS / (1 - PROBS)).log()  # sigmoid(LOGITS) == PROBS


def _slots(text: str, **kw) -> list[list[int]]:
    return explained_classes(LOGITS, ExplainPolicy.parse(text), activation="sigmoid", **kw).tolist()


def test_policies_fill_their_slots() -> None:
    assert _slots("all") == [[0, 1, 2, 3]] * 3
    assert _slots("pred") == [[0, 2, -1, -1], [3, -1, -1, -1], [0, 1, 2, 3]]  # image 1: none >= 0.5, its top one
    assert _slots("pred", threshold=0.65) == [[0, -1, -1, -1], [3, -1, -1, -1], [2, 3, -1, -1]]
    assert _slots("top:2") == [[0, 2], [3, 1], [3, 2]]
    assert (
        _slots("Mass,Atelectasis", class_ids=ExplainPolicy.parse("Mass,Atelectasis").class_ids(NAMES)) == [[2, 0]] * 3
    )
    targets = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0], [-1, 0, 1, 0]])
    assert _slots("label", targets=targets) == [[1, 3, -1, -1], [3, -1, -1, -1], [2, -1, -1, -1]]
    assert _slots("label", labels=torch.tensor([1, -1, 0])) == [[1, -1, -1, -1], [3, -1, -1, -1], [0, -1, -1, -1]]


NAMES = ("Atelectasis", "Cardiomegaly", "Mass", "Nodule")


def test_policy_parsing_and_errors() -> None:
    assert ExplainPolicy.parse("top:3").slots(14) == 3 and ExplainPolicy.parse("top:30").slots(14) == 14
    assert ExplainPolicy.parse("all").slots(14) == 14 and not ExplainPolicy.parse("auto").per_class
    assert ExplainPolicy.parse("Nodule, 1").class_ids(NAMES) == (3, 1)
    with pytest.raises(ValueError, match="top:K needs a whole number"):
        ExplainPolicy.parse("top:x")
    with pytest.raises(ValueError, match="no class 'Hernia'.*Atelectasis, Cardiomegaly"):
        ExplainPolicy.parse("Hernia").class_ids(NAMES)
    with pytest.raises(ValueError, match="listed twice"):
        ExplainPolicy.parse("Mass,2").class_ids(NAMES)
    with pytest.raises(ValueError, match="labels"):
        _slots("label")


def test_union_is_the_max_over_filled_slots() -> None:
    maps = torch.stack([torch.full((2, 2), 0.2), torch.full((2, 2), 0.9)])[None]  # (1, 2, 2, 2)
    assert union_maps(maps, torch.tensor([[0, 1]])).max() == pytest.approx(0.9)
    assert union_maps(maps, torch.tensor([[0, -1]])).max() == pytest.approx(0.2)  # the empty slot counts nowhere


def _tiny_densenet(classes: int = 5) -> tuple[torch.nn.Module, object]:
    """A small torchvision densenet (random weights, BatchNorm calibrated) built through the registry, with its
    default target layer and the features/head halves there."""
    from enhancer.models.demo import calibrate_batchnorm, xray_like_batch
    from enhancer.models.registry import build, resolve_target
    from enhancer.models.zoo import ModelConfig
    from enhancer.preprocessing import RGB_PREPROCESSING

    torch.manual_seed(0)
    model = build(ModelConfig("tv:densenet121", num_classes=classes))
    calibrate_batchnorm(model, [xray_like_batch(4, 64, in_chans=3, seed=1)])
    prep = dataclasses.replace(RGB_PREPROCESSING, size=(64, 64))
    return model.eval(), resolve_target(model, prep)


@pytest.mark.parametrize(
    ("activation", "method"), [("sigmoid", "gradcam"), ("softmax", "gradcam++"), ("sigmoid", "ablationcam")]
)
def test_every_slot_equals_a_single_class_run(method: str, activation: str) -> None:
    """The closed form (gradient methods: the head on every (image, slot) pair) and the per-slot path (ablationcam:
    one compute_cam per slot) against compute_cam with the slot's class as the target."""
    from enhancer.explain.classes import class_cams, sigmoid_settings
    from enhancer.explain.compute import compute_cam
    from enhancer.models.demo import xray_like_batch
    from enhancer.settings import CamSettings

    classes = 3 if method == "ablationcam" else 5  # ablation: a head pass per channel, image and slot
    model, target = _tiny_densenet(classes)
    x = xray_like_batch(3, 64, in_chans=3, seed=5)
    settings = CamSettings(method=method, scorecam_batch=512)
    policy = ExplainPolicy.parse("pred")
    r = class_cams(
        model,
        x,
        layer=target.module,
        split=target.split,
        settings=settings,
        choose=lambda z: explained_classes(z, policy, activation=activation, threshold=0.2),
        activation=activation,
    )
    assert r.cam.shape == (3, classes, 2, 2) and (r.classes[:, 0] >= 0).all()
    single = sigmoid_settings(settings, activation)
    checked = 0
    for c in range(classes):
        ref = compute_cam(
            model, x, layer=target.module, split=target.split, settings=dataclasses.replace(single, target=c)
        )
        rows, slots = torch.nonzero(r.classes == c, as_tuple=True)
        checked += len(rows)
        if len(rows):
            assert (r.cam[rows, slots] - ref.cam[rows]).abs().max() <= 1e-6
            assert (r.raw[rows, slots] - ref.raw[rows]).abs().max() <= 1e-6 * max(1.0, float(ref.raw.abs().max()))
    assert checked == int((r.classes >= 0).sum()) >= 3 and (r.cam[r.classes < 0] == 0).all()
    expected = ref.logits.sigmoid() if activation == "sigmoid" else ref.logits.softmax(1)
    assert torch.allclose(r.probs, expected, atol=1e-6) and r.cam.amax((2, 3)).gt(0).any()
    if method == "gradcam":  # the forward hook at the layer, one compute_cam per slot: the same maps
        hooked = class_cams(
            model, x, layer=target.module, settings=settings, choose=lambda z: r.classes, activation=activation
        )
        assert (hooked.cam - r.cam).abs().max() <= 1e-5


def test_slots_equal_single_class_runs_in_channels_last() -> None:
    """The trunk in channels_last (the job's choice on CPUs with AVX2/AVX-512 and on CUDA): the pairs go through the
    head in the same memory format, so every slot still equals its single-class run within 1e-6."""
    from enhancer.explain.classes import class_cams
    from enhancer.explain.compute import compute_cam
    from enhancer.models.demo import xray_like_batch
    from enhancer.settings import CamSettings

    model, target = _tiny_densenet()
    model = model.to(memory_format=torch.channels_last)
    x = xray_like_batch(3, 64, in_chans=3, seed=6)
    settings = CamSettings(score="logit", channels_last=True)
    r = class_cams(model, x, split=target.split, settings=settings, choose=lambda z: torch.arange(5).expand(3, 5))
    for c in range(5):
        ref = compute_cam(model, x, split=target.split, settings=dataclasses.replace(settings, target=c))
        assert (r.cam[:, c] - ref.cam).abs().max() <= 1e-6
