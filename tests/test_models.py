"""The zoo: parameter counts of the seed, the features/head split, trainable groups, ImageNet initialisation."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision

from enhancer.models.zoo import (
    ZOO,
    ModelError,
    build_model,
    count_parameters,
    imagenet_cache_path,
    set_trainable,
)


def _input_for(arch: str, size: int = 64) -> torch.Tensor:
    chans = ZOO[arch].preprocessing.in_chans
    return torch.randn(2, chans, size, size, generator=torch.Generator().manual_seed(0))


def test_resnet101_parameter_counts_match_the_seed():
    model = build_model("resnet101")
    total, trainable = count_parameters(model)
    assert total == 44_772_798  # the unused 3-channel resnet.conv1 included
    assert sum(p.numel() for p in model.dense_neural_network.parameters()) == 220_502
    assert trainable == 17_234_238  # default: layer4 + fc + head (the best checkpoint's recipe)
    set_trainable(model, ["layer4[2]", "fc", "head"])
    assert count_parameters(model)[1] == 6_732_094
    set_trainable(model, ["layer4", "fc", "head"])
    assert count_parameters(model)[1] == 17_234_238
    assert not model.conv1.weight.requires_grad  # the seed's 1-channel stem stays frozen


@pytest.mark.parametrize(
    ("arch", "head", "head_params"),
    [("resnet50", "10k", 10_032), ("resnet101", "10k", 10_032), ("resnet152", "15k", 15_047), ("vgg16", None, 10_032)],
)
def test_seed_heads(arch, head, head_params):
    model = build_model(arch, head=head)
    assert sum(p.numel() for p in model.dense_neural_network.parameters()) == head_params


@pytest.mark.parametrize("arch", list(ZOO))
def test_forward_equals_head_of_features(arch):
    torch.manual_seed(0)
    model = build_model(arch, input_size=64).eval()
    x = _input_for(arch)
    with torch.no_grad():
        a = model.features(x)
        assert torch.equal(model(x), model.head(a))
    assert a.ndim == 4 and model(x).shape == (2, 2)
    assert torch.isfinite(a).all()


def test_target_layers_have_the_seed_resolution():
    x = torch.zeros(1, 1, 224, 224)
    with torch.no_grad():
        assert build_model("resnet101").eval().features(x).shape == (1, 2048, 7, 7)
        assert build_model("vgg16").eval().features(x).shape == (1, 512, 14, 14)
        assert build_model("tinyvgg").eval().features(x).shape == (1, 15, 112, 112)


def test_vgg_aliases_share_weights_with_vgg():
    model = build_model("vgg16")
    assert model.feature_extractor[0] is model.vgg.features[0]
    assert model.classifier is model.vgg.classifier
    keys = model.state_dict().keys()
    assert "vgg.features.0.weight" in keys and "feature_extractor.0.weight" in keys and "classifier.6.weight" in keys
    assert model.state_dict()["vgg.features.0.weight"].shape == (64, 1, 3, 3)


def test_vgg_trains_only_its_head_by_default():
    model = build_model("vgg16")
    assert count_parameters(model)[1] == 10_032


def test_unknown_names_list_valid_choices():
    with pytest.raises(ModelError, match="valid: tinyvgg, vgg16, resnet50"):
        build_model("resnet99")
    with pytest.raises(ModelError, match="valid: 220k, 10k, 15k"):
        build_model("resnet101", head="1M")
    with pytest.raises(ModelError, match=r"valid: all, head, fc, stem, layer1"):
        set_trainable(build_model("resnet50"), ["layer5"])


def test_imagenet_init_offline_without_cache_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelError) as err:
        build_model("resnet50", init="imagenet", download=False)
    message = str(err.value)
    assert imagenet_cache_path("resnet50") in message
    assert "TORCH_HOME" in message and "--init CHECKPOINT" in message


def test_imagenet_init_uses_cached_weights_and_averages_the_stem(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    reference = torchvision.models.resnet50(weights=None).state_dict()
    path = imagenet_cache_path("resnet50")
    os.makedirs(os.path.dirname(path))
    torch.save(reference, path)
    model = build_model("resnet50", init="imagenet", download=False)
    assert torch.equal(model.resnet.layer4[2].conv3.weight, reference["layer4.2.conv3.weight"])
    assert torch.equal(model.conv1.weight, reference["conv1.weight"].mean(dim=1, keepdim=True))
    tv = build_model("tv-resnet50", init="imagenet", download=False)
    assert torch.equal(tv.conv1.weight, reference["conv1.weight"]) and tv.fc.out_features == 2
