"""Localisation metrics on synthetic maps and masks with known answers; box CSVs; merge summary; the enhance job with
a lung model and boxes."""

from __future__ import annotations

import dataclasses
import json
import math

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from enhancer.cli import main
from enhancer.data import scan
from enhancer.enhance import merge_enhanced, run_enhance
from enhancer.explain.localisation import (
    NOT_DEFINED,
    box_iou,
    boxes_mask,
    dilate,
    energy_inside,
    pointing_hit,
    read_boxes,
    threshold_box_mask,
)
from enhancer.models.lungs import LungUNet, save_lung_checkpoint
from enhancer.specs import EnhanceSpec, SpecError
from enhancer.store import EnhancedDataset, verify


def _nan(x: torch.Tensor) -> bool:
    return bool(torch.isnan(x))


def test_energy_inside_known_fractions_empty_maps_and_empty_masks():
    heat = torch.zeros(4, 4, 4)
    heat[0, 0, 0], heat[0, 3, 3] = 3.0, 1.0  # 3 of 4 units inside
    heat[1, 1:3, 1:3] = 0.5  # all inside
    heat[3, 0, :] = 1.0  # a map whose mask is empty
    mask = torch.zeros(4, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = True
    mask[1, 1:3, 1:3] = True
    mask[2, :2] = True  # sample 2: a map without evidence
    e = energy_inside(heat, mask)
    assert e.dtype == torch.float32 and e.shape == (4,)
    assert e[0].item() == pytest.approx(0.75) and e[1].item() == pytest.approx(1.0)
    assert _nan(e[2]) and _nan(e[3])
    # a soft mask weights the energy; negative and NaN heat count as 0
    soft = torch.full((1, 2, 2), 0.5)
    assert energy_inside(torch.tensor([[[1.0, -1.0], [float("nan"), 1.0]]]), soft).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="of one shape"):
        energy_inside(heat, mask[:, :2])


def test_pointing_hit_misses_plateaus_and_undefined():
    heat = torch.zeros(5, 3, 3)
    heat[0, 1, 1] = 1.0  # max inside
    heat[1, 0, 0] = 1.0  # max outside
    heat[2, 1, 1] = heat[2, 1, 2] = heat[2, 0, 0] = 1.0  # plateau: 2 of 3 inside -> hit
    heat[3, 1, 1] = heat[3, 0, 0] = heat[3, 0, 1] = 1.0  # plateau: 1 of 3 inside -> miss
    mask = torch.zeros(5, 3, 3, dtype=torch.bool)
    mask[:, 1, 1:] = True
    hits = pointing_hit(heat, mask)
    assert hits.dtype == torch.int8
    assert hits.tolist() == [1, 0, 1, 0, NOT_DEFINED]  # sample 4: no evidence
    assert pointing_hit(heat[:1], torch.zeros(1, 3, 3, dtype=torch.bool)).item() == NOT_DEFINED
    # tolerance: a maximum one pixel away from the region counts with tolerance=1
    near = torch.zeros(1, 5, 5)
    near[0, 2, 3] = 1.0
    region = torch.zeros(1, 5, 5, dtype=torch.bool)
    region[0, 2, 2] = True
    assert pointing_hit(near, region).item() == 0 and pointing_hit(near, region, tolerance=1).item() == 1
    assert dilate(region, 1)[0].sum().item() == 9


def test_threshold_box_and_iou_with_the_union_of_boxes():
    heat = torch.zeros(4, 10, 10)
    heat[0, 2:6, 3:7] = 1.0  # hot square 4x4 at rows 2..5, cols 3..6
    heat[1, 2:6, 3:7] = 1.0
    heat[2, 2, 2] = heat[2, 7, 7] = 1.0  # two hot pixels: their box spans rows/cols 2..7
    heat[2, 5, 5] = 0.4  # below half the max: not hot
    gt = torch.zeros(4, 10, 10, dtype=torch.bool)
    gt[0, 2:6, 3:7] = True  # the same square
    gt[1, 2:6, 5:9] = True  # shifted right by 2: overlap 4x2 = 8, union 16 + 16 - 8 = 24
    gt[2, 2:4, 2:8] = True  # union of two boxes of 12 px each (disjoint): all inside the 6x6 map box
    gt[2, 6:8, 2:8] = True
    box = threshold_box_mask(heat)
    assert box[2].sum().item() == 36 and box[3].sum().item() == 0
    iou = box_iou(heat, gt)
    assert iou[0].item() == pytest.approx(1.0)
    assert iou[1].item() == pytest.approx(8 / 24)
    assert iou[2].item() == pytest.approx(24 / 36)
    assert _nan(iou[3])  # no evidence
    assert _nan(box_iou(heat[:1], torch.zeros(1, 10, 10, dtype=torch.bool))[0])  # no box
    with pytest.raises(ValueError, match="threshold"):
        threshold_box_mask(heat, 0.0)


def test_boxes_mask_maps_original_pixels_through_the_squash_resize():
    # original 100 (h) x 200 (w) -> model 10 x 10: x scales by 1/20, y by 1/10
    boxes = torch.tensor([[[0.0, 0.0, 40.0, 30.0], [math.nan] * 4], [[100.0, 50.0, 200.0, 100.0], [0, 0, 20, 10]]])
    m = boxes_mask(boxes, torch.tensor([[100, 200], [100, 200]]), (10, 10))
    assert m.shape == (2, 10, 10)
    assert m[0, :3, :2].all() and m[0].sum().item() == 6  # NaN row ignored
    assert m[1, 5:, 5:].all() and m[1, 0, 0] and m[1].sum().item() == 25 + 1
    assert not boxes_mask(torch.zeros(3, 0, 4), torch.full((3, 2), 10), (4, 4)).any()


def test_read_boxes_rsna_and_path_formats(tmp_path):
    rsna = tmp_path / "labels.csv"
    rsna.write_text("patientId,x,y,width,height,Target\na1,10,20,30,40,1\na1,100,100,10,10,1\nn0,,,,,0\n")
    t = read_boxes(rsna)
    assert t.lookup("/data/PNEUMONIA/a1.dcm") == [(10, 20, 40, 60), (100, 100, 110, 110)]
    assert t.lookup("/data/NORMAL/n0.dcm") == [] and t.lookup("/elsewhere/zz.dcm") is None
    b = t.batch(["/x/a1.dcm", "/x/n0.dcm", "/x/zz.dcm"])
    assert b.shape == (3, 2, 4) and torch.isnan(b[1:]).all() and b[0, 1].tolist() == [100, 100, 110, 110]
    sub = tmp_path / "imgs"
    sub.mkdir()
    plain = tmp_path / "boxes.csv"
    plain.write_text("path,x0,y0,x1,y1\nimgs/p.png,1,2,3,4\nimgs/q.png,,,,\n")
    t2 = read_boxes(plain)
    assert t2.lookup(str(sub / "p.png")) == [(1, 2, 3, 4)] and t2.lookup(str(sub / "q.png")) == []
    bad = tmp_path / "bad.csv"
    bad.write_text("file,left,top\n")
    with pytest.raises(ValueError, match="bad.csv: the header must be patientId"):
        read_boxes(bad)
    inverted = tmp_path / "inv.csv"
    inverted.write_text("path,x0,y0,x1,y1\np.png,5,5,1,9\n")
    with pytest.raises(ValueError, match="inv.csv:2: box"):
        read_boxes(inverted)


@pytest.fixture(scope="module")
def lung_checkpoint(tmp_path_factory, kermany_dir):
    """A lung U-Net with random weights at a small input size (the job's plumbing, not real lungs), its output bias
    shifted so that about half of each real sample's pixels come out as lung."""
    from enhancer.data.decode import load_grey
    from enhancer.models.lungs import lung_input

    torch.manual_seed(0)
    net = LungUNet().eval()
    grey = [np.asarray(load_grey(s.path).resize((64, 64))) for s in scan(kermany_dir).samples[::4]]
    x = lung_input(torch.from_numpy(np.stack(grey))[:, None], 64)
    with torch.no_grad():
        logits = net(x)
        net.out.bias[1] -= (logits[:, 1] - logits[:, 0]).median()
    path = tmp_path_factory.mktemp("lungs") / "lungs.pt"
    return save_lung_checkpoint(path, net, input_size=64)


@pytest.fixture(scope="module")
def box_csv(tmp_path_factory, kermany_dir):
    """Boxes for the PNEUMONIA samples (the central half of the image), NORMAL ones listed without a box."""
    rows = ["path,x0,y0,x1,y1"]
    for s in scan(kermany_dir).samples:
        rows.append(f"{s.path},100,100,400,400" if s.label == 1 else f"{s.path},,,,")
    path = tmp_path_factory.mktemp("boxes") / "boxes.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def lung_run(tmp_path_factory, kermany_dir, demo_checkpoints, lung_checkpoint, box_csv):
    out = tmp_path_factory.mktemp("enh") / "lungs"
    run_enhance(
        EnhanceSpec(
            data=str(kermany_dir),
            out=str(out),
            checkpoint=str(demo_checkpoints["tinyvgg"]),
            batch_size=8,
            loader="torch",
            num_threads=0,
            lung_model=str(lung_checkpoint),
            lung_mask_in_enhanced=True,
            boxes=str(box_csv),
        ),
        progress=False,
    )
    merge_enhanced(out)
    return out


def test_enhance_stores_lung_masks_and_metrics_consistent_with_the_stored_maps(lung_run):
    ds = EnhancedDataset(
        lung_run,
        fields=(
            "heatmap",
            "lung_mask",
            "lung_energy",
            "lung_hit",
            "enhanced",
            "label",
            "box_energy",
            "box_hit",
            "box_iou",
        ),
    )
    assert len(ds) == 16
    [shard] = sorted(lung_run.glob("shard-*.h5"))
    with h5py.File(shard, "r") as f:
        assert f["lung_mask"].shape == (16, 224, 224) and f["lung_mask"].dtype == np.uint8
        assert f["lung_energy"].dtype == np.float32 and f["lung_hit"].dtype == np.int8
        assert f["box_iou"].shape == (16,)
        attrs = json.loads(f.attrs["localisation"])
        assert attrs["lung_model"]["input_size"] == 64 and attrs["lung_model"]["in_enhanced"] is True
        assert attrs["boxes"]["images"] == 16 and "pointing" not in attrs["definitions"]
    for i in range(len(ds)):
        s = {k: np.asarray(v) for k, v in ds[i].items()}
        mask, heat = s["lung_mask"].astype(bool), s["heatmap"].astype(np.float64)
        assert set(np.unique(s["lung_mask"])) <= {0, 1}
        if mask.any() and heat.sum() > 0:
            # the stored heatmap is the map quantised to 8 bits: the metric agrees to quantisation error
            assert float(s["lung_energy"]) == pytest.approx((heat * mask).sum() / heat.sum(), abs=0.02)
        else:
            assert np.isnan(s["lung_energy"]) and s["lung_hit"] == -1
        assert not s["enhanced"][0][~mask].any()  # mask_floor 0: nothing kept outside the lungs
        if s["label"] == 0:  # NORMAL: listed without a box -> undefined
            assert np.isnan(s["box_energy"]) and np.isnan(s["box_iou"]) and s["box_hit"] == -1
        else:
            assert 0 <= float(s["box_energy"]) <= 1 and s["box_hit"] in (0, 1)
    lung_share = np.mean([np.asarray(ds[i]["lung_mask"]).mean() for i in range(len(ds))])
    assert 0.1 < lung_share < 0.9  # the masks are not trivial, so the checks above compared real numbers
    assert verify(lung_run).ok


def test_merge_summarises_the_metrics_per_class_in_the_manifest_and_card(lung_run):
    m = json.loads((lung_run / "manifest.json").read_text())
    loc = m["localisation"]
    assert set(loc) == {"lung_energy", "lung_hit", "box_energy", "box_hit", "box_iou"}
    assert loc["box_iou"]["n"] <= 8 and loc["box_iou"]["by_class"]["NORMAL"] == {"mean": None, "n": 0}
    ds = EnhancedDataset(lung_run, fields=("lung_energy", "label"))
    values = np.array([float(ds[i]["lung_energy"]) for i in range(len(ds))])
    ok = np.isfinite(values)
    assert loc["lung_energy"]["n"] == int(ok.sum())
    if ok.any():
        assert loc["lung_energy"]["mean"] == pytest.approx(values[ok].mean(), rel=1e-6)
    card = (lung_run / "README.md").read_text()
    assert "## Localisation" in card and "`lung_energy`" in card


def test_verify_flags_out_of_range_metrics(tmp_path, lung_run):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(lung_run, out)
    [shard] = sorted(out.glob("shard-*.h5"))
    with h5py.File(shard, "r+") as f:
        f["lung_hit"][0] = 5
        f["box_iou"][1] = 1.5
    problems = "\n".join(verify(out).problems)
    assert "lung_hit 5 is not -1" in problems and "box_iou 1.5 is neither NaN" in problems


def test_lung_fields_need_a_lung_model_and_the_cli_takes_the_options(
    tmp_path, kermany_dir, demo_checkpoints, lung_checkpoint
):
    with pytest.raises(SpecError, match="lung_mask_in_enhanced needs lung_model"):
        EnhanceSpec(data="d", out="o", lung_mask_in_enhanced=True)
    with pytest.raises(SpecError, match="need --lung-model"):
        run_enhance(
            EnhanceSpec(
                data=str(kermany_dir),
                out=str(tmp_path / "x"),
                fields=("lung_mask",),
                checkpoint=str(demo_checkpoints["tinyvgg"]),
            ),
            progress=False,
        )
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        main,
        [
            "enhance",
            "--data",
            str(kermany_dir),
            "--out",
            str(out),
            "--checkpoint",
            str(demo_checkpoints["tinyvgg"]),
            "--lung-model",
            str(lung_checkpoint),
            "--fields",
            "heatmap",
            "--loader",
            "torch",
            "--num-threads",
            "0",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    [shard] = sorted(out.glob("shard-*.h5"))
    with h5py.File(shard, "r") as f:
        assert {"lung_mask", "lung_energy", "lung_hit", "heatmap"} <= set(f) and "box_iou" not in f
    result = CliRunner().invoke(
        main,
        [
            "enhance",
            "--data",
            str(kermany_dir),
            "--out",
            str(tmp_path / "bad"),
            "--checkpoint",
            str(demo_checkpoints["tinyvgg"]),
            "--lung-model",
            str(demo_checkpoints["tinyvgg"]),
            "--no-progress",
        ],
    )
    assert result.exit_code != 0 and "not the lung-segmentation U-Net" in result.output


def test_cycle_reports_localisation_per_round_next_to_accuracy(
    tmp_path, kermany_dir, demo_checkpoints, lung_checkpoint
):
    from enhancer.cycle import _localise, markdown_table
    from enhancer.specs import CycleSpec

    spec = CycleSpec(
        data=str(kermany_dir),
        test=str(kermany_dir),
        checkpoint="c",
        out=str(tmp_path),
        enhance=EnhanceSpec(lung_model=str(lung_checkpoint), batch_size=8, loader="torch", num_threads=0),
    )
    loc = _localise(spec, str(kermany_dir), tmp_path / "loc", str(demo_checkpoints["tinyvgg"]))
    assert set(loc) == {"lung_energy", "lung_hit"}
    manifest = json.loads((tmp_path / "loc" / "manifest.json").read_text())
    assert "enhanced" not in manifest["fields"] and "lung_mask" in manifest["fields"]
    assert _localise(dataclasses.replace(spec, enhance=EnhanceSpec()), str(kermany_dir), tmp_path / "none", "c") == {}
    row = {
        "round": 1,
        "loss": 0.3,
        "accuracy": 0.9,
        "sensitivity": 0.8,
        "specificity": 1.0,
        "auroc": 0.95,
        "best_epoch": 2,
        "checkpoint": "best.pt",
        "lung_energy": 0.4123,
        "lung_hit": 0.75,
    }
    table = markdown_table([row])
    assert "| lung energy | lung hit % |" in table and "| 0.4123 | 75.00 |" in table
