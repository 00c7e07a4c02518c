"""JPEG-coded fields through the enhance loop: on the CPU the writer's pool encodes them; on CUDA the loop encodes them
on the device before the copy out (``encode_jpeg_fields``) and only their bytes cross to the host, stored as they are.
Here the device step runs with torchvision's CPU encoder (``encode_jpeg_planes`` on CPU tensors), so the same
hand-off lines (``copy_out``, ``_host_arrays``) run as on a GPU."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from enhancer.data import make_loader, scan
from enhancer.enhance import merge_enhanced, run_enhance
from enhancer.enhance.batch_loop import copy_out, storable_path
from enhancer.enhance.batch_outputs import compute_outputs
from enhancer.enhance.job_settings import load_model, output_settings
from enhancer.specs import EnhanceSpec
from enhancer.store import AsyncShardWriter, EnhancedDataset, per_sample_shapes, verify
from enhancer.store.checksums import CHECKSUMS
from enhancer.store.codecs import EncodedPlanes
from enhancer.store.device_jpeg import encode_jpeg_planes
from enhancer.store.layout import shard_path
from tests.test_host_syncs import CountOps

JPEG_FIELDS = ("image", "crop", "enhanced")
FIELDS = ("index", "label", "pred", "prob", "orig_size", "image", "cam", "heatmap", "crop", "crop_box", "enhanced")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def _by_index(out: Path) -> dict[int, dict[str, np.ndarray]]:
    ds = EnhancedDataset(out, fields=FIELDS)
    return {int(s["index"]): {k: np.asarray(v) for k, v in s.items()} for s in (ds[i] for i in range(len(ds)))}


@pytest.fixture(scope="module")
def raw_run(tmp_path_factory, kermany_dir, demo_checkpoints) -> Path:
    out = tmp_path_factory.mktemp("jpeg") / "raw"
    spec = EnhanceSpec(data=str(kermany_dir), out=str(out), checkpoint=str(demo_checkpoints["tinyvgg"]), batch_size=6)
    run_enhance(spec, progress=False)
    merge_enhanced(out)
    return out


def test_the_job_stores_jpeg_fields_that_verify_and_read_back_close_to_the_raw_ones(
    tmp_path, raw_run, kermany_dir, demo_checkpoints
) -> None:
    out = tmp_path / "jpeg"
    spec = EnhanceSpec(
        data=str(kermany_dir),
        out=str(out),
        checkpoint=str(demo_checkpoints["tinyvgg"]),
        batch_size=6,  # 16 images: 3 batches, the last partial
        codec={name: "jpeg95" for name in JPEG_FIELDS},
    )
    summary = run_enhance(spec, progress=False)
    assert (summary.n_written, summary.n_rejected) == (16, 0)
    merge_enhanced(out)
    assert verify(out).ok
    with h5py.File(shard_path(out, 0, 1), "r") as f:
        assert {name: f[name].attrs["codec"] for name in JPEG_FIELDS} == dict.fromkeys(JPEG_FIELDS, "jpeg95")
        assert all(bytes(f["image"][i][:2]) == b"\xff\xd8" for i in range(16))  # JPEG files (SOI marker)
    raw, jpeg = _by_index(raw_run), _by_index(out)
    assert sorted(raw) == sorted(jpeg) == list(range(16))
    for i in range(16):
        for name in FIELDS:
            if name in JPEG_FIELDS:
                assert jpeg[i][name].shape == raw[i][name].shape and jpeg[i][name].dtype == np.uint8
                assert _psnr(jpeg[i][name], raw[i][name]) >= 40, (i, name)
            else:
                np.testing.assert_array_equal(jpeg[i][name], raw[i][name], err_msg=f"{name} of sample {i}")


def test_device_encoded_planes_cross_as_their_bytes_and_are_stored_as_they_are(
    tmp_path, kermany_dir, demo_checkpoints
) -> None:
    spec = EnhanceSpec(data=str(kermany_dir), out=str(tmp_path), checkpoint=str(demo_checkpoints["tinyvgg"]))
    ck, target = load_model(spec)
    settings = output_settings(spec, ck, "cpu")
    samples = list(scan(spec.data).samples)
    loader = make_loader(samples, ck.preprocessing, batch_size=8, loader="torch", num_threads=0)
    h, w = target.shape[-2:]
    shapes = per_sample_shapes(settings.fields, H=224, W=224, h=h, w=w, Hc=224, Wc=224, C=2)
    codecs = dict.fromkeys(JPEG_FIELDS, "jpeg95")
    writer = AsyncShardWriter(
        tmp_path, 0, 1, copy=False, shapes=shapes, fields=settings.fields, codecs=codecs, attrs={}, expected=16
    )
    stored: dict[int, dict[str, bytes]] = {}
    planes: dict[int, dict[str, np.ndarray]] = {}
    with writer:
        for batch in loader:
            outputs = compute_outputs(ck.model.eval(), batch, settings, target=target)
            device = {name: encode_jpeg_planes(outputs[name], 95) for name in JPEG_FIELDS}  # encode_jpeg_fields on CUDA
            paths = [storable_path(samples[i].path) for i in batch.index.numpy().tolist()]
            with CountOps() as ops:
                host = copy_out({**outputs, **device}, paths).wait()
            assert ops.syncs == {}
            assert host["path"] == paths and set(host) == {*outputs, "path"}
            for name in set(outputs) - set(JPEG_FIELDS):  # every other field passes through as its array
                np.testing.assert_array_equal(host[name], outputs[name].numpy(), err_msg=name)
            for name in JPEG_FIELDS:
                got = host[name]
                assert isinstance(got, EncodedPlanes) and (got.codec, got.shape) == ("jpeg95", device[name].shape)
                assert b"".join(d.tobytes() for d in got.data) == device[name].flat.numpy().tobytes()
                assert [len(d) for d in got.data] == list(device[name].lengths)
            for row, i in enumerate(batch.index.numpy().tolist()):
                stored[i] = {name: host[name].data[row].tobytes() for name in JPEG_FIELDS}
                planes[i] = {name: outputs[name][row].numpy() for name in JPEG_FIELDS}
            writer.put(host)
    with h5py.File(shard_path(tmp_path, 0, 1), "r") as f:
        index = f["index"][:].tolist()
        assert sorted(index) == list(range(16))
        for row, i in enumerate(index):
            for name in JPEG_FIELDS:
                assert bytes(f[name][row]) == stored[i][name], (i, name)  # the device's bytes, not re-encoded
        assert set(JPEG_FIELDS) <= set(f[CHECKSUMS])
    merge_enhanced(tmp_path)
    assert verify(tmp_path).ok  # the checksums of the bytes as stored
    back = _by_index(tmp_path)
    for i in range(16):
        for name in JPEG_FIELDS:
            assert _psnr(back[i][name], planes[i][name]) >= 40, (i, name)


@pytest.mark.gpu
def test_on_cuda_jpeg_fields_are_encoded_on_the_device(tmp_path, raw_run, kermany_dir, demo_checkpoints) -> None:
    import io

    from PIL import Image

    out = tmp_path / "cuda"
    spec = EnhanceSpec(
        data=str(kermany_dir),
        out=str(out),
        checkpoint=str(demo_checkpoints["tinyvgg"]),
        batch_size=6,
        device="cuda",
        loader="torch",
        codec={name: "jpeg95" for name in JPEG_FIELDS},
    )
    assert run_enhance(spec, progress=False).n_written == 16
    merge_enhanced(out)
    assert verify(out).ok
    with h5py.File(shard_path(out, 0, 1), "r") as f:
        for name in JPEG_FIELDS:  # nvJPEG writes three components (R = G = B); the CPU pool's libjpeg writes one
            assert {Image.open(io.BytesIO(bytes(f[name][i]))).mode for i in range(16)} == {"RGB"}, name
    raw, jpeg = _by_index(raw_run), _by_index(out)
    # The model input as stored, against the CPU job's raw plane: nvJPEG decode and GPU resize (within 2 levels inside,
    # up to ~24 on the outermost pixels, tests/test_data_loaders.py) and JPEG at 95 (~47 dB alone).
    for i in range(16):
        assert _psnr(jpeg[i]["image"], raw[i]["image"]) >= 32, i
