"""The enhance job end to end: shards, fields, provenance, equality with enhancer.explain.cam, resume, sharding,
errors."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from enhancer.cli import main
from enhancer.data import make_loader, scan
from enhancer.enhance import merge_enhanced, run_enhance
from enhancer.explain import cam
from enhancer.explain.cam import METHODS, CamSettings
from enhancer.explain.compute import compute_cam
from enhancer.explain.folding import FoldedTrunk
from enhancer.models.checkpoints import load_checkpoint
from enhancer.specs import EnhanceSpec
from enhancer.store import EnhancedDataset, StoreError, is_complete, verify

ALL_FIELDS = (
    "index",
    "label",
    "pred",
    "prob",
    "path",
    "orig_size",
    "image",
    "cam",
    "heatmap",
    "crop",
    "crop_box",
    "enhanced",
)


def _read_all(out_dir: Path) -> dict[int, dict[str, np.ndarray]]:
    """Every sample of a merged dataset by its scan index."""
    ds = EnhancedDataset(out_dir, fields=ALL_FIELDS)
    samples = {}
    for i in range(len(ds)):
        s = ds[i]
        samples[int(s["index"])] = {k: (np.asarray(v) if k != "path" else v) for k, v in s.items()}
    return samples


def _enhance(data, out, checkpoint, **kw) -> None:
    run_enhance(
        EnhanceSpec(data=str(data), out=str(out), checkpoint=str(checkpoint), batch_size=kw.pop("batch_size", 8), **kw),
        progress=False,
    )


@pytest.fixture(scope="module")
def resnet101_run(tmp_path_factory, kermany_dir, demo_checkpoints):
    out = tmp_path_factory.mktemp("enh") / "resnet101"
    _enhance(kermany_dir, out, demo_checkpoints["resnet101"], batch_size=8, loader="dali")
    merge_enhanced(out)
    return out


def test_end_to_end_resnet101_on_the_real_samples(resnet101_run, kermany_dir, demo_checkpoints):
    out = resnet101_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["n_written"], manifest["n_rejected"], manifest["n_in"]) == (16, 0, 16)
    assert (out / "README.md").read_text().count("PNEUMONIA") >= 1
    assert (out / "rejected.csv").read_text().strip() == "index,path,code,message"
    assert verify(out).ok
    [shard] = sorted(out.glob("shard-*.h5"))
    with h5py.File(shard, "r") as f:
        expected = {
            "image": ((16, 1, 224, 224), np.uint8),
            "cam": ((16, 7, 7), np.float32),
            "heatmap": ((16, 224, 224), np.uint8),
            "crop": ((16, 1, 224, 224), np.uint8),
            "crop_box": ((16, 4), np.int32),
            "enhanced": ((16, 1, 224, 224), np.uint8),
            "label": ((16,), np.int16),
            "pred": ((16,), np.int16),
            "prob": ((16, 2), np.float32),
            "orig_size": ((16, 2), np.int32),
        }
        for name, (shape, dtype) in expected.items():
            assert f[name].shape == shape and f[name].dtype == dtype, name
            assert f[name].chunks == (1, *shape[1:]), name
        assert f["path"].shape == (16,)
        attrs = dict(f.attrs)
        assert attrs["complete"] and attrs["n_samples"] == 16
        assert attrs["architecture"] == "resnet101" and attrs["target_layer"] == "resnet.layer4"
        assert attrs["checkpoint_sha256"] == load_checkpoint(demo_checkpoints["resnet101"]).sha256
        for key in (
            "gradcam",
            "raw_cam_scale",
            "preprocessing",
            "crop_settings",
            "enhance_settings",
            "package_version",
            "code_revision",
            "created",
            "spec",
        ):
            assert key in attrs, key
        assert json.loads(attrs["gradcam"])["score"] == "prob"
    samples = _read_all(out)
    assert sorted(samples) == list(range(16))
    labels = [samples[i]["label"] for i in range(16)]
    assert labels == [0] * 8 + [1] * 8
    assert all(Path(samples[i]["path"]).parent.name == ("NORMAL" if i < 8 else "PNEUMONIA") for i in range(16))
    heat = np.stack([samples[i]["heatmap"] for i in range(16)])
    # The normalised 7x7 map peaks at 1; bilinear upsampling samples between cell centres, so just below 255.
    assert (heat.reshape(16, -1).max(1) >= 240).all() and (heat.reshape(16, -1).std(1) > 5).all(), "trivial heatmap"
    boxes = np.stack([samples[i]["crop_box"] for i in range(16)])
    sizes = np.stack([samples[i]["orig_size"] for i in range(16)])
    assert (boxes[:, 2] <= sizes[:, 1]).all() and (boxes[:, 3] <= sizes[:, 0]).all()
    assert (sizes.min(0) >= [500, 900]).all(), "orig_size is (height, width) of the full-resolution files"


# A single-label job's shard as written before label files and maps per class existed (recorded from a default
# `enhancer enhance` of the samples with a demo resnet101, commit efc40f8): every HDF5 object, every file attribute,
# the stored spec's and the identity's keys. The multi-label work must not change them (its settings are stored
# only when set); scripts/compare_datasets.py compares two such outputs byte for byte.
SINGLE_LABEL_OBJECTS = {
    *("cam", "crop", "crop_box", "enhanced", "heatmap", "image", "index", "label", "orig_size", "path", "pred"),
    *("prob", "checksums", "rejected", "rejected/code", "rejected/index", "rejected/message", "rejected/path"),
    *(f"checksums/{n}" for n in ("cam", "crop", "crop_box", "enhanced", "heatmap", "image", "index", "label")),
    *(f"checksums/{n}" for n in ("orig_size", "path", "pred", "prob")),
}
SINGLE_LABEL_ATTRS = {
    *("architecture", "cam_method", "cam_method_definition", "checkpoint", "checkpoint_sha256", "class_names"),
    *("code_revision", "complete", "created", "crop_settings", "data_root", "enhance_settings", "expected", "fields"),
    *("gradcam", "head", "host", "identity", "json_attrs", "model", "n_rejected", "n_samples", "n_total"),
    *("num_shards", "package_version", "preprocessing", "raw_cam_scale", "schema_version", "shard_id", "spec"),
    "target_layer",
}
SINGLE_LABEL_SPEC_KEYS = {
    *("amp", "arch", "batch_size", "boxes", "cam", "checkpoint", "codec", "compile", "compression", "crop", "data"),
    *("decode_timeout_s", "device", "enhance", "fields", "force_claim", "input", "loader", "lung_mask_in_enhanced"),
    *("lung_model", "max_pixels", "model", "num_classes", "num_shards", "num_threads", "out", "queue_size"),
    *("shard_id", "source_size", "target_layer", "validate", "write_threads"),
}
SINGLE_LABEL_IDENTITY_KEYS = {
    *("cam", "checkpoint_sha256", "codecs", "crop", "data", "enhance", "fields", "model", "n_total", "num_shards"),
    "preprocessing",
}


def test_a_single_label_shard_keeps_its_layout(resnet101_run):
    [shard] = sorted(resnet101_run.glob("shard-*.h5"))
    with h5py.File(shard, "r") as f:
        objects: list[str] = []
        f.visit(objects.append)
        attrs = dict(f.attrs)
    assert set(objects) == SINGLE_LABEL_OBJECTS
    assert set(attrs) == SINGLE_LABEL_ATTRS
    assert set(json.loads(attrs["spec"])) == SINGLE_LABEL_SPEC_KEYS
    assert set(json.loads(attrs["identity"])) == SINGLE_LABEL_IDENTITY_KEYS


def test_stored_maps_equal_enhancer_cam_run_directly(resnet101_run, kermany_dir, demo_checkpoints):
    samples = _read_all(resnet101_run)
    ck = load_checkpoint(demo_checkpoints["resnet101"])
    found = scan(str(kermany_dir))
    loader = make_loader(list(found.samples), ck.preprocessing, batch_size=8, loader="dali", device="cpu")
    # the job's settings on this machine: the trunk in channels_last where that is faster, with its BatchNorm folded
    # (kernels and folded weights differ in rounding)
    nhwc = cam.prefers_channels_last("cpu")
    memory_format = torch.channels_last if nhwc else torch.contiguous_format
    model = FoldedTrunk(ck.model.eval().to(memory_format=memory_format), memory_format=memory_format)
    for batch in loader:
        result = cam.grad_cam(model, batch.image, cam.CamSettings(channels_last=nhwc))
        heat = cam.upsample(result.cam, (224, 224))
        for row, index in enumerate(batch.index.tolist()):
            np.testing.assert_allclose(samples[index]["cam"], result.raw[row].numpy(), rtol=1e-5, atol=1e-7)
            direct = (heat[row] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
            assert np.abs(samples[index]["heatmap"].astype(int) - direct.astype(int)).max() <= 1
            np.testing.assert_allclose(samples[index]["prob"], result.probs[row].numpy(), rtol=1e-5, atol=1e-6)
            assert samples[index]["pred"] == int(result.pred[row])


def test_method_option_writes_a_verified_dataset_that_names_its_method(tmp_path, kermany_dir, demo_checkpoints):
    out = tmp_path / "scorecam"
    runner = CliRunner()
    base = ["enhance", "--data", str(kermany_dir), "--checkpoint", str(demo_checkpoints["tinyvgg"]), "--no-progress"]
    run = [*base, "--out", str(out), "--loader", "torch", "--batch-size", "16", "--method", "scorecam"]
    result = runner.invoke(main, [*run, "--scorecam-batch", "40"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(main, ["merge", str(out)]).exit_code == 0
    assert verify(out).ok
    [shard] = sorted(out.glob("shard-*.h5"))
    with h5py.File(shard, "r") as f:
        attrs = dict(f.attrs)
    identity = json.loads(attrs["identity"])["cam"]
    assert identity["method"] == "scorecam" and "scorecam_batch" not in identity  # speed, not what the maps are
    assert json.loads(attrs["gradcam"])["scorecam_batch"] == 40
    assert attrs["cam_method"] == "scorecam" and "softmax_k(score(x * M_k))" in attrs["cam_method_definition"]
    assert "Maps: CAM method `scorecam` at layer `feature_extractor`" in (out / "README.md").read_text()
    # the stored maps are compute_cam's, and a dataset of one method refuses shards of another
    ck = load_checkpoint(demo_checkpoints["tinyvgg"])
    [batch] = list(make_loader(list(scan(str(kermany_dir)).samples), ck.preprocessing, batch_size=16, loader="torch"))
    model = ck.model.eval()
    direct = compute_cam(model, batch.image, split=model, settings=CamSettings(method="scorecam"))  # as the job
    samples = _read_all(out)
    for row, index in enumerate(batch.index.tolist()):
        np.testing.assert_allclose(samples[index]["cam"], direct.raw[row].numpy(), rtol=1e-4, atol=1e-6)
    again = runner.invoke(main, [*base, "--out", str(out), "--method", "gradcam++"])
    assert again.exit_code == 2 and "holds another enhanced dataset" in again.output and "cam" in again.output
    bad = runner.invoke(main, [*base, "--out", str(tmp_path / "bad"), "--set", "cam.method=gradcam+"])
    assert bad.exit_code == 2 and "method='gradcam+' is not valid; choose one of 'gradcam'" in bad.output
    zero = runner.invoke(main, [*base, "--out", str(tmp_path / "bad"), "--scorecam-batch", "0"])
    assert zero.exit_code == 2 and "scorecam_batch=0 must be an integer >= 1" in zero.output


def test_the_batch_path_explains_any_classifier_at_any_layer(kermany_dir):
    # what the job runs per batch for a torchvision ResNet-18 at layer3, where the registry knows no features/head
    # halves (not the family's default layer): the forward hook
    from enhancer.enhance.batch_outputs import OutputSettings, compute_outputs
    from enhancer.models.demo import calibrate_batchnorm, scale_head_to_unit_logits
    from enhancer.models.registry import build, resolve_target
    from enhancer.models.zoo import ModelConfig
    from enhancer.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    preprocessing = Preprocessing(size=(96, 96), in_chans=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    [batch] = list(make_loader(list(scan(str(kermany_dir)).samples), preprocessing, batch_size=16, loader="torch"))
    torch.manual_seed(0)
    model = build(ModelConfig("tv:resnet18", num_classes=2))
    calibrate_batchnorm(model, [batch.image])
    scale_head_to_unit_logits(model, batch.image)  # and eval mode
    settings = OutputSettings(
        fields=("image", "cam", "heatmap", "crop", "crop_box", "enhanced"),
        cam=CamSettings(method="gradcam++"),
        crop=cam.CropSettings(),
        enhance=cam.EnhanceSettings(),
        preprocessing=preprocessing,
    )
    target = resolve_target(model, preprocessing, "layer3")
    assert target.split is None and target.shape == (1, 256, 6, 6)
    out = compute_outputs(model, batch, settings, target=target)
    direct = compute_cam(model, batch.image, layer=model.layer3, settings=settings.cam)
    assert torch.equal(out["cam"], direct.raw) and out["cam"].shape == (16, 6, 6)
    assert out["heatmap"].shape == (16, 96, 96) and out["enhanced"].shape == (16, 1, 96, 96)
    assert (out["heatmap"].flatten(1).amax(1) > 200).sum() >= 8  # mostly non-trivial maps


def test_method_help_lists_every_method():
    text = CliRunner().invoke(main, ["enhance", "--help"]).output
    assert all(method in text for method in METHODS)


def test_shard_counts_give_the_same_dataset(tmp_path, kermany_dir, demo_checkpoints):
    runs = {}
    for n in (1, 3, 4):
        out = tmp_path / f"n{n}"
        for i in range(n):
            _enhance(kermany_dir, out, demo_checkpoints["tinyvgg"], shard_id=i, num_shards=n, batch_size=5)
        manifest = merge_enhanced(out)
        assert manifest.n_written == 16 and len(manifest.shards) == n
        runs[n] = _read_all(out)
    for n in (3, 4):
        for index, sample in runs[1].items():
            other = runs[n][index]
            assert other["path"] == sample["path"]
            np.testing.assert_allclose(other["cam"], sample["cam"], rtol=1e-5, atol=1e-6)
            for field in ("image", "heatmap", "crop", "enhanced", "crop_box"):
                assert np.abs(other[field].astype(int) - sample[field].astype(int)).max() <= 1, field


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "enhancer.cli", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _repeated_samples(src: Path, dst: Path, times: int) -> Path:
    """An ImageFolder of symlinks: every file of ``src`` ``times`` times (a longer job from the same images)."""
    for path in sorted(src.rglob("*.jpeg")):
        (dst / path.parent.name).mkdir(parents=True, exist_ok=True)
        for k in range(times):
            (dst / path.parent.name / f"{k}-{path.name}").symlink_to(path)
    return dst


@pytest.mark.slow
def test_killed_job_resumes_to_the_same_result(tmp_path, kermany_dir, demo_checkpoints):
    # 96 files, 48 a shard at batch 1: long enough to be killed mid-shard on a fast CPU too
    data = _repeated_samples(kermany_dir, tmp_path / "data", 6)
    args = [
        "enhance",
        "--data",
        str(data),
        "--checkpoint",
        str(demo_checkpoints["tinyvgg"]),
        "--batch-size",
        "1",
        "--num-shards",
        "2",
        "--no-progress",
    ]
    reference = tmp_path / "reference"
    for shard_id in ("0", "1"):
        assert _cli(*args, "--out", str(reference), "--shard-id", shard_id).wait(timeout=300) == 0
    merge_enhanced(reference)
    rng = random.Random(7)
    killed = tmp_path / "killed"
    final = killed / "shard-00000-of-00002.h5"
    killed_mid_shard = 0
    for _ in range(3):
        proc = _cli(*args, "--out", str(killed), "--shard-id", "0")
        deadline = time.monotonic() + 120
        while not list(killed.glob("*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))  # a random point of the shard
        if proc.poll() is None and not final.exists():
            killed_mid_shard += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert not final.exists() or is_complete(final), "a killed shard must be absent or complete, never partial"
    assert killed_mid_shard >= 1, "no attempt hit the job while it was writing"
    for shard_id in ("0", "1"):
        assert _cli(*args, "--out", str(killed), "--shard-id", shard_id).wait(timeout=300) == 0
    merge_enhanced(killed)
    assert not list(killed.glob("*.tmp"))
    got, want = _read_all(killed), _read_all(reference)
    assert sorted(got) == sorted(want) == list(range(96))
    for index in want:
        for field, value in want[index].items():
            if field == "path":
                assert got[index][field] == value
            else:
                np.testing.assert_array_equal(got[index][field], value, err_msg=field)


def test_corrupt_image_is_rejected_and_the_rest_written(tmp_path, kermany_dir, demo_checkpoints):
    data = tmp_path / "data"
    shutil.copytree(kermany_dir, data)
    good = (data / "PNEUMONIA" / "person1946_bacteria_4874.jpeg").read_bytes()
    (data / "PNEUMONIA" / "person1142_bacteria_3086.jpeg").write_bytes(good[: len(good) // 3])  # truncated
    (data / "NORMAL" / "notes.jpeg").write_text("not an image")
    out = tmp_path / "out"
    _enhance(data, out, demo_checkpoints["tinyvgg"])
    manifest = merge_enhanced(out)
    assert (manifest.n_in, manifest.n_written, manifest.n_rejected) == (18, 16, 2)
    rejected = (out / "rejected.csv").read_text()
    assert "person1142_bacteria_3086.jpeg" in rejected and "notes.jpeg" in rejected


def test_rerun_skips_a_complete_shard(tmp_path, kermany_dir, demo_checkpoints):
    out = tmp_path / "out"
    _enhance(kermany_dir, out, demo_checkpoints["tinyvgg"])
    [shard] = out.glob("shard-*.h5")
    before = shard.stat().st_mtime_ns
    summary = run_enhance(
        EnhanceSpec(data=str(kermany_dir), out=str(out), checkpoint=str(demo_checkpoints["tinyvgg"])), progress=False
    )
    assert summary.skipped and summary.n_written == 16 and shard.stat().st_mtime_ns == before


def test_bad_inputs_give_clear_errors(tmp_path, kermany_dir, demo_checkpoints):
    runner = CliRunner()
    base = ["enhance", "--data", str(kermany_dir), "--no-progress"]
    missing = runner.invoke(main, [*base, "--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "nope.pth: no such checkpoint file" in missing.output
    no_checkpoint = runner.invoke(main, [*base, "--out", str(tmp_path / "o")])
    assert no_checkpoint.exit_code == 2 and "no checkpoint given" in no_checkpoint.output
    out = tmp_path / "out"
    _enhance(kermany_dir, out, demo_checkpoints["tinyvgg"])
    other = runner.invoke(main, [*base, "--checkpoint", str(demo_checkpoints["resnet101"]), "--out", str(out)])
    assert other.exit_code == 2 and "holds another enhanced dataset" in other.output
    assert "checkpoint_sha256" in other.output
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("x")
    refused = runner.invoke(main, [*base, "--checkpoint", str(demo_checkpoints["tinyvgg"]), "--out", str(foreign)])
    assert refused.exit_code == 2 and "thesis.docx" in refused.output


def test_merge_names_missing_shards(tmp_path, kermany_dir, demo_checkpoints):
    out = tmp_path / "out"
    _enhance(kermany_dir, out, demo_checkpoints["tinyvgg"], shard_id=0, num_shards=3)
    result = CliRunner().invoke(main, ["merge", str(out)])
    assert result.exit_code == 2
    assert "--shard-id 1" in result.output and "--shard-id 2" in result.output


def test_full_disk_fails_clearly_and_leaves_no_complete_shard(tmp_path, kermany_dir, demo_checkpoints):
    out = tmp_path / "out"
    limit = (
        "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
    )
    code = limit + "from enhancer.cli import main; main()"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "enhance",
            "--data",
            str(kermany_dir),
            "--checkpoint",
            str(demo_checkpoints["tinyvgg"]),
            "--out",
            str(out),
            "--batch-size",
            "4",
            "--no-progress",
            "--compression",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "shard-00000-of-00001.h5" in message and "Traceback" not in message, message[-2000:]
    assert not list(out.glob("shard-*.h5"))
    with pytest.raises(StoreError):
        merge_enhanced(out)
