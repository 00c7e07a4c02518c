"""Every CAM method against pytorch-grad-cam 1.5.7 on real X-rays (the 16 sample images through the product's
loader), on the seed's ResNet-101 (the features/head closed form) and torchvision's DenseNet-121 (the forward hook):
the same model, layer and target class, the whole map (borders included) within 1e-4 after the same normalisation.
Then batch independence of every method, and the eigen methods' sign."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from benchmarks.pgc_reference import reference_classes
from enhancer.data import make_loader, scan, validate
from enhancer.explain.cam import METHODS, PERTURBATION_METHODS, CamResult, CamSettings, upsample
from enhancer.explain.compute import compute_cam
from enhancer.models.demo import build_demo_model, calibrate_batchnorm, scale_head_to_unit_logits
from enhancer.models.zoo import preprocessing_for
from enhancer.preprocessing import RGB_PREPROCESSING, Preprocessing
from tests.tools.missing import require_module

pgc = require_module("pytorch_grad_cam", install="grad-cam==1.5.7")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction  # noqa: E402

# pytorch-grad-cam's convention: the target logit, channel sum, min-max
PGC_SETTINGS = {"score": "logit", "channel_reduce": "sum", "normalize": "minmax"}
LAYERS = {"resnet101": "resnet.layer4", "densenet121": "features.norm5", "tinyvgg": "feature_extractor"}
GRADIENT_SIZE = 128  # 4x4 maps at the last stage
# Score-/Ablation-CAM cost a forward pass per channel and image: at the last stage (2048 / 1024 channels) that is
# minutes per image on 2 CPU cores even at 64 px, so here they explain the 64-channel stem (16x16 maps at 64 px,
# through the hook); TinyVGG covers the features/head closed form.
PERTURBATION_SIZE = 64
CLOSED_FORM = {("resnet101", "resnet.layer4"), ("tinyvgg", "feature_extractor")}  # the others through the hook
PERTURBATION_LAYERS = {"resnet101": "resnet.maxpool", "densenet121": "features.pool0", "tinyvgg": "feature_extractor"}
ROWS = [0, 14]  # a NORMAL and a PNEUMONIA image
# XGradCAM divides by each channel's spatial sum of A. At a BatchNorm output before its ReLU (DenseNet's norm5) a few
# sums are ~1e-4 of their terms' magnitudes, so float32 summation order alone (numpy's pairwise sums against torch's)
# moves those weights by ~1e-3 and the maps by ~2e-4: compared in float64, where the definition decides.
FLOAT64 = {("densenet121", "xgradcam")}


class _SignCorrectedEigenCAM(pgc.EigenCAM):
    """pytorch-grad-cam's EigenCAM with its own sign-corrected projection (Seg-Eigen-CAM eq. 13), ``flip``: negated."""

    flip = False

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        p = get_2d_projection_with_sign_correction(self.eigen_input(activations, grads))
        return -p if self.flip else p

    def eigen_input(self, activations: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
        return activations


class _SignCorrectedEigenGradCAM(_SignCorrectedEigenCAM):
    def __init__(self, model, target_layers, reshape_transform=None):
        pgc.base_cam.BaseCAM.__init__(self, model, target_layers, reshape_transform)  # uses gradients

    def eigen_input(self, activations: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
        return grads * activations


# pytorch-grad-cam's class of each method, the Eigen ones with the sign-corrected projection
REFERENCE = {**reference_classes(), "eigencam": _SignCorrectedEigenCAM, "eigengradcam": _SignCorrectedEigenGradCAM}


@functools.cache
def _subject(kermany_dir: Path, arch: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    """(model, the 16 real X-rays at ``size`` through the product's torch loader). Random weights, BatchNorm
    calibrated and the output layer scaled on these images, so the maps are not trivial."""
    if arch != "densenet121":
        model = build_demo_model(arch, input_size=size, n_calibration=4)
        preprocessing = preprocessing_for(arch, size)
    else:
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None, num_classes=2)
        preprocessing = Preprocessing(
            size=(size, size), in_chans=3, mean=RGB_PREPROCESSING.mean, std=RGB_PREPROCESSING.std
        )
    samples, _ = validate(list(scan(kermany_dir).samples), level="full")
    [batch] = list(make_loader(samples, preprocessing, batch_size=16, loader="torch", device="cpu", num_threads=0))
    calibrate_batchnorm(model, [batch.image])
    scale_head_to_unit_logits(model, batch.image)
    return model.eval(), batch.image


def pgc_normalised(r: CamResult, size: tuple[int, int]) -> torch.Tensor:
    """Our map as pytorch-grad-cam returns its own: min-max, bilinear to the input (cv2's half-pixel centres),
    min-max again (its multi-layer aggregation)."""
    up = upsample(r.cam, size)
    low, high = up.flatten(1).amin(1)[:, None, None], up.flatten(1).amax(1)[:, None, None]
    return (up - low) / (high - low + 1e-7)


def reference(cls: type, model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # On the CPU pytorch-grad-cam keeps the layer's output tensor itself (``.cpu()`` is a no-op), which DenseNet's
    # in-place ReLU then overwrites; a copy gives what it computes on CUDA (and what the layer really output).
    kwargs = {"batch_size": 64} if cls is pgc.AblationCAM else {}
    with cls(model=model, target_layers=[layer], reshape_transform=torch.clone, **kwargs) as cam:
        cam.batch_size = 64  # ScoreCAM's masked copies per forward
        out = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in target]))
    model.zero_grad(set_to_none=True)
    return out


def check_method(
    kermany_dir: Path, arch: str, method: str, rows: list[int], size: int, layer_name: str | None = None
) -> None:
    model, images = _subject(kermany_dir, arch, size)
    x = images[rows]
    if (arch, method) in FLOAT64:
        model, x = copy.deepcopy(model).double(), x.double()
    layer_name = layer_name or LAYERS[arch]
    layer = model.get_submodule(layer_name)
    split = model if (arch, layer_name) in CLOSED_FORM else None  # the zoo's halves at their own layer, as the job
    settings = CamSettings(method=method, scorecam_batch=48, **PGC_SETTINGS)
    r = compute_cam(model, x, layer=layer, split=split, settings=settings)
    assert (~r.empty).any() and torch.isfinite(r.cam).all()
    ours = pgc_normalised(r, x.shape[-2:])
    theirs = reference(REFERENCE[method], model, layer, x, r.target)
    assert (theirs[~r.empty].flatten(1).std(1) > 0.05).all(), "a trivial reference map proves little"
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    if method == "eigencam":
        # pytorch-grad-cam's own EigenCAM keeps LAPACK's arbitrary sign: each of its maps is ours or the flipped one
        plain = reference(pgc.EigenCAM, model, layer, x, r.target)
        _SignCorrectedEigenCAM.flip = True
        try:
            flipped = reference(REFERENCE[method], model, layer, x, r.target)
        finally:
            _SignCorrectedEigenCAM.flip = False
        err = torch.stack([(plain - ours).abs().amax((1, 2)), (plain - flipped).abs().amax((1, 2))]).amin(0)
        assert (err <= 1e-4).all(), err


GRADIENT_AND_EIGEN = [m for m in METHODS if m not in PERTURBATION_METHODS]


@pytest.mark.parametrize("method", GRADIENT_AND_EIGEN)
@pytest.mark.parametrize("arch", ["resnet101", "densenet121"])
def test_equals_pytorch_grad_cam(kermany_dir: Path, arch: str, method: str) -> None:
    """The gradient and eigen methods at the last stage. DenseNet-121 is compared at the output of
    ``features.norm5`` itself, before the ReLU that torchvision's ``DenseNet.forward`` applies to it (in place,
    ``F.relu(features, inplace=True)`` in torchvision 0.29): that is where both sides take the activations and the
    gradients (pytorch-grad-cam's tensor hook, registered before the in-place ReLU, receives the gradient w.r.t. the
    pre-ReLU output). pytorch-grad-cam gets ``reshape_transform=torch.clone``: without it, on the CPU, it keeps the
    layer's output tensor itself (``.cpu()`` is a no-op there), which the in-place ReLU then overwrites, so its
    activations would be the post-ReLU ones while its gradients stay pre-ReLU (on CUDA ``.cpu()`` copies)."""
    check_method(kermany_dir, arch, method, ROWS, GRADIENT_SIZE)


@pytest.mark.slow
@pytest.mark.parametrize("method", PERTURBATION_METHODS)
@pytest.mark.parametrize("arch", list(PERTURBATION_LAYERS))
def test_perturbation_methods_equal_pytorch_grad_cam(kermany_dir: Path, arch: str, method: str) -> None:
    rows = ROWS if arch == "tinyvgg" else ROWS[:1]
    check_method(kermany_dir, arch, method, rows, PERTURBATION_SIZE, PERTURBATION_LAYERS[arch])
