"""DALI (CPU) and torch loaders: parity with the seed's preprocessing, accounting on messy data, sharding."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from enhancer.data import Batch, Rejection, Sample, make_loader, scan, shard, validate
from enhancer.data.dali_loader import dali_available
from enhancer.preprocessing import RGB_PREPROCESSING, SEED_PREPROCESSING
from tests.test_data_validate import MAX_PIXELS, make_messy_dataset

LOADERS = [pytest.param("dali", marks=pytest.mark.dali), "torch"]


def seed_reference(paths: list[str]) -> torch.Tensor:
    """The original research preprocessing in [0, 1] units (before Normalize): (N, 1, 224, 224). The notebook's
    ``Grayscale(1), Resize((224, 224))`` on PIL images is Pillow's ``convert("L").resize(BILINEAR)`` with
    ``reducing_gap=None``, spelled out here so that the reference does not move with torchvision."""
    grey = [Image.open(p).convert("L").resize((224, 224), Image.Resampling.BILINEAR, reducing_gap=None) for p in paths]
    return torch.stack([torch.from_numpy(np.array(g)).float().div(255)[None] for g in grey])


def run(loader_name: str, samples: list[Sample], **kw: object) -> tuple[list[Batch], list[Rejection], str]:
    loader = make_loader(samples, SEED_PREPROCESSING, loader=loader_name, num_threads=2, **kw)
    batches = list(loader)
    assert loader.n_loaded == sum(len(b) for b in batches)
    return batches, loader.rejected, loader.name


def cat(batches: list[Batch], field: str) -> torch.Tensor:
    return torch.cat([getattr(b, field) for b in batches])


@pytest.fixture(scope="module")
def real_samples(kermany_dir: Path) -> list[Sample]:
    return list(scan(kermany_dir).samples)


@pytest.fixture(scope="module")
def reference(real_samples: list[Sample]) -> torch.Tensor:
    return seed_reference([s.path for s in real_samples])


def check_parity(image: torch.Tensor, reference: torch.Tensor) -> None:
    """CPU loaders against Pillow, on the whole image, border rows and columns included. The resize is torch's
    PIL-exact uint8 kernel on both CPU paths (DALI's CPU pipeline only decodes): the torch loader matches to
    float rounding; DALI's own JPEG decoder moves single pixels by one level, so one tolerance holds for both."""
    x = image.float() * SEED_PREPROCESSING.std[0] + SEED_PREPROCESSING.mean[0]  # back to [0, 1]
    diff = (x.cpu() - reference).abs()
    assert diff.max().item() <= 2 / 255, f"max {diff.max().item() * 255:.2f}/255"
    assert diff.mean().item() <= 0.5 / 255, f"mean {diff.mean().item() * 255:.3f}/255"


def check_gpu_parity(image: torch.Tensor, reference: torch.Tensor) -> None:
    """GPU loaders: nvJPEG decodes differently from libjpeg-turbo and DALI's GPU resize treats the outermost
    row/column its own way (up to ~24/255 there), so the border is left out and the mean is looser."""
    x = image.float() * SEED_PREPROCESSING.std[0] + SEED_PREPROCESSING.mean[0]
    diff = (x.cpu() - reference).abs()
    assert diff.mean().item() <= 1.5 / 255
    assert diff[..., 1:-1, 1:-1].max().item() <= 2 / 255


def test_parity_check_covers_the_border(real_samples: list[Sample], reference: torch.Tensor) -> None:
    image = cat(run("torch", real_samples, batch_size=8)[0], "image")
    check_parity(image, reference)
    shift = 24 / 255 / SEED_PREPROCESSING.std[0]  # what DALI's own CPU resize once did to the outermost pixels
    for border in (np.s_[..., 0, :], np.s_[..., -1, :], np.s_[..., :, 0], np.s_[..., :, -1]):
        moved = image.clone()
        moved[border] += shift
        with pytest.raises(AssertionError, match="max"):
            check_parity(moved, reference)


@pytest.mark.parametrize("loader_name", LOADERS)
def test_parity_with_seed_preprocessing(loader_name: str, real_samples: list[Sample], reference: torch.Tensor) -> None:
    batches, rejected, name = run(loader_name, real_samples, batch_size=5)
    assert name == f"{loader_name}-cpu" and rejected == []
    assert [len(b) for b in batches] == [5, 5, 5, 1]  # PARTIAL last batch, nothing dropped or repeated
    image = cat(batches, "image")
    assert image.shape == (16, 1, 224, 224) and image.dtype == torch.float32
    check_parity(image, reference)
    assert cat(batches, "index").tolist() == list(range(16))
    assert cat(batches, "label").tolist() == [s.label for s in real_samples]
    sizes = [Image.open(s.path).size for s in real_samples]
    assert cat(batches, "orig_size").tolist() == [[h, w] for w, h in sizes]
    source = cat(batches, "source")
    assert source.shape == (16, 1, 512, 512) and source.dtype == torch.uint8
    # the crop source is the same picture at a higher resolution: downscaled, it matches the model input
    small = torch.nn.functional.interpolate(source.float() / 255, size=(224, 224), mode="area")
    assert (small - reference).abs().mean().item() < 2 / 255


@pytest.mark.dali
def test_loaders_agree_on_order_labels_and_pixels(real_samples: list[Sample]) -> None:
    dali, _, _ = run("dali", real_samples, batch_size=7)
    torch_, _, _ = run("torch", real_samples, batch_size=7)
    for field in ("index", "label", "orig_size"):
        assert torch.equal(cat(dali, field), cat(torch_, field))
    diff = (cat(dali, "source").float() - cat(torch_, "source").float()).abs()
    assert diff.mean().item() < 1.0 and diff[..., 1:-1, 1:-1].max().item() <= 2


@pytest.mark.parametrize("loader_name", LOADERS)
def test_rgb_preprocessing_and_half_precision(loader_name: str, real_samples: list[Sample]) -> None:
    loader = make_loader(real_samples[:3], RGB_PREPROCESSING, loader=loader_name, dtype=torch.float16, source_size=96)
    (batch,) = list(loader)
    assert batch.image.shape == (3, 3, 224, 224) and batch.image.dtype == torch.float16
    assert batch.source.shape == (3, 1, 96, 96)
    x = batch.image.float() * torch.tensor(RGB_PREPROCESSING.std).view(1, 3, 1, 1)
    x = x + torch.tensor(RGB_PREPROCESSING.mean).view(1, 3, 1, 1)
    assert (x[:, 0] - x[:, 2]).abs().max().item() < 2e-3  # the grey image replicated to 3 channels


@pytest.mark.parametrize("loader_name", LOADERS)
def test_messy_dataset_accounting(loader_name: str, tmp_path: Path) -> None:
    expected = make_messy_dataset(tmp_path)
    samples = scan(tmp_path).samples
    ok, rejected = validate(samples, level="header", max_pixels=MAX_PIXELS)
    batches, decode_rejected, _ = run(loader_name, ok, batch_size=4)
    loaded = cat(batches, "index").tolist()
    all_rejected = rejected + decode_rejected
    assert len(samples) == len(loaded) + len(all_rejected)  # n_in = n_loaded + n_rejected
    assert sorted(loaded + [r.index for r in all_rejected]) == [s.index for s in samples]
    assert all(r.path and r.code and r.message for r in all_rejected)
    # the corrupt JPEG passed header validation, failed at decode time, and only it was lost
    (bad,) = decode_rejected
    assert bad.path.endswith("g_bad_huffman.jpeg") and bad.code == "decode_error"
    assert len(loaded) == sum(code is None for code in expected.values()) - 1
    assert loaded == sorted(loaded)
    paths = {s.index: s.path for s in samples}
    rows = {os.path.relpath(paths[i], tmp_path): k for k, i in enumerate(loaded)}
    image = cat(batches, "image") * SEED_PREPROCESSING.std[0] + SEED_PREPROCESSING.mean[0]
    orig = cat(batches, "orig_size")
    # 1x1 image: a constant 77 everywhere
    one = rows["good/i_one_pixel.png"]
    assert orig[one].tolist() == [1, 1] and (image[one] * 255 - 77).abs().max().item() < 0.5
    # 16-bit PNG: scaled to 8 bit (v / 257), not clipped at 255
    g16 = rows["good/g_grey16.png"]
    ref16 = np.rint(np.linspace(0, 65535, 48 * 64).reshape(48, 64) / 257).astype(np.uint8)
    ref16 = T.ToTensor()(Image.fromarray(ref16).resize((224, 224), Image.BILINEAR))
    assert (image[g16] - ref16).abs().mean().item() < 1.5 / 255
    # RGB / RGBA / palette / CMYK / PNG-named-.jpeg / non-UTF-8 name: converted like PIL convert("L")
    for rel in ["good/b_rgb.jpeg", "good/d_rgb.png", "good/e_rgba.png", "good/f_palette.png", "good/h_png_named.jpeg"]:
        ref = seed_reference([str(tmp_path / rel)])[0]
        assert (image[rows[rel]] - ref).abs().mean().item() < 1.5 / 255, rel
    non_utf8 = os.fsdecode(b"good/caf\xe9 \xff.jpeg")
    assert orig[rows[non_utf8]].tolist() == [40, 30]
    assert (image[rows[non_utf8]] - seed_reference([paths[loaded[rows[non_utf8]]]])[0]).abs().mean() < 1.5 / 255
    cmyk = image[rows["good/c_cmyk.jpeg"]]
    assert (cmyk - seed_reference([str(tmp_path / "good/c_cmyk.jpeg")])[0]).abs().mean().item() < 3 / 255


@pytest.mark.parametrize("loader_name", LOADERS)
def test_corrupt_file_is_isolated_within_its_batch(
    loader_name: str, tmp_path: Path, real_samples: list[Sample]
) -> None:
    from tests.test_data_validate import bad_huffman_jpeg

    bad_path = tmp_path / "bad.jpeg"
    bad_path.write_bytes(bad_huffman_jpeg(np.full((64, 64), 100, np.uint8)))
    samples = [Sample(i, s.path, s.label) for i, s in enumerate(real_samples[:7])]
    samples.insert(5, Sample(99, str(bad_path), 0))
    assert validate(samples, level="header")[1] == []  # header validation cannot see it
    batches, rejected, _ = run(loader_name, samples, batch_size=4)
    assert [r.index for r in rejected] == [99] and rejected[0].path == str(bad_path)
    assert cat(batches, "index").tolist() == [0, 1, 2, 3, 4, 5, 6]  # the batch-mates all arrive


@pytest.mark.parametrize("loader_name", LOADERS)
def test_sharded_loaders_cover_everything(loader_name: str, real_samples: list[Sample]) -> None:
    few = real_samples[:3]
    for data, num_shards in ((real_samples, 3), (few, 7)):  # 7 shards of 3 samples: most are empty
        seen = []
        for k in range(num_shards):
            loader = make_loader(shard(data, k, num_shards), SEED_PREPROCESSING, loader=loader_name, batch_size=4)
            got = [i for b in loader for i in b.index.tolist()]
            assert len(loader) == -(-len(shard(data, k, num_shards)) // 4)
            seen += got
        assert seen == [s.index for s in data]


def test_make_loader_choices(real_samples: list[Sample]) -> None:
    auto = make_loader(real_samples, SEED_PREPROCESSING)
    assert auto.name == ("dali-cpu" if dali_available() else "torch-cpu") and len(auto) == 1
    with pytest.raises(ValueError, match="valid: auto, dali, torch"):
        make_loader(real_samples, SEED_PREPROCESSING, loader="opencv")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            make_loader(real_samples, SEED_PREPROCESSING, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("loader_name", LOADERS)
def test_gpu_parity_and_accounting(
    loader_name: str, real_samples: list[Sample], reference: torch.Tensor, tmp_path: Path
) -> None:
    batches, rejected, name = run(loader_name, real_samples, batch_size=5, device="cuda")
    assert name == f"{loader_name}-gpu" and rejected == []
    image = cat(batches, "image")
    assert image.is_cuda and cat(batches, "source").is_cuda
    check_gpu_parity(image, reference)
    assert cat(batches, "index").tolist() == list(range(16))
    make_messy_dataset(tmp_path)
    samples = scan(tmp_path).samples
    ok, rej = validate(samples, max_pixels=MAX_PIXELS)
    batches, decode_rejected, _ = run(loader_name, ok, batch_size=4, device="cuda")
    assert len(samples) == sum(len(b) for b in batches) + len(rej) + len(decode_rejected)
    assert [os.path.basename(r.path) for r in decode_rejected] == ["g_bad_huffman.jpeg"]


@pytest.mark.parametrize("loader_name", LOADERS)
def test_file_vanishing_after_validation_is_reported_missing(
    loader_name: str, tmp_path: Path, real_samples: list[Sample]
) -> None:
    gone = Sample(50, str(tmp_path / "deleted.jpeg"), 1)
    samples = [real_samples[0], gone, real_samples[1]]
    batches, rejected, _ = run(loader_name, samples, batch_size=8)
    assert cat(batches, "index").tolist() == [0, 1]
    assert [(r.index, r.code) for r in rejected] == [(50, "missing")]


@pytest.mark.parametrize("loader_name", LOADERS)
def test_empty_sample_list(loader_name: str) -> None:
    loader = make_loader([], SEED_PREPROCESSING, loader=loader_name)
    assert len(loader) == 0 and list(loader) == [] and loader.rejected == []
