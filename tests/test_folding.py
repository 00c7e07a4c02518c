"""The job's trunk with BatchNorm folded into the convolutions: no BatchNorm pass left, the same activations and maps
as the model itself up to float rounding, the model untouched; a trunk torch.fx cannot trace runs unfolded; on the CPU
its convolutions fused with the ReLUs after them give the same activations. And the layer probe on the meta device
records what a real forward records."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from enhancer.explain.compute import compute_cam
from enhancer.explain.folding import FoldedTrunk
from enhancer.models import layers
from enhancer.models.registry import SplitView, family_of
from enhancer.settings import CamSettings
from tests.test_cam_any_model import ARCHS, batch_for, fair_model

FOLDED_ARCHS = ("resnet101", "densenet121", "efficientnet_b0", "mobilenet_v3_large")


def _split(arch: str, model: nn.Module):
    return model if ARCHS[arch][0] == "zoo" else SplitView(model, family_of(f"tv:{arch}"))


def _batchnorms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@pytest.mark.parametrize("arch", FOLDED_ARCHS)
def test_folded_trunk_equals_the_model(arch: str) -> None:
    """Exact in float64 (the folding itself); in float32 no further from the float64 result than the model's own
    float32 trunk (rounding of the same size as choosing channels_last or NCHW kernels)."""
    model = copy.deepcopy(fair_model(arch)).eval().double()
    split = _split(arch, model)
    x = batch_for(arch).double()
    with torch.no_grad():
        reference = split.features(x)
    n_bn = _batchnorms(model)
    folded = FoldedTrunk(split)
    # every BatchNorm follows a convolution, except in DenseNet's pre-activation layers: there the stem's norm0 and
    # each of the 58 dense layers' norm2 (after conv1) fold; the 58 norm1, the 3 transitions' norm and norm5 stay
    left = _batchnorms(folded._features)
    assert folded.folded and left == (58 + 3 + 1 if arch == "densenet121" else 0)
    assert _batchnorms(model) == n_bn, "the model itself keeps its BatchNorm layers"
    with torch.no_grad():
        after = folded.features(x)
        again = split.features(x)
    assert torch.equal(again, reference), "folding a copy leaves the model's own trunk as it was"
    assert (after - reference).abs().max() <= 1e-9 * reference.abs().max()
    settings = CamSettings(method="gradcam")
    layer = model.get_submodule(ARCHS[arch][1])
    maps = compute_cam(model, x, layer=layer, split=split, settings=settings)
    folded_maps = compute_cam(model, x, layer=layer, split=folded, settings=settings)
    assert torch.equal(folded_maps.pred, maps.pred)
    assert (folded_maps.cam - maps.cam).abs().max() < 1e-9

    model32 = fair_model(arch).eval()
    split32 = _split(arch, model32)
    with torch.no_grad():
        own_error = (split32.features(x.float()).double() - reference).abs().max()
        folded_error = (FoldedTrunk(split32).features(x.float()).double() - reference).abs().max()
    assert folded_error <= 3 * own_error + 1e-6 * reference.abs().max()


def test_folding_copies_only_the_folded_convolutions() -> None:
    """The folded trunk shares every module it does not fold with the model (DenseNet keeps 62 BatchNorm layers):
    its only new tensors are the weight and bias of each folded convolution."""
    model = fair_model("densenet121").eval()
    folded = FoldedTrunk(_split("densenet121", model))._features
    own = {p.data_ptr() for p in [*model.parameters(), *model.buffers()]}
    new = sorted(name for name, p in folded.named_parameters() if p.data_ptr() not in own)
    convs = [name for name, m in folded.named_modules() if isinstance(m, nn.Conv2d) and m.weight.data_ptr() not in own]
    assert len(convs) == 1 + 58  # the stem's conv0 and each dense layer's conv1
    assert new == sorted(f"{conv}.{p}" for conv in convs for p in ("weight", "bias"))
    assert all(b.data_ptr() in own for b in folded.buffers()), "the BatchNorm layers left are the model's own"


# convolutions fused with the ReLU (and the residual add) after them: ResNet's stem and 33 bottlenecks (conv1, conv2
# then ReLU; conv3 + identity then ReLU); DenseNet's stem and 58 conv1 (norm2 folded in, relu2 after); MobileNet's
# 19 convolutions followed by a ReLU (the rest use Hardswish); EfficientNet's SiLU does not fuse
FUSED = {"resnet101": (67, 33), "densenet121": (59, 0), "mobilenet_v3_large": (19, 0), "efficientnet_b0": (0, 0)}


@pytest.mark.parametrize("arch", FOLDED_ARCHS)
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
def test_fused_convolutions_give_the_same_activations(arch: str, memory_format) -> None:
    folded = FoldedTrunk(_split(arch, fair_model(arch).eval()), memory_format=memory_format)
    fused = folded._fused
    nodes = [] if fused is None else [n for n in fused.graph.nodes if n.op == "call_module"]
    kinds = [type(fused.get_submodule(n.target)).__name__ for n in nodes]
    assert (kinds.count("_ConvReLU"), kinds.count("_ConvAddReLU")) == FUSED[arch]
    x = batch_for(arch).contiguous(memory_format=memory_format)
    before = x.clone()
    with torch.no_grad():
        unfused = folded._features(x)
        fused_out = folded.features(x)
    # the same float operations: equal bit for bit on the x86 VM this was written on; oneDNN may pick another kernel
    # for a convolution with post-ops on another CPU, so the test allows float rounding
    assert (fused_out - unfused).abs().max() <= 1e-5 * unfused.abs().max()
    assert torch.equal(x, before), "the input is not written"
    with torch.enable_grad():  # the fused operators have no autograd: with it on, the unfused graph runs
        assert torch.equal(folded.features(x), unfused)


def test_folding_needs_eval_mode() -> None:
    model = fair_model("resnet101").train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            FoldedTrunk(model)
    finally:
        model.eval()


class _Branching(nn.Module):
    """A trunk with Python control flow on tensor values, which torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn(self.conv(x))
        return a.relu() if a.sum() > 0 else a

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(a.mean((2, 3)))


def test_an_untraceable_trunk_runs_unfolded(caplog) -> None:
    torch.manual_seed(0)
    model = _Branching().eval()
    x = torch.randn(2, 1, 16, 16)
    with caplog.at_level("INFO", logger="enhancer.explain.folding"):
        folded = FoldedTrunk(model)
    assert not folded.folded and "cannot trace" in caplog.text
    with torch.no_grad():
        assert torch.equal(folded(x), model.head(model.features(x)))


def _real_probe(model: nn.Module, x: torch.Tensor) -> tuple[list[layers.LayerOutput], list[str]]:
    named = [(n, m) for n, m in model.named_modules() if n]
    rec = layers._record(named, lambda: model(x))
    found = [
        layers.LayerOutput(n, type(m).__name__, rec.shapes.get(n), rec.calls.get(n, 0), n.count(".") + 1)
        for n, m in named
    ]
    return found, list(dict.fromkeys(rec.trunk))


@pytest.mark.parametrize("arch", ["resnet101", "densenet121", "convnext_tiny", "vit_b_16"])
def test_the_meta_probe_records_what_a_real_forward_records(arch: str) -> None:
    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.zeros(1, 3, 224, 224)
    named = [(n, m) for n, m in model.named_modules() if n]
    assert layers._record_on_meta(model, named, x) is not None, "runs on the meta device"
    assert layers.probe(model, x) == _real_probe(model, x)


def test_a_model_that_needs_values_is_probed_for_real() -> None:
    model = _Branching().eval()
    model.forward = lambda x: model.head(model.features(x))  # type: ignore[method-assign]
    x = torch.randn(1, 1, 16, 16)
    named = [(n, m) for n, m in model.named_modules() if n]
    assert layers._record_on_meta(model, named, x) is None
    found, trunk = layers.probe(model, x)
    assert {layer.name: layer.shape for layer in found} == {"conv": (1, 4, 14, 14), "bn": (1, 4, 14, 14), "fc": (1, 2)}
    assert trunk == ["bn"]
