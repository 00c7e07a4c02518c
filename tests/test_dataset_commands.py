"""The commands around an enhanced dataset: fetch-samples, verify, show, export."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from enhancer.cli import main
from enhancer.data.samples import SAMPLE_SHA256, verify_samples
from enhancer.enhance import merge_enhanced, run_enhance
from enhancer.explain.cam import colorize_jet
from enhancer.report.grid import CELL, TITLE_H, overlay
from enhancer.specs import EnhanceSpec
from enhancer.store import verify
from tests.test_store_checksums import flip_byte_in_chunk

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, kermany_dir, demo_checkpoints):
    out = tmp_path_factory.mktemp("ds") / "enhanced"
    run_enhance(
        EnhanceSpec(data=str(kermany_dir), out=str(out), checkpoint=str(demo_checkpoints["tinyvgg"])), progress=False
    )
    merge_enhanced(out)
    return out


def test_fetch_samples_from_a_local_copy_checks_hashes(tmp_path, kermany_dir):
    dest = tmp_path / "samples"
    result = CliRunner().invoke(main, ["fetch-samples", str(dest), "--from", str(kermany_dir)])
    assert result.exit_code == 0, result.output
    assert verify_samples(dest) == []
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.jpeg")) == sorted(SAMPLE_SHA256)
    assert "CC BY 4.0" in (dest / "ATTRIBUTION.md").read_text()
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in kermany_dir.rglob("*.jpeg"):
        shutil.copy(path, flat / path.name)
    (flat / "NORMAL2-IM-1427-0001.jpeg").write_bytes(b"tampered")
    bad = CliRunner().invoke(main, ["fetch-samples", str(tmp_path / "other"), "--from", str(flat)])
    assert bad.exit_code == 2 and "not the published ones" in bad.output
    assert not (tmp_path / "other" / "NORMAL").exists()


@pytest.mark.slow
def test_fetch_samples_from_the_package_index(tmp_path):
    dest = tmp_path / "samples"
    result = CliRunner().invoke(main, ["fetch-samples", str(dest)])
    assert result.exit_code == 0, result.output
    for rel, digest in SAMPLE_SHA256.items():
        assert hashlib.sha256((dest / rel).read_bytes()).hexdigest() == digest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_verify_passes_then_catches_a_damaged_shard(tmp_path, dataset):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    assert CliRunner().invoke(main, ["verify", str(copy)]).exit_code == 0
    [shard] = copy.glob("shard-*.h5")
    with h5py.File(shard, "r+") as f:
        f["heatmap"][0] = 0
    result = CliRunner().invoke(main, ["verify", str(copy)])
    assert result.exit_code == 1 and "sha256" in result.output


@pytest.mark.slow
def test_verify_names_a_flipped_byte_and_its_repair_commands_rewrite_the_shard(tmp_path, dataset):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    [shard] = copy.glob("shard-*.h5")
    with h5py.File(shard, "r") as f:
        index = int(f["index"][3])
        want = {name: f[name][:] for name in ("heatmap", "enhanced", "prob", "index")}
    flip_byte_in_chunk(shard, "heatmap", 3)
    result = CliRunner().invoke(main, ["verify", str(copy), "--repair-list"])
    assert result.exit_code == 1
    assert f"{shard.name} sample 3 (index {index}), field 'heatmap'" in result.stderr
    assert result.stdout == "0\n"
    commands = [shlex.split(line) for line in result.stderr.splitlines() if line.startswith("  ")]
    assert [c[:2] for c in commands] == [["rm", "-f"], ["enhancer", "enhance"], ["enhancer", "merge"]]
    for words in commands:
        words = [sys.executable, "-m", "enhancer.cli", *words[1:]] if words[0] == "enhancer" else words
        done = subprocess.run(words, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stdout + done.stderr
    assert verify(copy).ok
    with h5py.File(shard, "r") as f:
        for name, values in want.items():
            np.testing.assert_array_equal(f[name][:], values, err_msg=name)


def test_show_draws_rows_and_leaves_wrong_predictions_blank(tmp_path, dataset):
    png = tmp_path / "grid.png"
    result = CliRunner().invoke(main, ["show", str(dataset), "--out", str(png), "-n", "6"])
    assert result.exit_code == 0, result.output
    grid = np.asarray(Image.open(png).convert("RGB"))
    assert grid.shape == (TITLE_H + 6 * (CELL + TITLE_H), 4 * CELL, 3)
    with h5py.File(next(dataset.glob("shard-*.h5")), "r") as f:
        label, pred = f["label"][:], f["pred"][:]
    order = [i for pair in zip(range(8), range(8, 16), strict=True) for i in pair][:6]  # alternating classes
    for row, i in enumerate(order):
        top = TITLE_H + row * (CELL + TITLE_H) + TITLE_H
        cells = grid[top : top + CELL]
        if pred[i] != label[i]:
            assert (cells == 255).all(), f"row {row} (sample {i}) is a wrong prediction and must stay blank"
        else:
            assert cells.std() > 10, f"row {row} (sample {i}) must show images"


def test_show_colours_heatmaps_with_the_cam_colour_map():
    """One JET map in the package: the overlay is colorize_jet's colour at 40% over the grey image, where the heat is
    at least 20%. (The grid once had its own float32 copy of the formula; it rounded 136 of the 768 table entries
    the other way, so overlays moved by at most one level.)"""
    levels = np.arange(256, dtype=np.uint8)[None].repeat(2, 0)
    grey = np.array([[0], [200]], dtype=np.uint8).repeat(256, 1)
    jet = colorize_jet(torch.from_numpy(levels[:1])[None])[0, :, 0].T.numpy().astype(np.float32)  # (256, 3)
    drawn = overlay(grey, levels).astype(int)
    assert drawn.shape == (2, 256, 3) and drawn.dtype == int
    hot = levels[0] >= 51
    np.testing.assert_array_equal(drawn[0, hot], np.round(jet[hot] * np.float32(0.4)))
    np.testing.assert_array_equal(drawn[1, hot], np.round(np.float32(200 * 0.6) + jet[hot] * np.float32(0.4)))
    assert (drawn[:, ~hot] == grey[:, ~hot, None]).all()
    assert drawn[0, 255].tolist() == [51, 0, 0]  # the hottest level: dark red (128, 0, 0) at 40%


def test_export_writes_a_png_imagefolder(tmp_path, dataset):
    dest = tmp_path / "png"
    result = CliRunner().invoke(main, ["export", str(dataset), str(dest), "--field", "crop"])
    assert result.exit_code == 0, result.output
    files = sorted(dest.rglob("*.png"))
    assert len(files) == 16 and {p.parent.name for p in files} == {"NORMAL", "PNEUMONIA"}
    assert Image.open(files[0]).size == (224, 224)


@pytest.fixture(scope="module")
def jpeg_dataset(tmp_path_factory, kermany_dir, demo_checkpoints):
    """The same job as ``dataset`` with the image planes stored as JPEG, through the command line."""
    out = tmp_path_factory.mktemp("jpeg") / "enhanced"
    args = ["--data", str(kermany_dir), "--checkpoint", str(demo_checkpoints["tinyvgg"]), "--out", str(out)]
    codecs = ["--codec", "image=jpeg95", "--codec", "crop=jpeg90", "--codec", "enhanced=jpeg", "--write-threads", "2"]
    result = CliRunner().invoke(main, ["enhance", *args, *codecs, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(main, ["merge", str(out)]).exit_code == 0
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_jpeg_planes_read_verify_show_and_export_like_raw_ones(tmp_path, dataset, jpeg_dataset):
    from enhancer.store import EnhancedDataset, Manifest

    manifest = Manifest.load(jpeg_dataset)
    assert {k: manifest.fields[k]["codec"] for k in ("image", "crop", "enhanced", "heatmap")} == {
        "image": "jpeg95",
        "crop": "jpeg90",
        "enhanced": "jpeg95",
        "heatmap": "gzip1",
    }
    assert manifest.fields["image"]["shape"] == [None, 1, 224, 224] and manifest.fields["image"]["dtype"] == "uint8"
    assert "| `image` | uint8 | (N, 1, 224, 224) | jpeg95 |" in (jpeg_dataset / "README.md").read_text()
    raw = EnhancedDataset(dataset, fields=("image", "crop", "enhanced", "heatmap"))
    jpeg = EnhancedDataset(jpeg_dataset, fields=("image", "crop", "enhanced", "heatmap"))
    for i in (0, 9):
        a, b = raw[i], jpeg[i]
        assert b["image"].dtype == torch.uint8 and b["image"].shape == (1, 224, 224)
        assert torch.equal(a["heatmap"], b["heatmap"])  # lossless fields are identical
        for name in ("image", "crop", "enhanced"):
            assert _psnr(a[name].numpy(), b[name].numpy()) >= 40, (i, name)
    assert CliRunner().invoke(main, ["verify", str(jpeg_dataset)]).exit_code == 0
    png = tmp_path / "grid.png"
    assert CliRunner().invoke(main, ["show", str(jpeg_dataset), "--out", str(png), "-n", "4"]).exit_code == 0
    assert Image.open(png).size == (4 * CELL, TITLE_H + 4 * (CELL + TITLE_H))
    result = CliRunner().invoke(main, ["export", str(jpeg_dataset), str(tmp_path / "png"), "--field", "enhanced"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "png").rglob("*.png"))) == 16
    sample = EnhancedDataset(jpeg_dataset, fields=("enhanced", "label", "path"))[5]
    name = jpeg.class_names[int(sample["label"])]
    exported = np.asarray(Image.open(tmp_path / "png" / name / f"{Path(sample['path']).stem}.png"))
    np.testing.assert_array_equal(exported, sample["enhanced"][0].numpy())  # the decoded plane, as PNG


def test_verify_names_a_damaged_jpeg(tmp_path, jpeg_dataset):
    copy = tmp_path / "copy"
    shutil.copytree(jpeg_dataset, copy)
    [shard] = copy.glob("shard-*.h5")
    with h5py.File(shard, "r+") as f:
        damaged = np.array(f["enhanced"][3])
        damaged[200:] = 0  # entropy-coded data and end marker gone
        column = np.empty(1, dtype=object)
        column[0] = damaged
        space = f["enhanced"].id.get_space()
        space.select_hyperslab((3,), (1,))
        f["enhanced"].id.write(h5py.h5s.create_simple((1,)), space, column)
    result = CliRunner().invoke(main, ["verify", str(copy)])
    assert result.exit_code == 1 and "sha256" in result.output
    assert "sample 3 (index 3), field 'enhanced': unreadable" in result.output, result.output
