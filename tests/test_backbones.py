"""The zoo's own ResNet and VGG-16 against torchvision 0.29's (the reference): the same module tree, state_dict
layout, seeded initialisation and forward outputs, and a zoo checkpoint loads without importing torchvision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from enhancer.models.backbones import VGG16, ResNet

REPO = Path(__file__).resolve().parents[1]
DEPTHS = (18, 34, 50, 101, 152)


def _reference(name: str, **kwargs) -> nn.Module:
    return getattr(torchvision.models, name)(weights=None, **kwargs)


def _ours(name: str, **kwargs) -> nn.Module:
    return VGG16(**kwargs) if name == "vgg16" else ResNet(int(name.removeprefix("resnet")), **kwargs)


def _tree(model: nn.Module) -> list[tuple[str, str]]:
    """(name, leaf repr with its hyper-parameters, or the container's class name) of every module but the root."""
    return [
        (name, repr(m) if next(m.children(), None) is None else type(m).__name__)
        for name, m in model.named_modules()
        if name
    ]


def _layout(model: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name", [*(f"resnet{d}" for d in DEPTHS), "vgg16"])
def test_module_tree_and_state_dict_layout_are_torchvisions(name):
    with torch.device("meta"):  # structure only: no weights drawn, so even ResNet-152 and VGG-16 build in ms
        reference, ours = _reference(name, num_classes=7), _ours(name, num_classes=7)
    assert _tree(ours) == _tree(reference)
    assert _layout(ours) == _layout(reference)
    leaves = dict(_tree(ours))  # leaves compare with their hyper-parameters, e.g.
    assert leaves["classifier.1" if name == "vgg16" else "layer4.0.relu"] == "ReLU(inplace=True)"
    if name.startswith("resnet"):
        assert leaves["layer2.0.downsample.0"].endswith("kernel_size=(1, 1), stride=(2, 2), bias=False)")


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_seeded_resnet_weights_are_bit_equal_to_torchvisions(depth):
    torch.manual_seed(123)
    reference = _reference(f"resnet{depth}").state_dict()
    rng_after_reference = torch.get_rng_state()
    torch.manual_seed(123)
    ours = ResNet(depth).state_dict()
    assert list(ours) == list(reference)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    # the same numbers drawn: what the seed's models build after the trunk (stem, head) is unchanged too
    assert torch.equal(torch.get_rng_state(), rng_after_reference)


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_forward_is_torchvisions(depth):
    reference = _reference(f"resnet{depth}")
    ours = ResNet(depth)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for train in (True, False):  # batch statistics, then the running ones the training pass updated
        reference.train(train), ours.train(train)
        with torch.no_grad():
            expected, got = reference(x), ours(x)
        assert got.shape == (2, 1000) and torch.isfinite(got).all()
        assert torch.equal(got, expected)
    assert all(
        torch.equal(a, b) for a, b in zip(ours.state_dict().values(), reference.state_dict().values(), strict=True)
    )


@pytest.mark.slow
def test_vgg16_seeded_weights_and_forward_are_torchvisions():
    torch.manual_seed(5)
    reference = _reference("vgg16").eval()
    torch.manual_seed(5)
    ours = VGG16().eval()
    expected_state, state = reference.state_dict(), ours.state_dict()
    assert list(state) == list(expected_state)
    assert all(torch.equal(state[k], expected_state[k]) for k in expected_state)
    assert state["classifier.0.weight"].std().item() == pytest.approx(0.01, rel=0.01)  # the VGG-only Linear init
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_unknown_depth_lists_the_valid_ones():
    with pytest.raises(ValueError, match="no ResNet of depth 20; valid: 18, 34, 50, 101, 152"):
        ResNet(20)


def test_a_zoo_checkpoint_loads_without_importing_torchvision(demo_checkpoints):
    code = (
        "import sys\n"
        "import enhancer.models.zoo, enhancer.models.checkpoints, enhancer.models.inspection\n"
        "import enhancer.explain.folding, torch\n"
        "with torch.device('meta'):  # how a checkpoint's model may be built before its tensors are assigned\n"
        "    enhancer.models.zoo.build_model('resnet50'), enhancer.models.zoo.build_model('vgg16')\n"
        f"loaded = enhancer.models.checkpoints.load_checkpoint({str(demo_checkpoints['resnet101'])!r})\n"
        "print(loaded.config.arch, type(loaded.model).__name__)\n"
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["resnet101 SeedResNet", "[]"]
