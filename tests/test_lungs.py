"""The lung-segmentation U-Net: the public checkpoint layout loads strictly, batched masks, input contract, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from enhancer.models.lungs import (
    INPUT_SHIFT,
    LungModelError,
    LungUNet,
    load_lung_model,
    lung_input,
    lung_masks,
    save_lung_checkpoint,
)


class _RefBlock(nn.Module):
    """Written from the public code's description: conv, conv, then the two batch norms, in that order."""

    def __init__(self, c_in: int, c_mid: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_mid, 3, padding=1)
        self.conv2 = nn.Conv2d(c_mid, c_out, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_mid)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class _Reference(nn.Module):
    """PretrainedUNet(1, 2, batch_norm=True, upscale_mode="bilinear") rebuilt independently: the encoder convolutions
    are taken from torchvision's vgg11 ``features`` at the indices the public code uses."""

    def __init__(self) -> None:
        super().__init__()
        vgg = torchvision.models.vgg11(weights=None).features
        self.init_conv = nn.Conv2d(1, 3, 1)
        for name, i in zip(
            ("conv1", "conv2", "conv3", "conv3s", "conv4", "conv4s", "conv5", "conv5s"),
            (0, 3, 6, 8, 11, 13, 16, 18),
            strict=True,
        ):
            setattr(self, name, vgg[i])
        self.center = _RefBlock(512, 512, 256)
        self.dec5 = _RefBlock(768, 512, 256)
        self.dec4 = _RefBlock(768, 512, 128)
        self.dec3 = _RefBlock(384, 256, 64)
        self.dec2 = _RefBlock(192, 128, 32)
        self.dec1 = _RefBlock(96, 64, 32)
        self.out = nn.Conv2d(32, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def up(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=like.shape[-2:], mode="bilinear")

        e1 = F.relu(self.conv1(F.relu(self.init_conv(x))))
        e2 = F.relu(self.conv2(F.max_pool2d(e1, 2)))
        e3 = F.relu(self.conv3s(F.relu(self.conv3(F.max_pool2d(e2, 2)))))
        e4 = F.relu(self.conv4s(F.relu(self.conv4(F.max_pool2d(e3, 2)))))
        e5 = F.relu(self.conv5s(F.relu(self.conv5(F.max_pool2d(e4, 2)))))
        c = self.center(F.max_pool2d(e5, 2))
        d5 = self.dec5(torch.cat([up(c, e5), e5], 1))
        d4 = self.dec4(torch.cat([up(d5, e4), e4], 1))
        d3 = self.dec3(torch.cat([up(d4, e3), e3], 1))
        d2 = self.dec2(torch.cat([up(d3, e2), e2], 1))
        return self.out(self.dec1(torch.cat([up(d2, e1), e1], 1)))


@pytest.fixture(scope="module")
def reference() -> _Reference:
    torch.manual_seed(0)
    ref = _Reference()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a layout mix-up would change the output
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return ref.eval()


def test_state_dict_names_and_shapes_match_the_public_layout(reference):
    ours = LungUNet()
    want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == want
    # a few entries spelled out from the public code: 1x1 lift to RGB, VGG11 convs, decoder widths, 2 classes
    assert got["init_conv.weight"] == (3, 1, 1, 1)
    assert got["conv3s.weight"] == (256, 256, 3, 3) and got["conv5s.weight"] == (512, 512, 3, 3)
    assert got["dec5.conv1.weight"] == (512, 768, 3, 3) and got["dec1.bn2.running_var"] == (32,)
    assert got["out.weight"] == (2, 32, 1, 1)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference(x), rtol=1e-4, atol=1e-4)


def test_public_plain_state_dict_loads_strictly_in_all_its_wrappings(tmp_path, reference):
    sd = reference.state_dict()
    x = torch.randn(1, 1, 32, 32)
    for i, obj in enumerate([sd, {f"module.{k}": v for k, v in sd.items()}, {"model_state_dict": sd}]):
        path = tmp_path / f"UNet_LungSegmentation_{i}.pt"
        torch.save(obj, path)
        lungs = load_lung_model(path)
        assert lungs.input_size == 512 and len(lungs.sha256) == 64
        with torch.no_grad():
            torch.testing.assert_close(lungs.net(x), reference(x), rtol=1e-4, atol=1e-4)


def test_batch_of_masks_on_cpu_has_the_requested_shape(tmp_path):
    torch.manual_seed(0)
    path = save_lung_checkpoint(tmp_path / "lungs.pt", LungUNet().eval(), input_size=64)
    lungs = load_lung_model(path)
    assert lungs.input_size == 64
    source = torch.randint(0, 256, (3, 1, 100, 80), dtype=torch.uint8)
    mask = lung_masks(lungs, source, (40, 48))
    assert mask.shape == (3, 40, 48) and mask.dtype == torch.bool
    # each image's mask depends on that image only (eval-mode BatchNorm)
    torch.testing.assert_close(lung_masks(lungs, source[1:2], (40, 48)), mask[1:2])


def test_input_is_squash_resized_grey_minus_half():
    source = torch.tensor([[0, 255], [255, 0]], dtype=torch.uint8).view(1, 1, 2, 2)
    x = lung_input(source, 2)
    torch.testing.assert_close(x, source.float() / 255 - INPUT_SHIFT)
    assert lung_input(torch.full((2, 1, 700, 600), 128, dtype=torch.uint8), 512).shape == (2, 1, 512, 512)


def test_foreign_files_are_refused_with_the_file_name_and_the_fix(tmp_path):
    with pytest.raises(LungModelError, match="no such lung-segmentation checkpoint"):
        load_lung_model(tmp_path / "missing.pt")
    bad = tmp_path / "classifier.pt"
    torch.save(nn.Linear(2, 2).state_dict(), bad)
    with pytest.raises(LungModelError, match=r"classifier\.pt: not the lung-segmentation U-Net.*missing"):
        load_lung_model(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(LungModelError, match="junk.pt: not a readable"):
        load_lung_model(junk)
