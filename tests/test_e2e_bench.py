"""The end-to-end benchmark's classic pipeline does the same work as the enhance job, so its figures compare like
for like: same heatmaps (pytorch-grad-cam vs ``enhancer.explain.cam`` with the same settings), same crop-box rules,
every sample written; and the harness's memory figures are the worker's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from enhancer.data import scan
from enhancer.explain import cam
from tests.tools.missing import require_module

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import classic_pipeline
import common


def _four_images(src: Path, dst: Path) -> Path:
    """An ImageFolder with two images of each class (ImageFolder refuses empty class folders)."""
    found = scan(src)
    for label, name in enumerate(found.class_names):
        (dst / name).mkdir(parents=True)
        for s in [s for s in found.samples if s.label == label][:2]:
            os.symlink(s.path, dst / name / os.path.basename(s.path))
    return dst


def test_box_rules_match_crop_boxes() -> None:
    torch.manual_seed(0)
    heat = torch.rand(6, 224, 224) ** 4  # peaky maps: boxes smaller than the image
    heat[1] = 0  # empty map: the whole image
    heat[2, 100:110, 30:60] = 1.5  # one hot spot: min_size and sliding at work
    orig = torch.tensor([[1000, 1300], [800, 600], [224, 224], [2000, 1500], [517, 931], [300, 2000]])
    for settings in (cam.CropSettings(), cam.CropSettings(threshold=0.8, margin=0.3, min_size=0.1, square=True)):
        ours = cam.crop_boxes(heat.clamp(0, 1), orig, settings).tolist()
        theirs = [
            classic_pipeline.box_from_heatmap(h.clamp(0, 1).numpy(), tuple(o.tolist()), settings)
            for h, o in zip(heat, orig, strict=True)
        ]
        assert [tuple(b) for b in ours] == theirs


def test_classic_outputs_match_enhancer(kermany_dir: Path, demo_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    require_module("pytorch_grad_cam", install="grad-cam==1.5.7")
    data = _four_images(kermany_dir, tmp_path / "data")
    result = classic_pipeline.compare_with_enhancer(
        data, demo_checkpoints["tinyvgg"], batch_size=4, shipped_loader=False
    )
    assert result.n == 4 and result.n_nonempty == 4, result.line()
    assert result.heatmap_max_abs <= classic_pipeline.HEATMAP_ATOL, result.line()
    assert result.passed and result.line().startswith("PASS")
    assert result.crop_box_max_px <= 2, result.line()  # same rules; float rounding may move an edge by a pixel


def test_run_classic_writes_every_sample(kermany_dir: Path, demo_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    require_module("pytorch_grad_cam", install="grad-cam==1.5.7")
    data = _four_images(kermany_dir, tmp_path / "data")
    out = tmp_path / "classic.h5"
    assert classic_pipeline.run_classic(data, demo_checkpoints["tinyvgg"], out, batch_size=3, workers=0) == 4
    with h5py.File(out, "r") as f:
        assert f["heatmap"].shape == (4, 224, 224) and f["crop"].shape == (4, 1, 224, 224)
        assert f["enhanced"].shape == (4, 1, 224, 224) and f["crop_box"].shape == (4, 4)
        assert f["label"][:].tolist() == [0, 0, 1, 1]
        # enhancer's default codecs (heatmap gzip1, the rest raw): both pipelines pay the same compression
        assert (f["heatmap"].compression, f["heatmap"].compression_opts) == ("gzip", 1)
        assert {f[name].compression for name in ("image", "crop", "enhanced", "crop_box", "prob")} == {None}
        assert all(f["heatmap"][i].max() == 255 for i in range(4))  # min-max scaled, non-trivial maps
        boxes, sizes = f["crop_box"][:], f["orig_size"][:]
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= sizes[:, 1]).all() and (boxes[:, 3] <= sizes[:, 0]).all()
        assert [Path(p.decode()).name for p in f["path"][:]] == sorted(os.listdir(data / "NORMAL")) + sorted(
            os.listdir(data / "PNEUMONIA")
        )


def test_worker_memory_is_its_own() -> None:
    # ru_maxrss of a fork + exec child can report the parent's high-water mark: the harness's figure must not
    ballast = np.ones(1024 * 2**20 // 8)  # ~1 GiB resident in this (parent) process while the child runs
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import common; "
        "common.emit_result({'own': common.own_peak_rss_mib()})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(common.__file__).parent)], capture_output=True, text=True, check=True
    ).stdout
    own = json.loads(out.splitlines()[-1][len(common.RESULT_PREFIX) :])["own"]
    assert 0 < own < 1000, own  # torch and enhancer imported, but none of the parent's gigabyte
    del ballast
    with common.TreeMemory(interval=0.05) as tree:
        pass
    assert tree.peak_mib > 0


def test_tree_memory_sampling_takes_a_bounded_share_of_a_core() -> None:
    # reading PSS walks the page tables: on a big process a fixed interval would slow the job being measured
    ballast = np.ones(1024 * 2**20 // 8)  # ~1 GiB resident: each sample costs tens of milliseconds
    start = time.perf_counter()
    with common.TreeMemory(interval=0.001, duty=20) as tree:
        time.sleep(2.0)
    elapsed = time.perf_counter() - start
    del ballast
    assert tree.peak_mib > 1000
    assert tree._pause() >= 20 * tree.last_s > 0.001  # the cost, not the 1 ms interval, sets the pace
    # one sample per (pause + sample), ~1/21 of the time, plus the samples on enter and exit; room for one more, as
    # a sample's cost varies with the machine's load (unpaced, at the 1 ms interval, sampling would take ~all of it)
    assert tree.sampling_s <= elapsed / 21 + max(tree.last_s, 0.05) * 3, (tree.samples, tree.sampling_s, elapsed)


def test_every_timed_contender_is_checked_against_the_classic_outputs(
    kermany_dir: Path, demo_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    require_module("pytorch_grad_cam", install="grad-cam==1.5.7")
    import e2e_contenders as e2e

    data = _four_images(kermany_dir, tmp_path / "data")
    opts = e2e.Options(batch_size=3, device="cpu", threads=0, loader="torch")
    for name in ("classic", "classic-frozen", "enhance", "forward-eager", "forward-cl"):
        n, seconds, _ = e2e.run_contender(name, data, demo_checkpoints["tinyvgg"], tmp_path / name, opts, {})
        assert n == 4 and seconds > 0
    for name in ("classic-frozen", "enhance"):
        r = e2e.compare_outputs(tmp_path / name, tmp_path / "classic")
        assert r["same_files"] and r["n"] == 4 and r["pred_agreement"] == 1.0, r
        assert r["heatmap_p999_levels"] <= 2 and r["crop_box_median_px"] <= 2, r  # the same maps, 8-bit rounding
    for name in ("forward-eager", "forward-cl"):
        r = e2e.compare_outputs(tmp_path / name, tmp_path / "classic")
        assert r["same_files"] and r["pred_agreement"] == 1.0 and "heatmap_mean_levels" not in r, r
    # a contender that saw other files, or other maps, does not pass unnoticed
    swapped = dict(np.load(tmp_path / "enhance" / e2e.OUTPUTS))
    swapped["heatmap"] = swapped["heatmap"][::-1].copy()
    np.savez(tmp_path / "swapped.npz", **swapped)
    (tmp_path / "swapped").mkdir()
    (tmp_path / "swapped.npz").rename(tmp_path / "swapped" / e2e.OUTPUTS)
    assert e2e.compare_outputs(tmp_path / "swapped", tmp_path / "classic")["heatmap_p999_levels"] > 50
