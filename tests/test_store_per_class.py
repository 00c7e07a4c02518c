"""The per-(sample, class) layout of a multi-label dataset: written with the class axis, merged, verified, read with
plain h5py by the card's recipe, through EnhancedDataset with a class selected, exported and shown per class."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from enhancer.cli import main
from enhancer.store import (
    EnhancedDataset,
    ShardWriter,
    StoreError,
    export_imagefolder,
    merge,
    per_sample_shapes,
    resolve_fields,
    verify,
)
from enhancer.store.layout import CARD

CLASSES = ["Atelectasis", "Effusion", "Mass", "Nodule"]
SIZES = {"H": 8, "W": 8, "h": 2, "w": 2, "Hc": 4, "Wc": 4, "C": 4, "K": 2}
FIELDS = resolve_fields(("image", "cam", "heatmap", "crop", "crop_box", "enhanced", "targets", "explained"))
PER_CLASS = ("cam", "heatmap", "crop_box")  # crop and enhanced from the union: one per image


def _batch(indices: list[int]) -> dict:
    """Two map slots per image: the classes (i % 4, (i + 1) % 4), the second slot empty for every third image;
    heatmap slot k of image i is filled with 10 * class + i."""
    n = len(indices)
    rng = np.random.default_rng(indices)
    explained = np.array([[i % 4, (i + 1) % 4 if i % 3 else -1] for i in indices], np.int16)
    heat = np.zeros((n, 2, 8, 8), np.uint8)
    for r, row in enumerate(explained):
        for k, c in enumerate(row):
            if c >= 0:
                heat[r, k] = 10 * c + indices[r]
    prob = rng.random((n, 4)).astype(np.float32)
    return {
        "index": np.array(indices),
        "label": np.full(n, -1),
        "pred": prob.argmax(1),
        "prob": prob,
        "path": [f"img_{i}.png" for i in indices],
        "orig_size": np.full((n, 2), 30),
        "image": rng.integers(0, 256, (n, 1, 8, 8)).astype(np.uint8),
        "cam": rng.random((n, 2, 2, 2)).astype(np.float32),
        "heatmap": heat,
        "crop": rng.integers(0, 256, (n, 1, 4, 4)).astype(np.uint8),
        "crop_box": np.tile(np.array([1, 2, 20, 25], np.int32), (n, 2, 1)),
        "enhanced": rng.integers(0, 256, (n, 1, 8, 8)).astype(np.uint8),
        "targets": np.array([[(i + c) % 3 - 1 for c in range(4)] for i in indices], np.int8),
        "explained": explained,
    }


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    out = tmp_path / "ml"
    shapes = per_sample_shapes(FIELDS, per_class=PER_CLASS, **SIZES)
    attrs = {"class_names": CLASSES, "activation": "sigmoid"}
    for shard, indices in enumerate(([0, 1, 2, 3], [4, 5, 6])):
        with ShardWriter(out, shard, 2, fields=FIELDS, shapes=shapes, attrs=attrs, per_class=PER_CLASS) as w:
            w.write(_batch(indices))
    merge(out, expected_indices=range(7))
    return out


def test_plain_h5py_reads_sample_class_to_map_as_the_card_says(dataset: Path) -> None:
    m = json.loads((dataset / "manifest.json").read_text())
    assert m["fields"]["heatmap"]["shape"] == [None, 2, 8, 8] and m["fields"]["heatmap"]["per_class"]
    assert "per_class" not in m["fields"]["crop"] and m["class_counts"]["explained"]["Effusion"] == 3
    card = (dataset / CARD).read_text()
    assert "## Maps per class" in card and "f['explained'][i, k]" in card
    c = CLASSES.index("Effusion")
    found = {}
    for s in m["shards"]:  # the card's recipe, nothing of enhancer
        with h5py.File(dataset / s["file"], "r") as f:
            assert json.loads(f.attrs["per_class_fields"]) == list(PER_CLASS)
            rows, slots = np.nonzero(f["explained"][:] == c)
            for i, k in zip(rows, slots, strict=True):
                found[int(f["index"][i])] = f["heatmap"][i, k]
    assert sorted(found) == [1, 4, 5]  # slots of class 1: i % 4 == 1, or (i + 1) % 4 == 1 unless 3 divides i
    for i, heat in found.items():
        assert (heat == 10 * c + i).all()
    assert verify(dataset).ok


def test_dataset_selects_a_class_and_yields_multi_hot_targets(dataset: Path) -> None:
    ds = EnhancedDataset(dataset, fields=("heatmap", "crop", "targets", "explained"), class_name="Mass")
    assert ds.per_class == PER_CLASS and ds.class_id == 2 and ds.targets.shape == (7, 4)
    s = ds[2]  # image 2: slots (2, 3)
    assert s["has_map"] and s["heatmap"].shape == (8, 8) and (s["heatmap"] == 22).all()
    assert s["crop"].shape == (1, 4, 4)  # the union crop, shared by every class
    assert s["targets"].tolist() == [(2 + c) % 3 - 1 for c in range(4)] and s["explained"].tolist() == [2, 3]
    assert not ds[4]["has_map"] and (ds[4]["heatmap"] == 0).all()  # image 4: classes 0, 1
    whole = EnhancedDataset(dataset, fields=("heatmap",))
    assert whole[2]["heatmap"].shape == (2, 8, 8)
    assert EnhancedDataset(dataset, fields=("heatmap",), class_name=3).class_id == 3
    with pytest.raises(StoreError, match="no class 'Hernia'.*Atelectasis, Effusion"):
        EnhancedDataset(dataset, class_name="Hernia")


def test_export_and_show_one_class(dataset: Path, tmp_path: Path) -> None:
    n = export_imagefolder(dataset, tmp_path / "png", field="heatmap", class_name="Effusion")
    assert n == 3
    written = {p.parent.name: p.stem for p in (tmp_path / "png").rglob("*.png")}
    targets = {i: (i + 1) % 3 - 1 for i in (1, 4, 5)}
    folders = {"positive": 1, "negative": 0, "uncertain": -1}
    for p in (tmp_path / "png").rglob("*.png"):
        i = int(p.stem.split("_")[1])
        assert folders[p.parent.name] == targets[i]
        assert (np.asarray(Image.open(p)) == 10 + i).all()
    assert written
    cli = CliRunner().invoke(main, ["show", str(dataset), "--out", str(tmp_path / "g.png"), "--class", "Effusion"])
    assert cli.exit_code == 0, cli.output
    assert Image.open(tmp_path / "g.png").size[1] == 18 + 3 * (224 + 18)  # the 3 images with an Effusion map
    cli = CliRunner().invoke(main, ["show", str(dataset), "--out", str(tmp_path / "g2.png")])
    assert cli.exit_code == 2 and "--class NAME" in cli.output and "Effusion" in cli.output


def test_writer_refuses_jpeg_for_per_class_maps_and_bad_layouts(tmp_path: Path) -> None:
    fields = resolve_fields(("crop", "explained"))
    shapes = per_sample_shapes(fields, per_class=("crop",), **SIZES)
    assert shapes["crop"] == (2, 1, 4, 4)
    with pytest.raises(StoreError, match="JPEG cannot store"):
        ShardWriter(tmp_path, 0, 1, fields=fields, shapes=shapes, per_class=("crop",), codecs={"crop": "jpeg90"})
    with pytest.raises(StoreError, match="no per-class layout"):
        per_sample_shapes(("image",), per_class=("image",), **SIZES)
    with pytest.raises(StoreError, match="does not match the schema"):
        ShardWriter(tmp_path, 0, 1, fields=fields, shapes={**shapes, "crop": (1, 4, 4)}, per_class=("crop",))


def test_merge_summarises_several_metrics_per_map_by_class(tmp_path: Path) -> None:
    """Box energy, hit and IoU per (sample, slot): the manifest's means per class over each class's filled slots."""
    from tests.tools.report_synth import ML_CLASSES, write_per_class_dataset

    out = write_per_class_dataset(tmp_path / "ml", n=40)
    cols: dict[str, list[np.ndarray]] = {}
    for shard in sorted(out.glob("shard-*.h5")):
        with h5py.File(shard, "r") as f:
            for name in ("explained", "box_energy", "box_hit", "box_iou"):
                cols.setdefault(name, []).append(f[name][:])
    ref = {k: np.concatenate(v) for k, v in cols.items()}
    summary = json.loads((out / "manifest.json").read_text())["localisation"]
    for name in ("box_energy", "box_hit", "box_iou"):
        for c, cls in enumerate(ML_CLASSES[:3]):
            v = ref[name][ref["explained"] == c]
            ok = v != -1 if name == "box_hit" else np.isfinite(v)
            got = summary[name]["by_class"][cls]
            assert got["n"] == int(ok.sum()) and got["mean"] == pytest.approx(v[ok].astype(np.float64).mean())
        assert ML_CLASSES[3] not in summary[name]["by_class"]
