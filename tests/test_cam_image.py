"""Heatmap colouring, upsampling, Grad-CAM-guided crop boxes, crops and enhanced images (batched, on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from enhancer.explain.cam import (
    CropSettings,
    EnhanceSettings,
    colorize_jet,
    crop,
    crop_boxes,
    enhance,
    largest_region,
    upsample,
)
from tests.tools.missing import require_module

EXACT = CropSettings(margin=0.0, min_size=0.0)  # the bare hot-region box


def test_upsample_is_bilinear_half_pixel() -> None:
    cv2 = require_module("cv2", install="opencv-python-headless (comes with grad-cam==1.5.7)")
    maps = torch.rand(3, 7, 5, generator=torch.Generator().manual_seed(0))
    up = upsample(maps, (224, 160))
    assert up.shape == (3, 224, 160) and up.dtype == torch.float32
    for m, u in zip(maps, up, strict=True):
        np.testing.assert_allclose(
            u.numpy(), cv2.resize(m.numpy(), (160, 224), interpolation=cv2.INTER_LINEAR), atol=1e-5
        )


def test_colorize_jet_anchors() -> None:
    heat = torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(0))
    rgb = colorize_jet(heat)
    assert rgb.shape == (2, 3, 5, 7) and rgb.dtype == torch.uint8
    # anchors: 0 -> dark blue, 1 -> dark red; out of range and NaN clamped
    edge = colorize_jet(torch.tensor([[[0.0, 1.0, -3.0, 7.0, float("nan")]]]))[0, :, 0].T.tolist()
    assert edge == [[0, 0, 128], [128, 0, 0], [0, 0, 128], [128, 0, 0], [0, 0, 128]]
    # every level against the textbook piecewise-linear JET: channel k = clip(1.5 - |4v - (3, 2, 1)[k]|, 0, 1)
    v = torch.arange(256, dtype=torch.float64) / 255
    textbook = torch.stack([(1.5 - (4 * v - c).abs()).clamp(0, 1) * 255 for c in (3, 2, 1)], 1)
    ours = colorize_jet(v.float().view(1, 1, -1))[0, :, 0].T.double()
    assert (ours - textbook).abs().max().item() <= 1
    # uint8 heat (a stored heatmap) is taken as the levels themselves
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, -1)
    assert torch.equal(colorize_jet(levels)[0, :, 0].T.double(), ours)


def test_colorize_jet_matches_opencv() -> None:
    heat = torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(0))
    rgb = colorize_jet(heat)
    cv2 = require_module("cv2", install="opencv-python-headless (comes with grad-cam==1.5.7)")
    levels = torch.arange(256, dtype=torch.uint8)
    bgr = cv2.applyColorMap(levels.numpy()[None], cv2.COLORMAP_JET)[0]
    ours = colorize_jet(levels.float().view(1, 1, -1) / 255)[0, :, 0].T.numpy()
    assert np.abs(ours.astype(int) - bgr[:, ::-1].astype(int)).max() <= 1
    for img, h in zip(rgb, heat, strict=True):  # levels are uint8(255 * heat), as pytorch-grad-cam does
        theirs = cv2.applyColorMap(np.uint8(255 * h.numpy()), cv2.COLORMAP_JET)[..., ::-1]
        assert np.abs(img.permute(1, 2, 0).numpy().astype(int) - theirs.astype(int)).max() <= 1


def _heat(n: int = 1, size: tuple[int, int] = (100, 100), background: float = 0.2) -> torch.Tensor:
    return torch.full((n, *size), background)


def test_box_around_hot_region_in_original_pixels() -> None:
    heat = _heat()
    heat[0, 20:40, 30:60] = 1.0  # rows 20..39, cols 30..59
    assert crop_boxes(heat, torch.tensor([[100, 100]]), EXACT).tolist() == [[30, 20, 60, 40]]
    # original 200 (h) x 300 (w), squashed to 100 x 100 for the model: x * 3, y * 2
    assert crop_boxes(heat, torch.tensor([[200, 300]]), EXACT).tolist() == [[90, 40, 180, 80]]
    # 0.9 * the max: the 0.2 background never counts; a 0.5-fraction threshold on a 0.6 plateau still does
    heat[0, 70:80, 70:80] = 0.6
    assert crop_boxes(heat, torch.tensor([[100, 100]]), CropSettings(threshold=0.9, margin=0, min_size=0)).tolist() == [
        [30, 20, 60, 40]
    ]
    assert crop_boxes(heat, torch.tensor([[100, 100]]), EXACT).tolist() == [[30, 20, 80, 80]]


def test_margin_and_clipping_at_the_borders() -> None:
    heat = _heat(2)
    heat[0, 20:40, 30:60] = 1.0
    heat[1, 0:10, 90:100] = 1.0  # top-right corner
    boxes = crop_boxes(heat, torch.tensor([[100, 100], [100, 100]]), CropSettings(margin=0.1, min_size=0))
    assert boxes.dtype == torch.int32
    # 30 wide -> 3 px each side, 20 high -> 2 px each side; corner box clipped to the image
    assert boxes.tolist() == [[27, 18, 63, 42], [89, 0, 100, 11]]
    big = crop_boxes(heat, torch.tensor([[100, 100], [100, 100]]), CropSettings(margin=5.0, min_size=0))
    assert big.tolist() == [[0, 0, 100, 100], [40, 0, 100, 60]]


def test_min_size_grows_centred_and_slides_inside() -> None:
    heat = _heat(3)
    heat[0, 45:55, 45:55] = 1.0
    heat[1, 0:10, 0:10] = 1.0
    heat[2, 90:100, 90:100] = 1.0
    boxes = crop_boxes(heat, torch.tensor([[100, 100]] * 3), CropSettings(margin=0, min_size=0.5))
    assert boxes.tolist() == [[25, 25, 75, 75], [0, 0, 50, 50], [50, 50, 100, 100]]
    # min_size is a fraction of each original side
    boxes = crop_boxes(heat[:1], torch.tensor([[200, 100]]), CropSettings(margin=0, min_size=0.5))
    assert boxes.tolist() == [[25, 50, 75, 150]]  # hot rows 90..110 in original px, grown to 100 rows


def test_square_boxes() -> None:
    heat = _heat(2)
    heat[0, 10:40, 60:70] = 1.0  # 10 wide, 30 tall
    heat[1, 10:40, 95:100] = 1.0  # against the right border
    boxes = crop_boxes(heat, torch.tensor([[100, 100], [100, 100]]), CropSettings(margin=0, min_size=0, square=True))
    assert boxes.tolist() == [[50, 10, 80, 40], [70, 10, 100, 40]]
    # a square larger than the image's short side cannot stay square: clipped to the image
    wide = _heat()
    wide[0, 10:90, 10:90] = 1.0  # original 50 h x 200 w: x 20..180, y 5..45 -> 160 x 160 does not fit in 50 rows
    box = crop_boxes(wide, torch.tensor([[50, 200]]), CropSettings(margin=0, min_size=0, square=True))
    assert box.tolist() == [[20, 0, 180, 50]]


def test_tiny_and_empty_maps() -> None:
    heat = torch.zeros(3, 100, 100)
    heat[1, 50, 70] = 0.01  # one faint pixel is still the hottest
    heat[2] = float("nan")
    size = torch.tensor([[100, 100], [100, 100], [60, 80]])
    assert crop_boxes(heat, size, EXACT).tolist() == [[0, 0, 100, 100], [70, 50, 71, 51], [0, 0, 80, 60]]
    assert crop_boxes(heat, size).tolist()[1] == [58, 38, 83, 63]  # default min_size 0.25: 25 px, centred


def test_largest_region() -> None:
    heat = _heat(2)
    heat[:, 10:20, 10:20] = 1.0  # 100 px
    heat[:, 60:80, 60:80] = 0.9  # 400 px
    for k in range(10):  # a 1-px diagonal joins a third region to the first in image 1 only (8-connectivity)
        heat[1, 20 + k, 20 + k] = 1.0
    heat[1, 30:50, 30:50] = 1.0  # 400 + 10 + 100 px connected > 400
    size = torch.tensor([[100, 100], [100, 100]])
    assert crop_boxes(heat, size, EXACT).tolist() == [[10, 10, 80, 80], [10, 10, 80, 80]]
    settings = CropSettings(margin=0, min_size=0, largest_region=True)
    assert crop_boxes(heat, size, settings).tolist() == [[60, 60, 80, 80], [10, 10, 50, 50]]
    mask = heat > 0.5
    kept = largest_region(mask)
    assert kept.sum((1, 2)).tolist() == [400, 510] and not (kept & ~mask).any()


def test_crop_settings_validate_and_round_trip() -> None:
    s = CropSettings(threshold=0.3, largest_region=True, square=True, size=(128, 96))
    assert CropSettings.from_dict(s.to_dict()) == s
    for bad in ({"threshold": 0}, {"threshold": 1.5}, {"margin": -0.1}, {"min_size": 2}, {"size": (0, 3)}):
        with pytest.raises(ValueError):
            CropSettings(**bad)


def _source(n: int = 2, s: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_crop_equals_slice_and_area_resize_when_shrinking() -> None:
    src = _source()
    boxes = torch.tensor([[8, 16, 40, 48], [0, 0, 64, 64]], dtype=torch.int32)
    out = crop(src, boxes, torch.tensor([[64, 64], [64, 64]]), (16, 16))
    assert out.shape == (2, 1, 16, 16) and out.dtype == torch.uint8
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        ref = F.interpolate(src[i : i + 1, :, y1:y2, x1:x2].float(), size=(16, 16), mode="area").round()
        assert (out[i : i + 1].float() - ref).abs().max() <= 1


def test_crop_equals_slice_and_bilinear_resize_when_enlarging() -> None:
    src = _source()
    boxes = torch.tensor([[0, 0, 64, 64], [20, 10, 36, 26]], dtype=torch.int32)
    out = crop(src, boxes, torch.tensor([[64, 64], [64, 64]]), (100, 100)).float()
    whole = F.interpolate(src[:1].float(), size=(100, 100), mode="bilinear", align_corners=False).round()
    assert (out[:1] - whole).abs().max() <= 1
    part = F.interpolate(src[1:, :, 10:26, 20:36].float(), size=(100, 100), mode="bilinear", align_corners=False)
    # identical except within half a source pixel of the box edge (ceil(100 / 16 / 2) = 4 output pixels): there
    # roi_align blends in the real neighbours outside the box where a slice can only repeat its edge
    assert (out[1:, :, 4:-4, 4:-4] - part.round()[:, :, 4:-4, 4:-4]).abs().max() <= 1
    assert (out[1:, :, :4] - part.round()[:, :, :4]).abs().max() > 1


def test_crop_maps_original_pixels_to_the_high_resolution_source() -> None:
    src = _source(1)  # the original (128 h x 256 w) squashed to 64 x 64: x / 4, y / 2
    box = torch.tensor([[32, 64, 160, 128]], dtype=torch.int32)  # -> source x 8..40, y 32..64
    out = crop(src, box, torch.tensor([[128, 256]]), (16, 16))
    ref = F.interpolate(src[:, :, 32:64, 8:40].float(), size=(16, 16), mode="area").round()
    assert (out.float() - ref).abs().max() <= 1
    # a float source in [0, 1] gives the same crop
    assert torch.equal(crop(src.float() / 255, box, torch.tensor([[128, 256]]), (16, 16)), out)


def test_enhance_formula_and_lung_mask() -> None:
    image = torch.full((2, 1, 4, 4), 0.8)
    heat = torch.linspace(0, 1, 16).view(1, 4, 4).expand(2, -1, -1)
    out = enhance(image, heat, EnhanceSettings(floor=0.3))
    assert out.shape == (2, 1, 4, 4) and out.dtype == torch.uint8
    expected = (0.8 * (0.3 + 0.7 * heat[:, None]) * 255).round()
    assert torch.equal(out.float(), expected)
    assert out[0, 0, 0, 0] == round(0.8 * 0.3 * 255) and out[0, 0, 3, 3] == round(0.8 * 255)
    # floor 1: unchanged image; gamma 2 narrows the emphasis
    assert torch.equal(enhance(image, heat, EnhanceSettings(floor=1.0)), torch.full_like(out, round(0.8 * 255)))
    g2 = enhance(image, heat, EnhanceSettings(floor=0.0, gamma=2.0))
    assert torch.equal(g2.float(), (0.8 * heat[:, None] ** 2 * 255).round())
    # lung mask: outside is black by default, mask_floor keeps a fraction
    mask = torch.zeros(2, 4, 4)
    mask[:, :, :2] = 1
    masked = enhance(image, heat, EnhanceSettings(floor=0.3), lung_mask=mask)
    assert torch.equal(masked[..., :2], out[..., :2]) and masked[..., 2:].max() == 0
    half = enhance(image, heat, EnhanceSettings(floor=0.3, mask_floor=0.5), lung_mask=mask.bool())
    assert torch.equal(half[..., 2:].float(), (0.5 * expected[..., 2:]).round())
    with pytest.raises(ValueError, match="upsample"):
        enhance(image, heat[:, :2])
    for bad in ({"floor": -0.1}, {"floor": 1.1}, {"gamma": 0}, {"mask_floor": 2}):
        with pytest.raises(ValueError):
            EnhanceSettings(**bad)
    assert EnhanceSettings.from_dict(EnhanceSettings(floor=0.1).to_dict()) == EnhanceSettings(floor=0.1)


def _flood_fill_largest(mask: torch.Tensor) -> list[int]:
    """Reference: size of the largest 8-connected region per image, by breadth-first search."""
    sizes = []
    for m in mask.tolist():
        h, w = len(m), len(m[0])
        seen = [[False] * w for _ in range(h)]
        best = 0
        for y0 in range(h):
            for x0 in range(w):
                if not m[y0][x0] or seen[y0][x0]:
                    continue
                seen[y0][x0], stack, size = True, [(y0, x0)], 0
                while stack:
                    y, x = stack.pop()
                    size += 1
                    for yy in range(max(y - 1, 0), min(y + 2, h)):
                        for xx in range(max(x - 1, 0), min(x + 2, w)):
                            if m[yy][xx] and not seen[yy][xx]:
                                seen[yy][xx] = True
                                stack.append((yy, xx))
                best = max(best, size)
        sizes.append(best)
    return sizes


def test_largest_region_matches_flood_fill_on_random_and_winding_masks() -> None:
    g = torch.Generator().manual_seed(0)
    blobs = upsample(torch.rand(4, 5, 5, generator=g), (30, 30)) > 0.6
    noise = torch.rand(3, 30, 30, generator=g) > 0.45
    snake = torch.zeros(1, 30, 30, dtype=torch.bool)  # one path that turns 14 times
    snake[0, ::4] = True
    for k, row in enumerate(range(0, 28, 4)):
        snake[0, row : row + 4, 29 if k % 2 == 0 else 0] = True
    mask = torch.cat([blobs, noise, snake])
    kept = largest_region(mask)
    assert kept.sum((1, 2)).tolist() == _flood_fill_largest(mask)
    assert not (kept & ~mask).any()
