"""The audit's acceptance on phantoms with known lesions (``enhancer.audit.phantoms``, as in
benchmarks/phantom_bench.py): a model trained there passes randomisation and localises (hit rate interval above
chance); the same architecture with random weights fails randomisation or localisation; a map that is the image
itself (an edge detector) fails randomisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from enhancer.audit.checks import FAIL, PASS, localisation_check, randomisation_check
from enhancer.audit.maps import cam_map_fn, compute_maps
from enhancer.audit.phantoms import TinyGapCNN, make_phantoms, model_input, train_tiny
from enhancer.audit.run import audit_batch
from enhancer.explain.localisation import boxes_mask
from tests.tools.audit_keys import VERDICT_KEYS

SIZE = 32
NAMES = ["NORMAL", "PNEUMONIA"]


@pytest.fixture(scope="module")
def phantoms():
    """Held-out phantoms (marker independent of the label) with their lesion boxes as regions."""
    ph = make_phantoms(64, SIZE, marker="random", seed=100)
    regions = boxes_mask(ph.boxes, torch.full((len(ph.labels), 2), SIZE), (SIZE, SIZE))
    return model_input(ph.images), ph.labels, regions


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return train_tiny(make_phantoms(512, SIZE, marker="random", seed=0), epochs=8, seed=0)


def edge_map(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A map that ignores the model: the Sobel gradient magnitude of the image."""
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    g = x[:, :1]
    return (F.conv2d(g, k, padding=1) ** 2 + F.conv2d(g, k.transpose(2, 3), padding=1) ** 2).sqrt()[:, 0]


def _audit(model, x, labels, regions, map_fn):
    target = model(x).argmax(1).detach()
    maps = compute_maps(map_fn, model, x, target)
    randomisation, _ = randomisation_check(model, x, target, maps, map_fn, seed=0)
    localisation, _ = localisation_check(maps, regions, labels, NAMES, source={}, seed=0)
    return target, randomisation, localisation


def test_a_trained_model_passes_randomisation_and_localises(trained, phantoms):
    x, labels, regions = phantoms
    target, randomisation, localisation = _audit(trained, x, labels, regions, cam_map_fn())
    assert (target == labels).float().mean() >= 0.9
    assert [s["name"] for s in randomisation["stages"]] == ["classifier", "feature_extractor"]
    assert randomisation["stages"][-1]["ssim"] <= randomisation["baseline_ssim_hi"]
    assert randomisation["verdict"] == PASS
    assert localisation["n"] == int(labels.sum())  # the PNEUMONIA phantoms carry the lesion boxes
    assert localisation["hit_rate"]["ci_low"] > localisation["hit_chance"] and localisation["verdict"] == PASS
    assert (
        localisation["by_class"]["PNEUMONIA"]["n"] == localisation["n"] and localisation["by_class"]["NORMAL"]["n"] == 0
    )


def test_random_weights_fail_randomisation_or_localisation(phantoms):
    x, labels, regions = phantoms
    torch.manual_seed(1)
    _, randomisation, localisation = _audit(TinyGapCNN().eval(), x, labels, regions, cam_map_fn())
    assert FAIL in (randomisation["verdict"], localisation["verdict"])
    assert localisation["hit_rate"]["ci_low"] <= localisation["hit_chance"]


def test_an_edge_detector_fails_randomisation(trained, phantoms):
    x, labels, regions = phantoms
    _, randomisation, _ = _audit(trained, x, labels, regions, edge_map)
    assert randomisation["verdict"] == FAIL
    assert all(s["ssim"] > 0.99 for s in randomisation["stages"])  # the maps never change


def test_the_whole_batch_audit_on_phantoms_writes_every_section(trained, phantoms):
    x, labels, regions = phantoms
    x, labels, regions = x[:12], labels[:12], regions[:12]
    target = trained(x).argmax(1).detach()
    maps = compute_maps(cam_map_fn(), trained, x, target)
    doc, figs = audit_batch(
        trained,
        x,
        target,
        maps,
        labels,
        NAMES,
        map_fn=cam_map_fn(),
        feature_size=(SIZE // 2, SIZE // 2),
        regions=regions,
        second_model=trained,
        resamples=200,
    )
    assert set(doc["verdicts"]) == VERDICT_KEYS
    assert doc["repeatability"]["ssim"] == pytest.approx(1.0) and doc["repeatability"]["verdict"] == PASS
    assert len(doc["deletion"]["curve"]) == 11 and doc["deletion"]["fractions"][-1] == 1.0
    # removing what the trained model's maps highlight costs more score than removing random pixels
    assert doc["deletion"]["auc"] < doc["deletion"]["random_auc"]
    assert doc["road"]["morf"] < doc["road"]["random_morf"]
    assert figs.strips is not None and len(figs.strips.stages) == 2
