"""The enhance job on multi-label label files with a sigmoid model: a densenet121 with 14 sigmoid outputs explains
every NIH finding of the sample X-rays (14 maps per image, each equal to a single-class run), the rejected rows are
named, plain h5py reads (sample, class) -> map, crops per map, and a softmax folder job keeps its one-map layout."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from enhancer.cli import main
from enhancer.data import make_loader
from enhancer.data.labels import NIH_FINDINGS, read_labels
from enhancer.explain.cam import prefers_channels_last
from enhancer.explain.compute import compute_cam
from enhancer.explain.folding import FoldedTrunk
from enhancer.models.demo import calibrate_batchnorm, scale_head_to_unit_logits, xray_like_batch
from enhancer.models.inspection import open_model
from enhancer.preprocessing import Preprocessing
from enhancer.settings import CamSettings
from enhancer.specs import CLASS_MAP_SETTINGS, TrainSpec
from enhancer.store import EnhancedDataset
from enhancer.train.loop import fit
from tests.test_train_multilabel import CLASSES, _image
from tests.tools.label_files import mimic_file, mimic_image_list, nih_file

SIZE = 64  # densenet121 at 64 px: a 2 x 2 map at features.norm5, ~1/12 of the 224 cost on 2 cores
DENSENET14 = ["--model", "tv:densenet121", "--num-classes", "14", "--input-size", str(SIZE)]


@pytest.fixture(scope="module")
def densenet14(tmp_path_factory) -> Path:
    """A torchvision densenet121 with 14 outputs (random weights, BatchNorm calibrated on X-ray-like images, the
    logits scaled to unit spread so that the sigmoids vary) saved as a state_dict."""
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=14)
    calibrate_batchnorm(model, [xray_like_batch(8, SIZE, in_chans=3, seed=1)])
    scale_head_to_unit_logits(model, xray_like_batch(8, SIZE, in_chans=3, seed=2))
    path = tmp_path_factory.mktemp("densenet14") / "densenet121_14.pt"
    torch.save(model.state_dict(), path)
    return path


def _enhance(checkpoint: Path, labels: Path, data: Path, out: Path, *extra: str) -> str:
    args = ["enhance", "--labels", str(labels), "--data", str(data), "--checkpoint", str(checkpoint)]
    args += ["--out", str(out), *DENSENET14, "--loader", "torch", "--batch-size", "8", "--no-progress", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for command in (["merge", str(out)], ["verify", str(out)]):
        done = CliRunner().invoke(main, command)
        assert done.exit_code == 0, done.output
    return result.output


def _shard(out: Path) -> tuple[dict, dict[str, np.ndarray]]:
    [shard] = sorted(out.glob("shard-*.h5"))
    with h5py.File(shard, "r") as f:
        names = ("index", "path", "explained", "targets", "cam", "heatmap", "prob", "crop", "crop_box", "enhanced")
        return dict(f.attrs), {n: f[n][:] for n in names if n in f}


@pytest.fixture(scope="module")
def nih_all(densenet14, kermany_dir, tmp_path_factory) -> tuple[Path, Path, Path]:
    """``enhance --labels Data_Entry_2017.csv --head sigmoid --explain all`` over the sample X-rays."""
    tmp = tmp_path_factory.mktemp("nih")
    f = nih_file(tmp, kermany_dir)
    out = tmp / "enhanced"
    _enhance(densenet14, f.path, f.data, out, "--head", "sigmoid", "--explain", "all")
    return f.path, out, tmp


def test_counts_balance_and_rejected_rows_are_named(nih_all, kermany_dir) -> None:
    labels, out, _ = nih_all
    m = json.loads((out / "manifest.json").read_text())
    assert (m["n_in"], m["n_written"], m["n_rejected"]) == (18, 16, 2)
    with open(out / "rejected.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["code"] for r in rows} == {"missing", "bad_label"}
    assert all(r["message"].startswith("Data_Entry_2017.csv row ") for r in rows)
    assert m["class_counts"]["explained"] == dict.fromkeys(NIH_FINDINGS, 16)
    found = read_labels(labels, kermany_dir)
    positives = (found.targets == 1).sum(0)
    assert m["class_counts"]["positive"] == {n: int(p) for n, p in zip(NIH_FINDINGS, positives, strict=True) if p}
    assert m["provenance"]["activation"] == "sigmoid"


def test_fourteen_maps_per_image_each_equal_to_a_single_class_run(nih_all, densenet14, kermany_dir) -> None:
    labels, out, _ = nih_all
    attrs, stored = _shard(out)
    assert stored["heatmap"].shape == (16, 14, SIZE, SIZE) and stored["cam"].shape == (16, 14, 2, 2)
    assert (stored["explained"] == np.arange(14)).all()
    assert json.loads(attrs["per_class_fields"]) == ["cam", "heatmap"]
    assert stored["crop"].shape == (16, 1, 224, 224)  # one crop per image, from the union of its maps
    found = read_labels(labels, kermany_dir)
    refused = {r.index for r in found.rejected}
    by_path = {s.path: found.targets[s.index] for s in found.samples if s.index not in refused}
    assert all((stored["targets"][i] == by_path[p.decode()]).all() for i, p in enumerate(stored["path"]))
    # The same inputs through the loader, and the model as the job opened it.
    ck, target = open_model(densenet14, model="tv:densenet121", num_classes=14, size=SIZE)
    assert Preprocessing.from_dict(json.loads(attrs["preprocessing"])) == ck.preprocessing
    ok = [s for s in found.samples if s.index in set(stored["index"].tolist())]
    [batch] = list(make_loader(ok, ck.preprocessing, batch_size=16, loader="torch", device="cpu", num_threads=0))
    row = {int(i): r for r, i in enumerate(batch.index)}
    x = batch.image[[row[int(i)] for i in stored["index"]]]
    # as the job runs the trunk on this CPU: channels_last where that is faster (it rounds unlike NCHW), with its
    # BatchNorm folded into the convolutions (FoldedTrunk; folded weights round differently too)
    channels_last = prefers_channels_last("cpu")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = ck.model.eval().to(memory_format=memory_format)
    split = FoldedTrunk(target.split, memory_format=memory_format)
    with torch.no_grad():
        xin = x.contiguous(memory_format=memory_format)
        assert np.allclose(stored["prob"], split(xin).sigmoid().numpy(), atol=1e-6)
    assert not np.allclose(stored["prob"].sum(1), 1)
    for c in range(14):  # the sigmoid's log-odds is its logit: score = logit
        settings = CamSettings(target=c, score="logit", channels_last=channels_last)
        single = compute_cam(model, x, layer=target.module, split=split, settings=settings)
        assert np.abs(stored["cam"][:, c] - single.raw.numpy()).max() <= 1e-6 * max(1.0, float(single.raw.max()))
        norm = stored["cam"][:, c] / np.maximum(stored["cam"][:, c].reshape(16, -1).max(1), 1e-30)[:, None, None]
        assert np.abs(norm - single.cam.numpy()).max() <= 1e-6
    assert (stored["cam"].reshape(16, 14, -1).max(2) > 0).mean() > 0.5, "trivial maps"


def test_a_single_class_run_gives_the_same_map(nih_all, densenet14, kermany_dir) -> None:
    labels, out, tmp = nih_all
    one = tmp / "effusion"
    _enhance(densenet14, labels, kermany_dir, one, "--head", "sigmoid", "--explain", "Effusion")
    _, all_maps = _shard(out)
    _, single = _shard(one)
    c = NIH_FINDINGS.index("Effusion")
    assert single["heatmap"].shape == (16, 1, SIZE, SIZE) and (single["explained"] == c).all()
    assert np.abs(single["cam"][:, 0] - all_maps["cam"][:, c]).max() <= 1e-6 * max(1.0, float(single["cam"].max()))
    assert (single["heatmap"][:, 0] == all_maps["heatmap"][:, c]).mean() > 0.999


def test_plain_h5py_reads_a_class_map_by_the_card(nih_all) -> None:
    _, out, _ = nih_all
    card = (out / "README.md").read_text()
    assert "## Maps per class" in card and "f['explained'][i, k]" in card and "14 map slot(s)" in card
    m = json.loads((out / "manifest.json").read_text())
    c = m["class_names"].index("Mass")
    maps = {}
    for s in m["shards"]:
        with h5py.File(out / s["file"], "r") as f:
            rows, slots = np.nonzero(f["explained"][:] == c)
            maps.update({int(f["index"][i]): f["heatmap"][i, k] for i, k in zip(rows, slots, strict=True)})
    ds = EnhancedDataset(out, fields=("heatmap", "index", "targets"), class_name="Mass")
    assert len(maps) == 16 == len(ds)
    for i in range(len(ds)):
        s = ds[i]
        assert s["has_map"] and (s["heatmap"].numpy() == maps[int(s["index"])]).all()
        assert s["targets"].shape == (14,)


def test_mimic_top2_with_a_crop_per_map(densenet14, kermany_dir, tmp_path) -> None:
    f = mimic_file(tmp_path, kermany_dir, "zeros")
    out = tmp_path / "enhanced"
    text = _enhance(
        densenet14,
        f.path,
        f.data,
        out,
        "--head",
        "sigmoid",
        "--explain",
        "top:2",
        "--crop-from",
        "each",
        "--uncertain",
        "zeros",
    )
    assert "6 written, 2 rejected of 8" in text
    attrs, stored = _shard(out)
    assert stored["crop"].shape == (6, 2, 1, 224, 224) and stored["crop_box"].shape == (6, 2, 4)
    assert stored["enhanced"].shape == (6, 2, 1, SIZE, SIZE) and stored["explained"].shape == (6, 2)
    chosen = np.take_along_axis(stored["prob"], stored["explained"].astype(np.int64), 1)
    others = stored["prob"].copy()
    np.put_along_axis(others, stored["explained"].astype(np.int64), -1.0, 1)
    assert (chosen.min(1) >= others.max(1)).all()  # the two most probable classes (ties either way)
    assert json.loads(attrs["explain"])["crop_from"] == "each"
    assert not (stored["targets"] == -1).any()  # uncertain as zeros


def test_mimic_frontal_views_from_the_image_list(densenet14, kermany_dir, tmp_path) -> None:
    """``--view frontal --label-metadata mimic-cxr-2.0.0-metadata.csv.gz``: only the list's frontal images are
    explained, every other entry is rejected with its row, and the shard records the list (path and sha256)."""
    f = mimic_file(tmp_path, kermany_dir, "zeros")
    listed = mimic_image_list(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz")
    out = tmp_path / "enhanced"
    text = _enhance(
        densenet14, f.path, f.data, out, "--head", "sigmoid", "--view", "frontal", "--label-metadata", str(listed)
    )
    assert "3 written, 6 rejected of 9" in text  # dicom00, dicom10, dicom20 (PA, AP, PA)
    attrs, stored = _shard(out)
    assert sorted(Path(p.decode()).name for p in stored["path"]) == ["dicom00.jpg", "dicom10.jpg", "dicom20.jpg"]
    labels = json.loads(attrs["labels"])
    assert labels["view"] == "frontal" and labels["metadata"]["path"] == str(listed)
    assert labels["metadata"]["sha256"] == hashlib.sha256(listed.read_bytes()).hexdigest()
    with open(out / "rejected.csv", newline="") as fh:
        codes = sorted(row["code"] for row in csv.DictReader(fh))
    assert codes == ["bad_label", "filtered", "filtered", "filtered", "missing", "missing"]


def test_a_label_file_with_another_class_count_is_refused(demo_checkpoints, kermany_dir, tmp_path) -> None:
    f = nih_file(tmp_path, kermany_dir)
    args = ["enhance", "--labels", str(f.path), "--data", str(kermany_dir), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, [*args, "--checkpoint", str(demo_checkpoints["tinyvgg"]), "--no-progress"])
    assert result.exit_code == 2 and "has 14 classes" in result.output and "2 outputs" in result.output
    bad = CliRunner().invoke(main, [*args, "--checkpoint", str(demo_checkpoints["tinyvgg"]), "--explain", "top:x"])
    assert bad.exit_code == 2 and "top:K" in bad.output


def test_a_trained_sigmoid_checkpoint_is_detected(tmp_path) -> None:
    """A model trained with --loss bce records its sigmoid head: enhance explains its predicted classes."""
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    targets = (rng.random((12, 3)) < 0.5).astype(np.int8)
    lines = ["path," + ",".join(CLASSES)]
    for i, t in enumerate(targets):
        Image.fromarray(_image(t, rng)).save(tmp_path / "images" / f"x{i}.png")
        lines.append(f"images/x{i}.png," + ",".join(map(str, t)))
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    spec = TrainSpec(
        data=str(tmp_path),
        out=str(tmp_path / "run"),
        labels=str(tmp_path / "labels.csv"),
        arch="tinyvgg",
        input_size=16,
        init="random",
        epochs=1,
        batch_size=4,
        num_workers=0,
        device="cpu",
        val_fraction=0.25,
    )
    fit(spec)
    out = tmp_path / "enhanced"
    args = ["enhance", "--labels", str(tmp_path / "labels.csv"), "--data", str(tmp_path), "--out", str(out)]
    result = CliRunner().invoke(
        main, [*args, "--checkpoint", str(tmp_path / "run" / "best.pt"), "--no-progress", "--loader", "torch"]
    )
    assert result.exit_code == 0, result.output
    attrs, stored = _shard(out)
    explain = json.loads(attrs["explain"])
    assert attrs["activation"] == "sigmoid" and explain["explain"] == "pred" and explain["slots"] == 3
    predicted = stored["prob"] >= 0.5
    for row, prob, classes in zip(predicted, stored["prob"], stored["explained"], strict=True):
        want = np.flatnonzero(row).tolist() if row.any() else [int(np.argmax(prob))]
        assert [int(c) for c in classes if c >= 0] == want
    # ... and the enhanced dataset trains the next model with its multi-hot targets (BCE: auto)
    assert CliRunner().invoke(main, ["merge", str(out)]).exit_code == 0
    again = fit(dataclasses.replace(spec, data=str(out), labels=None, out=str(tmp_path / "run2"), field="enhanced"))
    assert again.history[-1]["n_train"] + again.history[-1]["n_val"] == 12
    assert set(again.history[-1]["val_auroc_per_class"]) == set(CLASSES)


def test_softmax_folder_job_keeps_one_map_per_image(demo_checkpoints, kermany_dir, tmp_path) -> None:
    out = tmp_path / "seed"
    args = ["enhance", "--data", str(kermany_dir), "--out", str(out), "--checkpoint", str(demo_checkpoints["tinyvgg"])]
    result = CliRunner().invoke(main, [*args, "--no-progress", "--loader", "torch", "--fields", "heatmap,cam"])
    assert result.exit_code == 0, result.output
    attrs, stored = _shard(out)
    assert stored["heatmap"].shape == (16, 224, 224) and "explained" not in stored and "targets" not in stored
    assert not {"per_class_fields", "activation", "explain", "labels"} & set(attrs)
    assert np.allclose(stored["prob"].sum(1), 1, atol=1e-5)
    # The stored spec has no label-file or per-class settings either: such a job's shards stay byte-identical to
    # those of versions without them (scripts/compare_datasets.py), and readers take the missing keys as defaults.
    assert not set(CLASS_MAP_SETTINGS) & set(json.loads(attrs["spec"]))


def test_a_multi_label_shard_records_every_class_setting(nih_all) -> None:
    attrs, _ = _shard(nih_all[1])
    spec = json.loads(attrs["spec"])
    assert set(CLASS_MAP_SETTINGS) <= set(spec)
    assert (spec["head"], spec["explain"], spec["label_format"], spec["crop_from"]) == (
        "sigmoid",
        "all",
        "auto",
        "union",
    )


def test_unreadable_images_of_a_label_file_name_their_row(demo_checkpoints, kermany_dir, tmp_path) -> None:
    """A csv label file with an image that is not one: rejected by validation, with its row; a softmax model keeps
    one map per image and stores the targets beside it."""
    (tmp_path / "broken.jpeg").write_bytes(b"not a JPEG at all")
    a, b = (p.relative_to(kermany_dir) for p in sorted(kermany_dir.glob("*/*.jpeg"))[:2])
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,opacity,effusion\n{a},1,0\n{tmp_path / 'broken.jpeg'},0,1\n{b},-1,1\n")
    out = tmp_path / "enhanced"
    args = ["enhance", "--labels", str(labels), "--data", str(kermany_dir), "--out", str(out), "--loader", "torch"]
    result = CliRunner().invoke(main, [*args, "--checkpoint", str(demo_checkpoints["tinyvgg"]), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(main, ["merge", str(out)]).exit_code == 0
    with open(out / "rejected.csv", newline="") as fh:
        [row] = list(csv.DictReader(fh))
    assert row["code"] == "not_image" and row["message"].startswith("labels.csv row 3: ")
    attrs, stored = _shard(out)
    assert stored["heatmap"].shape == (2, 224, 224) and stored["targets"].tolist() == [[1, 0], [-1, 1]]
    assert "per_class_fields" not in attrs and json.loads(attrs["labels"])["format"] == "csv"
