"""Per-field codecs: the codec grammar (store and spec agree), round trips of every codec on real X-ray planes,
raw fallback chunks, chunk order under many threads, JPEG encoded ahead of the writer, and bad codec settings."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from enhancer import specs
from enhancer.cli import main
from enhancer.store import AsyncShardWriter, ShardWriter, StoreError, per_sample_shapes, resolve_fields
from enhancer.store.codecs import (
    CODEC_FIELDS,
    DEFAULT_CODECS,
    JPEG_FIELDS,
    Codec,
    EncodedPlanes,
    jpeg_decode,
    jpeg_encode,
    parse_codec,
    resolve_codecs,
)
from enhancer.store.device_jpeg import encode_jpeg_fields, encode_jpeg_planes
from enhancer.store.encoding import BatchEncoder, default_write_threads
from enhancer.store.reading import field_codec, read_rows, sample_shape
from tests.tools.store_synth import make_batch

FIELDS = resolve_fields("image,heatmap,enhanced,cam")


@pytest.fixture(scope="module")
def xray_planes(kermany_dir: Path) -> np.ndarray:
    """The 16 real sample X-rays as (16, 1, 224, 224) uint8 planes."""
    paths = sorted(kermany_dir.rglob("*.jpeg"))
    return np.stack([np.asarray(Image.open(p).convert("L").resize((224, 224)))[None] for p in paths])


def _batch(planes: np.ndarray, start: int) -> dict:
    n = len(planes)
    batch = make_batch(range(start, start + n), resolve_fields(""))
    yy, xx = np.mgrid[0:224, 0:224]
    smooth = (255 * np.exp(-((yy - 100) ** 2 + (xx - 120) ** 2) / 4000.0)).astype(np.uint8)
    batch.update(
        image=planes,
        enhanced=(planes // 2).astype(np.uint8),
        heatmap=np.repeat(smooth[None], n, 0),
        cam=np.linspace(0, 1, n * 49, dtype=np.float32).reshape(n, 7, 7),
    )
    return batch


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _shapes() -> dict:
    return per_sample_shapes(FIELDS, H=224, W=224, h=7, w=7, C=3)


# -- the grammar ---------------------------------------------------------------------------------------------------


def test_codec_names() -> None:
    assert parse_codec("none", "image") == Codec("none")
    assert parse_codec("gzip", "heatmap") == Codec("gzip", 4)
    assert parse_codec("gzip1", "cam") == Codec("gzip", 1)
    assert parse_codec("jpeg", "enhanced") == Codec("jpeg", 95)
    assert parse_codec("jpeg80", "crop").name == "jpeg80"
    assert parse_codec("lzf", "prob") == Codec("lzf")
    with pytest.raises(StoreError, match="'jpeg95' is not valid for field 'heatmap'; choose one of none, gzip, gzip1"):
        parse_codec("jpeg95", "heatmap")
    with pytest.raises(StoreError, match="choose one of none, gzip, gzip1..gzip9, lzf, jpeg, jpeg1..jpeg100"):
        parse_codec("gzip10", "image")
    with pytest.raises(StoreError, match="no codec for field 'path'"):
        parse_codec("gzip", "path")


@pytest.mark.parametrize(
    "text",
    ["none", "lzf", "gzip", "gzip1", "gzip9", "gzip0", "gzip10", "gzip01", "jpeg", "jpeg1", "jpeg95", "jpeg100"]
    + ["jpeg101", "jpeg0", "none1", "zstd", "GZIP", " gzip", ""],
)
def test_spec_and_store_accept_the_same_codecs(text: str) -> None:
    """specs.py cannot import the store, so it keeps its own copy of the rules: they must agree exactly."""
    assert specs.CODEC_FIELDS == CODEC_FIELDS and specs.JPEG_FIELDS == JPEG_FIELDS
    for field in ("image", "heatmap", "prob"):
        try:
            parse_codec(text, field)
            store_ok = True
        except StoreError:
            store_ok = False
        try:
            specs.check_codec(field, text)
            spec_ok = True
        except specs.SpecError:
            spec_ok = False
        assert store_ok == spec_ok, (text, field)


def test_resolve_codecs_defaults_blanket_and_errors() -> None:
    fields = resolve_fields("all")
    auto = {k: c.name for k, c in resolve_codecs(fields).items()}
    assert auto == {k: DEFAULT_CODECS.get(k, "none") for k in fields if k != "path"}
    blanket = resolve_codecs(fields, {"image": "jpeg90"}, compression="gzip")
    assert blanket["image"].name == "jpeg90" and blanket["heatmap"].name == "gzip4" and blanket["label"].name == "gzip4"
    with pytest.raises(StoreError, match="unknown field\\(s\\) \\['heatmapp'\\]; fields with a codec: index"):
        resolve_codecs(fields, {"heatmapp": "gzip1"})
    with pytest.raises(StoreError, match="\\['lung_mask'\\] that this job does not write"):
        resolve_codecs(fields, {"lung_mask": "gzip1"})
    with pytest.raises(StoreError, match="unknown compression 'zstd'"):
        resolve_codecs(fields, compression="zstd")


def test_default_write_threads_leaves_the_loader_its_cores() -> None:
    import os

    cores = len(os.sched_getaffinity(0))
    assert default_write_threads(0) == cores
    assert default_write_threads(cores + 5) == 1
    assert default_write_threads(1) == max(1, cores - 1)


# -- round trips ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "gzip1", "gzip9", "lzf"])
def test_lossless_codecs_round_trip(tmp_path: Path, xray_planes: np.ndarray, codec: str) -> None:
    codecs = {name: codec for name in ("image", "heatmap", "enhanced", "cam")}
    batch = _batch(xray_planes, 0)
    with ShardWriter(tmp_path, 0, 1, fields=FIELDS, shapes=_shapes(), codecs=codecs, write_threads=2) as w:
        w.write(batch)
    with h5py.File(w.path, "r") as f:
        for name in ("image", "heatmap", "enhanced", "cam", "prob", "index"):
            ds = f[name]
            assert field_codec(ds) == (codec if name in codecs else "none"), name
            np.testing.assert_array_equal(ds[:], batch[name])  # plain h5py, no enhancer code involved
        if codec.startswith("gzip"):
            # Deflate shrinks the smooth heatmap ~3x or more but the X-ray planes only ~1.3-1.8x.
            stored = {n: f[n].id.get_storage_size() / f[n][:].nbytes for n in ("image", "heatmap")}
            assert stored["heatmap"] < 0.35 < 0.5 < stored["image"] < 0.9, stored


def test_incompressible_chunks_are_stored_raw_with_the_filter_masked(tmp_path: Path) -> None:
    fields = resolve_fields("image")
    rng = np.random.default_rng(0)
    batch = make_batch(range(4), fields)
    batch["image"] = rng.integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)  # noise: deflate would grow it
    batch["image"][2] = 7  # constant: deflate shrinks it
    shapes = per_sample_shapes(fields, H=8, W=8, C=3)
    with ShardWriter(tmp_path, 0, 1, fields=fields, shapes=shapes, codecs={"image": "gzip9"}) as w:
        w.write(batch)
    with h5py.File(w.path, "r") as f:
        ds = f["image"]
        masks = [ds.id.read_direct_chunk((k, 0, 0, 0))[0] for k in range(4)]
        assert masks == [1, 1, 0, 1]  # bit 0: the deflate filter skipped for that chunk
        assert ds.compression == "gzip"
        np.testing.assert_array_equal(ds[:], batch["image"])


def test_jpeg_round_trip_on_real_xrays(tmp_path: Path, xray_planes: np.ndarray) -> None:
    codecs = {"image": "jpeg95", "enhanced": "jpeg90"}
    batch = _batch(xray_planes, 0)
    with ShardWriter(tmp_path, 0, 1, fields=FIELDS, shapes=_shapes(), codecs=codecs, write_threads=3) as w:
        w.write(batch)
    with h5py.File(w.path, "r") as f:
        ds = f["image"]
        assert h5py.check_vlen_dtype(ds.dtype) == np.dtype(np.uint8) and ds.shape == (16,)
        assert ds.attrs["codec"] == "jpeg95" and sample_shape(ds) == (1, 224, 224)
        assert bytes(ds[0][:2]) == b"\xff\xd8"  # plain h5py returns the JPEG file
        image, enhanced = read_rows(ds, slice(None)), read_rows(f["enhanced"], [0, 5])
        np.testing.assert_array_equal(read_rows(ds, 3), image[3])
        np.testing.assert_array_equal(f["heatmap"][:], batch["heatmap"])
        sizes = [len(b) for b in ds[:]]
    assert image.shape == (16, 1, 224, 224) and image.dtype == np.uint8
    assert _psnr(image, xray_planes) >= 40, _psnr(image, xray_planes)
    assert _psnr(enhanced, batch["enhanced"][[0, 5]]) >= 40
    assert max(sizes) < 224 * 224 / 2  # well under half the raw plane


def test_chunks_stay_in_sample_order_under_many_threads(tmp_path: Path, xray_planes: np.ndarray) -> None:
    # Slices of very different cost (noise vs constant planes at gzip9, JPEG) finish out of order on 4 threads; the
    # file must still hold every sample at its row, across batches of uneven sizes, through the async writer.
    rng = np.random.default_rng(1)
    codecs = {"image": "gzip9", "heatmap": "gzip1", "enhanced": "jpeg95", "cam": "gzip9"}
    batches, start = [], 0
    for size in (5, 16, 1, 9, 16, 3, 12):
        b = _batch(xray_planes[rng.integers(0, 16, size)], start)
        b["image"][::2] = rng.integers(0, 256, b["image"][::2].shape, dtype=np.uint8)
        b["heatmap"] = np.roll(b["heatmap"], start, axis=-1)
        batches.append(b)
        start += size
    with AsyncShardWriter(
        tmp_path, 0, 1, fields=FIELDS, shapes=_shapes(), codecs=codecs, write_threads=4, maxsize=2
    ) as w:
        assert w.codecs["enhanced"] == Codec("jpeg", 95) and w.codecs["prob"] == Codec("none")
        for b in batches:
            w.put(b)
    want = {k: np.concatenate([b[k] for b in batches]) for k in ("index", "image", "heatmap", "cam", "enhanced")}
    with h5py.File(w.path, "r") as f:
        assert f["index"][:].tolist() == list(range(start))
        for name in ("image", "heatmap", "cam"):
            np.testing.assert_array_equal(f[name][:], want[name])
        jpeg = read_rows(f["enhanced"], slice(None))
    for k in range(start):
        assert _psnr(jpeg[k], want["enhanced"][k]) >= 40, k


def test_batch_encoder_results_come_in_submission_order(xray_planes: np.ndarray) -> None:
    encoder = BatchEncoder({"image": Codec("gzip", 9), "enhanced": Codec("jpeg", 95)}, threads=4)
    try:
        arrays = {"index": np.arange(16), "image": xray_planes, "enhanced": xray_planes}
        pending = encoder.submit(arrays)
        assert len(pending.encoded["image"]) == 8  # 2 slices per thread
        chunks = [c for part in pending.results("image") for c in part]
        jpegs = [j for part in pending.results("enhanced") for j in part]
    finally:
        encoder.close()
    import zlib

    assert [zlib.decompress(c) for c, _ in chunks] == [p.tobytes() for p in xray_planes]
    assert [j.tobytes() for j in jpegs] == [j.tobytes() for j in jpeg_encode(xray_planes, 95)]


# -- JPEG encoded before the writer (the GPU path runs the same code with torchvision's CPU encoder here) ------------


def test_planes_encoded_ahead_are_stored_as_they_are(tmp_path: Path, xray_planes: np.ndarray) -> None:
    planes = torch.from_numpy(xray_planes)
    device = encode_jpeg_planes(planes, 95)
    assert device.codec == "jpeg95" and device.shape == (1, 224, 224) and sum(device.lengths) == len(device.flat)
    encoded = device.to_host()
    assert isinstance(encoded, EncodedPlanes) and len(encoded) == 16
    # CPU tensors are left for the writer's pool; only CUDA tensors are encoded in place.
    assert encode_jpeg_fields({"image": planes}, {"image": Codec("jpeg", 95)})["image"] is planes
    batch = _batch(xray_planes, 0)
    batch["image"] = encoded
    with ShardWriter(tmp_path, 0, 1, fields=FIELDS, shapes=_shapes(), codecs={"image": "jpeg95"}) as w:
        w.write(batch)
        wrong = _batch(xray_planes, 16)
        wrong["image"] = encode_jpeg_planes(planes, 80).to_host()
        with pytest.raises(StoreError, match="got jpeg80 planes of shape \\(1, 224, 224\\), this shard stores jpeg95"):
            w.write(wrong)
    with h5py.File(w.path, "r") as f:
        assert [bytes(b) for b in f["image"][:]] == [d.tobytes() for d in encoded.data]
        decoded = read_rows(f["image"], slice(None))
    assert _psnr(decoded, xray_planes) >= 40


def test_colour_jpegs_decode_to_their_grey_value(xray_planes: np.ndarray) -> None:
    """nvJPEG encodes three channels: a plane stored as R = G = B must decode to the same grey plane."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.repeat(xray_planes[0, 0][..., None], 3, -1)).save(buf, format="JPEG", quality=95)
    grey = jpeg_decode(np.frombuffer(buf.getvalue(), np.uint8), (1, 224, 224))
    assert _psnr(grey, xray_planes[0]) >= 40
    with pytest.raises(StoreError, match="not JPEG"):
        png = io.BytesIO()
        Image.fromarray(xray_planes[0, 0]).save(png, format="PNG")
        jpeg_decode(np.frombuffer(png.getvalue(), np.uint8), (1, 224, 224))


# -- settings ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('heatmap = "jpeg95"', "codec.heatmap = 'jpeg95' is not valid; choose one of none, gzip, gzip1..gzip9, lzf"),
        ('image = "gzip12"', "codec.image = 'gzip12' is not valid; choose one of none, gzip, gzip1..gzip9, lzf, jpeg"),
        ('imagee = "none"', "codec.imagee: no such field; fields with a codec: index, label"),
        ("image = 95", "codec.image (job.toml) must be a string, got 95"),
    ],
)
def test_bad_codec_tables_name_the_key_and_the_choices(tmp_path: Path, table: str, expected: str) -> None:
    job = tmp_path / "job.toml"
    job.write_text(f'[enhance]\ndata = "d"\nout = "o"\n[enhance.codec]\n{table}\n')
    with pytest.raises(specs.SpecError) as err:
        specs.load_spec(specs.EnhanceSpec, job, table="enhance", environ={})
    assert expected in str(err.value).replace(str(job), "job.toml")


def test_codec_precedence_command_line_environment_job_file(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        '[enhance]\ndata = "d"\nout = "o"\nwrite_threads = 3\n[enhance.codec]\nimage = "jpeg90"\ncrop = "gzip1"\n'
    )
    spec = specs.load_spec(
        specs.EnhanceSpec,
        job,
        table="enhance",
        environ={"ENHANCER_CODEC__CROP": "none", "ENHANCER_CODEC__ENHANCED": "jpeg"},
        overrides={"codec.image": "jpeg95"},
    )
    assert spec.codec == {"image": "jpeg95", "crop": "none", "enhanced": "jpeg"} and spec.write_threads == 3
    assert (
        specs.EnhanceSpec(data="d", out="o").codec == {} and specs.EnhanceSpec(data="d", out="o").compression == "auto"
    )
    with pytest.raises(specs.SpecError, match="write_threads must be >= 1"):
        specs.EnhanceSpec(data="d", out="o", write_threads=0)


def test_cli_codec_option_errors(tmp_path: Path) -> None:
    args = ["enhance", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--codec", "heatmap=jpeg95"])
    assert result.exit_code == 2 and "codec.heatmap = 'jpeg95' is not valid" in result.output
    result = CliRunner().invoke(main, [*args, "--codec", "image"])
    assert result.exit_code == 2 and "'image' is not FIELD=CODEC" in result.output
    help_text = " ".join(CliRunner().invoke(main, ["enhance", "--help"]).output.split())
    assert "--codec FIELD=CODEC" in help_text and "--write-threads" in help_text
    defaults = ", ".join(f"{k}={v}" for k, v in DEFAULT_CODECS.items())
    assert f"[default: {defaults}, the rest none]" in help_text  # the help states the real defaults


def test_shuffled_deflate_chunks_match_hdf5s_filter_pipeline(tmp_path: Path) -> None:
    """No default field uses shuffle (measured: it made the cam worse), but a codec that sets it must produce what
    HDF5's shuffle + deflate pipeline decodes."""
    from enhancer.store.codecs import deflate_chunks

    cam = np.linspace(0, 3, 4 * 49, dtype=np.float32).reshape(4, 7, 7)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = f.create_dataset(
            "cam", shape=(4, 7, 7), chunks=(1, 7, 7), dtype=np.float32, compression="gzip", shuffle=True
        )
        for k, (payload, filtered) in enumerate(deflate_chunks(cam, Codec("gzip", 1, shuffle=True))):
            assert filtered
            ds.id.write_direct_chunk((k, 0, 0), payload)
        np.testing.assert_array_equal(ds[:], cam)
