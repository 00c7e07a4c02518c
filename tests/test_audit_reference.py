"""ROAD and confidence drop / increase equal pytorch-grad-cam 1.5.7 (the test reference, never imported by the
product) within 1e-4 on real X-rays: the 16 sample images, a demonstration TinyVGG, its Grad-CAM maps and smooth
random maps, both scores (logit: ``ClassifierOutputTarget``, probability: ``ClassifierOutputSoftmaxTarget``).
ROAD's imputation noise is set to 0 on both sides (it is a seeded draw on ours, an unseeded one on theirs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enhancer.audit.faithfulness import PERCENTILES, Scorer, confidence_change, random_maps, road
from enhancer.audit.maps import cam_map_fn, compute_maps
from tests.tools.missing import require_module

road_ref = require_module("pytorch_grad_cam.metrics.road", install="grad-cam==1.5.7")
pc = require_module("pytorch_grad_cam.metrics.perturbation_confidence", install="grad-cam==1.5.7")
cmi = require_module("pytorch_grad_cam.metrics.cam_mult_image", install="grad-cam==1.5.7")
targets_ref = require_module("pytorch_grad_cam.utils.model_targets", install="grad-cam==1.5.7")

SIZE = 64  # the real images at a small model input keep the reference's per-image sparse solves quick


@pytest.fixture(scope="module")
def xray_case(kermany_dir):
    from enhancer.data import make_loader, scan
    from enhancer.models.demo import build_demo_model
    from enhancer.models.zoo import preprocessing_for

    model = build_demo_model("tinyvgg", input_size=SIZE, seed=3)
    found = scan(str(kermany_dir)).samples
    chosen = [s for s in found if s.label == 0][:3] + [s for s in found if s.label == 1][:3]
    loader = make_loader(chosen, preprocessing_for("tinyvgg", SIZE), batch_size=8, loader="torch", num_threads=0)
    x = torch.cat([b.image for b in loader])
    target = model(x).argmax(1).detach()
    gradcam = compute_maps(cam_map_fn(), model, x, target)
    random = random_maps(len(x), (SIZE // 4, SIZE // 4), (SIZE, SIZE), generator=torch.Generator().manual_seed(0))
    assert gradcam.flatten(1).amax(1).gt(0).all()  # real maps, not empty ones
    return model, x, target, {"gradcam": gradcam, "random": random}


def _targets(score: str, target: torch.Tensor) -> list:
    cls = targets_ref.ClassifierOutputTarget if score == "logit" else targets_ref.ClassifierOutputSoftmaxTarget
    return [cls(int(t)) for t in target]


def _reference_road(order: str, model, x, maps: np.ndarray, targets: list) -> np.ndarray:
    remove = pc.RemoveMostRelevantFirst if order == "morf" else pc.RemoveLeastRelevantFirst
    averager = pc.AveragerAcrossThresholds(
        lambda p: pc.PerturbationConfidenceMetric(remove(p, road_ref.NoisyLinearImputer(noise=0.0))), list(PERCENTILES)
    )
    return averager(x, maps, targets, model)


@pytest.mark.parametrize("score", ["logit", pytest.param("prob", marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", ["gradcam", "random"])
def test_road_equals_pytorch_grad_cam(xray_case, score, kind):
    model, x, target, maps = xray_case
    m = maps[kind]
    scorer = Scorer(model, target, score=score)
    for order in ("morf", "lerf"):
        ours = road(scorer, x, m, order=order, noise=0.0).numpy()
        ref = _reference_road(order, model, x, m.numpy(), _targets(score, target))
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
        assert np.abs(ours).max() > 1e-3  # the removals do move the score


@pytest.mark.parametrize("score", ["logit", "prob"])
def test_confidence_drop_and_increase_equal_pytorch_grad_cam(xray_case, score):
    model, x, target, maps = xray_case
    for m in maps.values():
        change = confidence_change(Scorer(model, target, score=score), x, m).numpy()
        drop = cmi.DropInConfidence()(x, m.numpy(), _targets(score, target), model)
        increase = cmi.IncreaseInConfidence()(x, m.numpy(), _targets(score, target), model)
        np.testing.assert_allclose(np.maximum(-change, 0), drop, atol=1e-4, rtol=0)
        np.testing.assert_array_equal((change > 0).astype(np.float32), increase)
