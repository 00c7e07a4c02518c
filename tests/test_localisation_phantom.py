"""The phantom benchmark in small: the tool's localisation metrics tell a model that learned a marker outside the
lungs from one that learned the opacity inside them, while accuracy on marker-correlated data cannot.
Full-size figures: ``python benchmarks/phantom_bench.py`` (benchmarks/RESULTS.md, "Localisation (phantom)")."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "phantom_bench.py"


def _bench():
    spec = importlib.util.spec_from_file_location("phantom_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_phantoms_have_the_opacity_inside_the_lungs_and_the_marker_outside():
    pb = _bench()
    ph = pb.make_phantoms(16, 32, marker="label", seed=3)
    assert ph.images.shape == (16, 1, 32, 32) and ph.lungs.shape == (16, 32, 32)
    assert torch.equal(ph.marker, ph.labels.bool())
    assert torch.isnan(ph.boxes[ph.labels == 0]).all() and torch.isfinite(ph.boxes[ph.labels == 1]).all()
    assert not ph.lungs[:, :8, :8].any()  # the marker's corner lies outside the lungs
    random = pb.make_phantoms(64, 32, marker="random", seed=3)
    assert 0 < int((random.marker != random.labels.bool()).sum()) < 64


@pytest.mark.slow
def test_metrics_detect_the_marker_shortcut_and_the_opacity_model():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pb = _bench()
    results = pb.run(n_train=512, n_test=64, size=32, epochs=8, seed=0)
    shortcut, honest = results["marker"]["marker = label"], results["opacity"]["marker = label"]
    # accuracy on data where the marker follows the label: both models look fine
    assert shortcut["accuracy"] >= 0.95 and honest["accuracy"] >= 0.9
    # localisation separates them: the shortcut model's maximum is outside the lungs, the honest one's inside
    assert shortcut["lung_hit"] <= 0.2 and honest["lung_hit"] >= 0.8
    assert honest["lung_energy"] > shortcut["lung_energy"] + 0.08
    assert honest["box_iou"] > shortcut["box_iou"] + 0.1
    # and decorrelating the marker exposes the shortcut through accuracy too
    assert results["marker"]["marker random"]["accuracy"] <= 0.8
