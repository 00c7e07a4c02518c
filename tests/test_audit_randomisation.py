"""Cascading randomisation's stages per architecture, seeded re-initialisation, and the model left untouched."""

from __future__ import annotations

import torch

from enhancer.audit.maps import cam_map_fn, compute_maps
from enhancer.audit.randomisation import cascading_randomisation, random_pairs, randomisation_stages, reinitialise
from enhancer.models.demo import build_demo_model, xray_like_batch
from enhancer.models.zoo import build_model


def test_resnet_stages_run_from_the_head_down_to_the_stem():
    seed_resnet = build_model("resnet50")
    stages = randomisation_stages(seed_resnet, torch.zeros(1, 1, 32, 32))
    assert [s.name for s in stages] == ["head", "layer4", "layer3", "layer2", "layer1", "stem"]
    assert {"dense_neural_network.2", "resnet.fc"} <= set(stages[0].modules)
    assert stages[1].modules == ("resnet.layer4",) and stages[-1].modules == ("conv1", "resnet.bn1")
    tv = randomisation_stages(build_model("tv-resnet18"), torch.zeros(1, 3, 32, 32))
    assert tv[0].modules == ("fc",) and tv[-1].modules == ("conv1", "bn1")


def test_other_models_randomise_their_top_level_modules_in_reverse_order_of_execution():
    stages = randomisation_stages(build_model("tinyvgg", input_size=32), torch.zeros(1, 1, 32, 32))
    assert [s.name for s in stages] == ["dense_neural_network", "feature_extractor"]  # max_pool has no weights


def test_reinitialisation_is_seeded_and_touches_only_its_stage():
    a, b = build_model("tv-resnet18"), build_model("tv-resnet18")
    b.load_state_dict(a.state_dict())
    stage = randomisation_stages(a, torch.zeros(1, 3, 32, 32))[1]  # layer4
    reinitialise(a, stage, seed=5)
    reinitialise(b, stage, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    c = build_model("tv-resnet18")
    c.load_state_dict(a.state_dict())
    reinitialise(c, stage, seed=6)
    assert not torch.equal(c.layer4[0].conv1.weight, a.layer4[0].conv1.weight)
    assert torch.equal(c.layer3[0].conv1.weight, a.layer3[0].conv1.weight) and torch.equal(c.fc.weight, a.fc.weight)


def test_cascade_works_on_a_copy_and_changes_the_maps():
    model = build_demo_model("tv-resnet18", input_size=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    x = xray_like_batch(3, 64, in_chans=3)
    target = model(x).argmax(1)
    maps = compute_maps(cam_map_fn(), model, x, target)
    stages = randomisation_stages(model, x[:1])
    seen = [(s.name, m) for s, m in cascading_randomisation(model, stages, x, target, cam_map_fn(), seed=0)]
    assert [n for n, _ in seen] == [s.name for s in stages]
    assert all(m.shape == maps.shape and 0 <= float(m.min()) and float(m.max()) <= 1 for _, m in seen)
    assert not torch.allclose(seen[-1][1], maps)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_random_pairs_are_distinct_and_all_of_them_when_few():
    i, j = random_pairs(5, 100)
    assert len(i) == 10 and bool((i < j).all())
    i, j = random_pairs(40, 50, torch.Generator().manual_seed(0))
    assert len(i) == 50 and len(set(zip(i.tolist(), j.tolist(), strict=True))) == 50
