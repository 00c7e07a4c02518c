"""Lung segmentation: the VGG11-encoder U-Net of the original research's cycle, batched on the device.

Usage::

    from enhancer.models.lungs import load_lung_model, lung_masks
    lungs = load_lung_model("UNet_LungSegmentation.pt")        # the public plain state_dict loads strictly
    mask = lung_masks(lungs.to(device), source, (224, 224))   # source (N, 1, S, S) uint8 -> (N, 224, 224) bool

    enhancer enhance --data ROOT --checkpoint CK --lung-model UNet_LungSegmentation.pt --out DIR

The network is the public "lung-segmentation" project's ``PretrainedUNet(in_channels=1, out_channels=2,
batch_norm=True, upscale_mode="bilinear")`` that the research notebook loaded: a 1x1 convolution lifts the grey
input to 3 channels for the eight convolutions of torchvision's ``vgg11`` features (plain VGG11, no batch norm: the
encoder convolutions are direct attributes ``conv1`` .. ``conv5s``), five max-pool steps, a ``center`` block and
five decoder blocks (two 3x3 convolutions each, batch norm after each when ``batch_norm``), each fed with the
bilinearly upsampled previous stage concatenated with the encoder stage of the same resolution, and a 1x1 output
convolution. Class 1 is lung.

Input contract of the public weights (its training code): the image squash-resized to 512 x 512, grey in [0, 1]
minus 0.5 (i.e. mean 0.5, std 1). ``lung_masks`` resizes the loader's high-resolution ``source`` to the model's
input size on the device, predicts, and upsamples the two-class logits bilinearly to the requested size before the
argmax. Our own files (``save_lung_checkpoint``) may record a different input size (tests use small ones).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from enhancer.hashing import file_sha256

INPUT_SIZE = 512  # the public model's training resolution
INPUT_SHIFT = 0.5  # x = grey01 - 0.5 (its LungDataset: to_tensor(image) - 0.5)
LUNG_CLASS = 1
FORMAT = "enhancer.lung-model"

# (attribute, in, out) of the encoder convolutions: torchvision vgg11().features[0, 3, 6, 8, 11, 13, 16, 18]
ENCODER = (
    ("conv1", 3, 64),
    ("conv2", 64, 128),
    ("conv3", 128, 256),
    ("conv3s", 256, 256),
    ("conv4", 256, 512),
    ("conv4s", 512, 512),
    ("conv5", 512, 512),
    ("conv5s", 512, 512),
)
# (attribute, in, mid, out) of the decoder blocks
DECODER = (
    ("center", 512, 512, 256),
    ("dec5", 512 + 256, 512, 256),
    ("dec4", 512 + 256, 512, 128),
    ("dec3", 256 + 128, 256, 64),
    ("dec2", 128 + 64, 128, 32),
    ("dec1", 64 + 32, 64, 32),
)


class LungModelError(ValueError):
    """A lung-segmentation checkpoint cannot be used; the message names the file and the fix."""


class Block(nn.Module):
    """conv3x3 -> [BN] -> ReLU -> conv3x3 -> [BN] -> ReLU (the public ``Block``; parameter names kept)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1)
        self.batch_norm = batch_norm
        if batch_norm:
            self.bn1 = nn.BatchNorm2d(mid_channels)
            self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.batch_norm:
            x = self.bn1(x)
        x = F.relu(x, inplace=True)
        x = self.conv2(x)
        if self.batch_norm:
            x = self.bn2(x)
        return F.relu(x, inplace=True)


class LungUNet(nn.Module):
    """U-Net with a VGG11 encoder; state_dict layout of the public ``PretrainedUNet``. Input (N, in_channels, H, W)
    normalised as ``INPUT_SHIFT`` says, H and W multiples of 32; output (N, out_channels, H, W) logits."""

    def __init__(
        self, in_channels: int = 1, out_channels: int = 2, *, batch_norm: bool = True, upscale_mode: str = "bilinear"
    ) -> None:
        super().__init__()
        if upscale_mode not in ("bilinear", "nearest"):
            raise ValueError(f"upscale_mode={upscale_mode!r} is not valid; choose 'bilinear' or 'nearest'")
        self.upscale_mode = upscale_mode
        self.init_conv = nn.Conv2d(in_channels, 3, kernel_size=1)
        for name, c_in, c_out in ENCODER:
            setattr(self, name, nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
        for name, c_in, c_mid, c_out in DECODER:
            setattr(self, name, Block(c_in, c_mid, c_out, batch_norm))
        self.out = nn.Conv2d(32, out_channels, kernel_size=1)

    def _up(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode=self.upscale_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu, down = F.relu, F.max_pool2d
        x = relu(self.init_conv(x))
        enc1 = relu(self.conv1(x))
        enc2 = relu(self.conv2(down(enc1, 2)))
        enc3 = relu(self.conv3s(relu(self.conv3(down(enc2, 2)))))
        enc4 = relu(self.conv4s(relu(self.conv4(down(enc3, 2)))))
        enc5 = relu(self.conv5s(relu(self.conv5(down(enc4, 2)))))
        x = self.center(down(enc5, 2))
        for block, skip in (
            (self.dec5, enc5),
            (self.dec4, enc4),
            (self.dec3, enc3),
            (self.dec2, enc2),
            (self.dec1, enc1),
        ):
            x = block(torch.cat([self._up(x, skip), skip], 1))
        return self.out(x)


@dataclass
class LungModel:
    """A loaded lung segmenter: the network (eval mode) and its input contract, plus where it came from."""

    net: LungUNet
    input_size: int
    path: str
    sha256: str

    def to(self, device: str | torch.device) -> LungModel:
        self.net = self.net.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        """Provenance for shard attributes."""
        return {
            "path": os.path.abspath(self.path),
            "sha256": self.sha256,
            "input_size": self.input_size,
            "normalisation": f"grey01 - {INPUT_SHIFT}",
            "lung_class": LUNG_CLASS,
            "architecture": "PretrainedUNet(1, 2, batch_norm=True, upscale_mode='bilinear'), VGG11 encoder",
        }


def save_lung_checkpoint(path: str | os.PathLike[str], net: LungUNet, *, input_size: int = INPUT_SIZE) -> str:
    """Write ``net`` with its input size (our format; a plain state_dict of the public model loads too)."""
    torch.save({"format": FORMAT, "state_dict": net.state_dict(), "input_size": int(input_size)}, path)
    return os.fspath(path)


def load_lung_model(path: str | os.PathLike[str]) -> LungModel:
    """Load a lung-segmentation checkpoint: the public plain state_dict (e.g. ``UNet_LungSegmentation.pt``, also with
    a DataParallel ``module.`` prefix or wrapped in ``{"state_dict": ...}`` / ``{"model_state_dict": ...}``) or a
    ``save_lung_checkpoint`` file. Strict: every parameter name and shape must match. Returns it on the CPU."""
    path = os.fspath(path)
    if not Path(path).is_file():
        raise LungModelError(
            f"{path}: no such lung-segmentation checkpoint; pass the file of the public "
            "lung-segmentation U-Net (VGG11 encoder), e.g. UNet_LungSegmentation.pt"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise LungModelError(
            f"{path}: not a readable weights-only torch file ({str(exc).splitlines()[0]}); "
            "save the U-Net's state_dict with torch.save(model.state_dict(), path)"
        ) from None
    input_size = INPUT_SIZE
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        input_size = int(obj["input_size"])
        obj = obj["state_dict"]
    elif isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LungModelError(
            f"{path}: expected a state_dict (name -> tensor) of the lung U-Net, got {type(obj).__name__}"
        )
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    net = LungUNet()
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = [
            f"{label} {names[:4]}{' ...' if len(names) > 4 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if names
        ]
        raise LungModelError(
            f"{path}: not the lung-segmentation U-Net with a VGG11 encoder ({'; '.join(parts)}); "
            "the expected file is PretrainedUNet(1, 2, batch_norm=True, upscale_mode='bilinear')'s "
            "state_dict"
        )
    net.load_state_dict(state, strict=True)
    return LungModel(net.eval(), input_size, path, file_sha256(path))


def lung_input(source: torch.Tensor, input_size: int) -> torch.Tensor:
    """Loader source (N, 1, S_h, S_w) uint8 (or float in [0, 1]) -> the U-Net's input (N, 1, size, size) float32:
    squash-resized (bilinear, antialiased when shrinking), grey01 - 0.5."""
    x = source.float() / 255 if source.dtype == torch.uint8 else source.float()
    if tuple(x.shape[-2:]) != (input_size, input_size):
        x = F.interpolate(
            x,
            size=(input_size, input_size),
            mode="bilinear",
            align_corners=False,
            antialias=bool(x.shape[-1] > input_size or x.shape[-2] > input_size),
        )
    return x.clamp(0, 1) - INPUT_SHIFT


def lung_masks(
    lungs: LungModel, source: torch.Tensor, size: tuple[int, int] | torch.Size, *, amp: bool = False
) -> torch.Tensor:
    """Lung masks (N, *size) bool for a batch of loader sources (N, 1, S_h, S_w), on the source's device.

    The logits are upsampled bilinearly to ``size`` (the classifier's input resolution) before the argmax, so the
    mask edges follow the network's boundary rather than blocky pixels. ``amp``: bf16 autocast on CUDA."""
    x = lung_input(source.to(next(lungs.net.parameters()).device), lungs.input_size)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and x.device.type == "cuda")
    with torch.no_grad(), autocast:
        logits = lungs.net(x)
    logits = F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return logits.argmax(1) == LUNG_CLASS
