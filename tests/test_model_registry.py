"""The model registry: models from anywhere (zoo, torchvision, timm, a user's builder), each family's default target
layer with its features/head split, target-layer checks, and the preprocessing each library gives its models."""

from __future__ import annotations

import pytest
import torch

from enhancer.models.external import parse_model_name
from enhancer.models.registry import build, family_of, library_preprocessing, resolve_target
from enhancer.models.zoo import ModelConfig, ModelError
from enhancer.preprocessing import IMAGENET_MEAN, IMAGENET_STD, RGB_PREPROCESSING, SEED_PREPROCESSING, override
from tests.tools.missing import require_module

SIZE = 64  # small inputs: every family still has a spatial map (2x2 or more) at its target layer

DEFAULTS = {
    "tv:densenet121": ("densenet", "features.norm5", (1, 1024, 2, 2), "classifier"),
    "tv:efficientnet_b0": ("efficientnet", "features.8", (1, 1280, 2, 2), "classifier"),
    "tv:convnext_tiny": ("convnext", "features.7", (1, 768, 2, 2), "classifier"),
    "tv:mobilenet_v3_large": ("mobilenet", "features.16", (1, 960, 2, 2), "classifier"),
    "resnet101": ("seed-resnet", "resnet.layer4", (1, 2048, 2, 2), "dense_neural_network"),
    "vgg16": ("seed-vgg16", "feature_extractor", (1, 512, 4, 4), "dense_neural_network"),
}


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build(ModelConfig(arch=arch, num_classes=2)).eval()


def _hooked(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the layer's output as it left the layer: cloned, since DenseNet's forward applies an in-place ReLU)."""
    seen = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.clone()))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    return logits, seen[0]


@pytest.mark.parametrize("arch", list(DEFAULTS))
def test_each_family_has_a_spatial_default_target_and_an_exact_split(arch):
    model = _model(arch)
    preprocessing = override(library_preprocessing(model), size=SIZE)
    target = resolve_target(model, preprocessing)
    assert (target.family, target.name, target.shape, target.head_layer) == DEFAULTS[arch]
    assert target.default and target.module is model.get_submodule(target.name)
    x = torch.randn(2, preprocessing.in_chans, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    logits, activations = _hooked(model, target.module, x)
    with torch.no_grad():
        a = target.split.features(x)
        assert torch.equal(a, activations)  # the split's features are the target layer's output
        assert torch.equal(target.split.head(a), logits)  # and its head gives the model's logits, bit for bit


def test_timm_models_split_at_forward_features():
    require_module("timm", install="timm==1.0.31")
    model = _model("timm:test_efficientnet")
    preprocessing = library_preprocessing(model)
    assert preprocessing == override(RGB_PREPROCESSING, size=160)  # its pretrained_cfg: 160, ImageNet statistics
    target = resolve_target(model, override(preprocessing, size=SIZE))
    assert (target.family, target.name, target.head_layer) == ("timm", "bn2", "classifier")
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    logits, activations = _hooked(model, target.module, x)
    with torch.no_grad():
        assert torch.equal(target.split.features(x), activations)
        assert torch.equal(target.split.head(activations), logits)


def test_timm_preprocessing_comes_from_pretrained_cfg():
    require_module("timm", install="timm==1.0.31")
    p = library_preprocessing(_model("timm:mobilevit_xxs"))
    assert (p.size, p.in_chans, p.mean, p.std) == ((256, 256), 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_a_users_builder_gets_the_generic_rule():
    model = _model("tests.tools.user_models:tiny_net")
    assert family_of("tests.tools.user_models:tiny_net").name == "generic"
    preprocessing = library_preprocessing(model)
    assert preprocessing == SEED_PREPROCESSING  # 1-channel stem: the seed's statistics at 224
    target = resolve_target(model, override(preprocessing, size=32))
    # the outermost module returning the last spatial map (body and body.4 return the same tensor)
    assert (target.name, target.shape, target.head_layer, target.split) == ("body", (1, 16, 16, 16), "fc", None)
    assert resolve_target(model, preprocessing, "body.1").shape == (1, 8, 224, 224)


def test_torchvision_preprocessing_is_imagenet_rgb_at_224():
    assert library_preprocessing(_model("tv:mobilenet_v3_large")) == RGB_PREPROCESSING
    assert RGB_PREPROCESSING.in_chans == 3 and RGB_PREPROCESSING.mean == IMAGENET_MEAN


def test_preprocessing_overrides():
    assert override(RGB_PREPROCESSING, channels=1) == SEED_PREPROCESSING  # the first channel's ImageNet statistics
    assert override(SEED_PREPROCESSING, channels=3) == RGB_PREPROCESSING
    p = override(RGB_PREPROCESSING, size=96, mean=(0.5,), std=(0.25, 0.25, 0.25))
    assert (p.size, p.mean, p.std) == ((96, 96), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert override(RGB_PREPROCESSING).std == IMAGENET_STD
    with pytest.raises(ValueError, match=r"--mean 0.1,0.2 needs 1 or 3 values"):
        override(RGB_PREPROCESSING, mean=(0.1, 0.2))


def test_families_of_names():
    names = {
        "tv:resnext50_32x4d": "resnet",
        "tv:wide_resnet50_2": "resnet",
        "tv:densenet201": "densenet",
        "tv:efficientnet_v2_s": "efficientnet",
        "tv:mobilenet_v2": "mobilenet",
        "tv:regnet_y_400mf": "regnet",
        "tv:vgg11_bn": "vgg",
        "tv:squeezenet1_0": "generic",
        "timm:resnet18": "timm",
        "tv-resnet50": "tv-resnet",
        "tinyvgg": "tinyvgg",
    }
    assert {name: family_of(name).name for name in names} == names


def test_wrong_target_layers_are_clear_errors():
    model = _model("tv:resnet18")
    p = override(library_preprocessing(model), size=SIZE)
    with pytest.raises(ModelError, match=r"'layer5' is not a module of tv:resnet18; nearest: layer4.*--layers"):
        resolve_target(model, p, "layer5")
    with pytest.raises(ModelError, match=r"'fc' \(Linear\) of tv:resnet18 outputs shape \(1, 2\), not a spatial map"):
        resolve_target(model, p, "fc")
    with pytest.raises(ModelError, match=r"'avgpool' .* outputs shape \(1, 512, 1, 1\), not a spatial map"):
        resolve_target(model, p, "avgpool")
    with pytest.raises(ModelError, match=r"'layer4.1.relu' of tv:resnet18 runs 2 times in one forward"):
        resolve_target(model, p, "layer4.1.relu")
    assert resolve_target(model, p, "layer3").shape == (1, 256, 4, 4)
    seed = _model("resnet50")
    with pytest.raises(ModelError, match=r"'resnet.conv1' of resnet50 is not run by its forward"):
        resolve_target(seed, override(library_preprocessing(seed), size=SIZE), "resnet.conv1")


def test_a_model_that_does_not_take_the_input_says_so():
    model = _model("tv:resnet18")
    with pytest.raises(ModelError, match=r"does not run on an input of shape \(1, 1, 64, 64\)"):
        resolve_target(model, override(library_preprocessing(model), size=SIZE, channels=1))


def test_model_names():
    assert parse_model_name("resnet101").kind == "zoo"
    assert parse_model_name("tv:densenet121").text == "tv:densenet121"
    assert parse_model_name("pkg.mod:make.net").kind == "callable"
    with pytest.raises(ModelError, match=r"unknown model 'resnet99' \(did you mean resnet50"):
        parse_model_name("resnet99")
    with pytest.raises(ModelError, match=r"tv:densenet12 is not a torchvision .*nearest: tv:densenet121"):
        build(ModelConfig(arch="tv:densenet12"))
    with pytest.raises(ModelError, match=r"NOT_A_BUILDER is a int, not a callable"):
        build(ModelConfig(arch="tests.tools.user_models:NOT_A_BUILDER"))
    with pytest.raises(ModelError, match=r"cannot import tests.tools.nowhere"):
        build(ModelConfig(arch="tests.tools.nowhere:make"))
