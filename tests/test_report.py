"""`enhancer report` without a browser: the selection, the column reader, thumbnails, charts, the cycle and audit
sections, the files of a report and the command's errors. The browser tests are in test_report_browser.py."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from enhancer.cli import main
from enhancer.report.collect import collect
from enhancer.report.external import audit_html, copy_audit_images, cycle_html, load_audit
from enhancer.report.page import CHUNK
from enhancer.report.select import select_samples
from enhancer.report.svg import histogram, line_chart, matrix_chart
from enhancer.report.thumbs import BOX_RGB, draw_boxes, jet_table, overlay, thumb_paths
from enhancer.store.tables import read_columns, read_rejected
from tests.tools.report_synth import (
    CLASSES,
    ML_CLASSES,
    SIZE,
    make_audit_dir,
    write_per_class_dataset,
    write_report_dataset,
)

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report_dataset(tmp_path_factory.mktemp("report") / "synth", n=2000, rejected=7)


def shard_columns(dataset: Path, *names: str) -> dict[str, np.ndarray]:
    """Fields read with plain h5py, shard after shard (the manifest's order), as the reference."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for shard in sorted(dataset.glob("shard-*.h5")):
        with h5py.File(shard, "r") as f:
            for n in names:
                parts[n].append(f[n].asstr()[:] if n == "path" else f[n][:])
    return {n: np.concatenate(v) for n, v in parts.items()}


# ---- selection ---------------------------------------------------------------------------------------------------


def test_selection_takes_every_wrong_prediction_then_a_stratified_sample() -> None:
    rng = np.random.default_rng(1)
    labels = rng.choice(3, size=5000, p=[0.6, 0.3, 0.1])
    preds = np.where(rng.random(5000) < 0.05, (labels + 1) % 3, labels)
    n_wrong = int((labels != preds).sum())
    chosen = select_samples(labels, preds, limit=1000, seed=0)
    assert len(chosen) == 1000 and np.all(np.diff(chosen) > 0)
    assert set(np.flatnonzero(labels != preds)) <= set(chosen.tolist())
    right = chosen[labels[chosen] == preds[chosen]]
    share = np.bincount(labels[right], minlength=3) / len(right)
    expected = np.bincount(labels[labels == preds], minlength=3) / (labels == preds).sum()
    assert np.abs(share - expected).max() < 1.5 / len(right) and len(right) == 1000 - n_wrong
    assert np.array_equal(chosen, select_samples(labels, preds, limit=1000, seed=0))
    assert not np.array_equal(chosen, select_samples(labels, preds, limit=1000, seed=1))
    assert np.array_equal(select_samples(labels, preds, limit=0), np.arange(5000))
    assert np.array_equal(select_samples(labels, preds, limit=6000), np.arange(5000))


def test_selection_samples_the_mistakes_by_class_pair_when_they_alone_exceed_the_limit() -> None:
    labels = np.repeat([0, 1], 500)
    preds = np.concatenate([np.full(300, 1), np.zeros(200, int), np.zeros(100, int), np.ones(400, int)])
    chosen = select_samples(labels, preds, limit=40)
    assert np.all(labels[chosen] != preds[chosen])
    pairs = {(a, b): int(((labels[chosen] == a) & (preds[chosen] == b)).sum()) for a, b in ((0, 1), (1, 0))}
    assert pairs == {(0, 1): 30, (1, 0): 10}  # 300 : 100 mistakes


# ---- the store's column reader --------------------------------------------------------------------------------


def test_columns_and_rejected_rows_match_the_shards(synth: Path) -> None:
    ref = shard_columns(synth, "index", "label", "prob", "path", "box_iou", "image")
    cols = read_columns(synth, ("index", "label", "prob", "path", "box_iou"))
    for name in ("index", "label", "prob"):
        assert np.array_equal(cols[name], ref[name])
    assert cols["path"].tolist() == ref["path"].tolist()
    assert np.array_equal(cols["box_iou"], ref["box_iou"], equal_nan=True)
    picked = [1999, 3, 1000, 3, 999]  # across both shards, unsorted, repeated
    rows = read_columns(synth, ("image", "path"), picked)
    assert np.array_equal(rows["image"], ref["image"][picked])
    assert rows["path"].tolist() == ref["path"][picked].tolist()
    rejected = read_rejected(synth)
    with h5py.File(next(synth.glob("shard-*.h5")), "r") as f:
        first = sorted(int(i) for i in f["rejected/index"][:])
    assert len(rejected) == 7 and set(first) <= {r["index"] for r in rejected}
    assert (
        rejected[0]["message"] == 'cannot decode "bad,0.png" <truncated>' and rejected[0]["path"] == "NORMAL/bad,0.png"
    )


# ---- thumbnails ------------------------------------------------------------------------------------------------


def test_overlay_colours_only_warm_pixels_with_the_products_jet() -> None:
    grey = np.full((1, 4, 4), 100, np.uint8)
    heat = np.zeros((1, 4, 4), np.uint8)
    heat[0, :2, :2] = 255
    heat[0, 3, 3] = 50  # below 20%: stays grey
    out = overlay(grey, heat, alpha=0.4)
    assert np.all(out[0, 2:, :2] == 100) and np.all(out[0, 3, 3] == 100)
    want = np.round(100 * 0.6 + jet_table()[255].astype(float) * 0.4)
    assert np.array_equal(out[0, 0, 0], want) and tuple(jet_table()[255]) == (128, 0, 0)


def test_crop_boxes_are_drawn_where_the_original_pixels_map() -> None:
    rgb = np.zeros((2, 100, 100, 3), np.uint8)
    boxes = np.array([[100, 50, 300, 250], [0, 0, 400, 200]])  # originals 400 wide x 200 / 400 high
    draw_boxes(rgb, boxes, np.array([[400, 400], [200, 400]]), thickness=1)
    frame = np.all(rgb == BOX_RGB, axis=-1)
    ys, xs = np.nonzero(frame[0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (25, 74, 12, 62)
    assert not frame[0, 30:60, 30:60].any()  # inside stays untouched
    assert frame[1, 0, :].all() and frame[1, -1, :].all() and frame[1, :, 0].all()


def test_report_files_thumbnails_and_data_chunks(tmp_path: Path, synth: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(synth), "--out", str(out), "--limit", "400"])
    assert result.exit_code == 0, result.output
    assert "2000 samples summarised, 400 in the gallery, 400 with thumbnails" in result.output
    index = (out / "index.html").read_bytes()
    assert len(index) < 200 * 1024
    ref = shard_columns(synth, "label", "pred", "prob", "path", "lung_energy", "crop_box")
    wrong = np.flatnonzero(ref["label"] != ref["pred"])
    records = load_chunks(out)
    assert len(wrong) == 352 and len(records["pos"]) == 400 and set(wrong.tolist()) <= set(records["pos"])
    pos = np.array(records["pos"])
    assert records["path"] == ref["path"][pos].tolist()
    assert np.allclose(records["prob"], ref["prob"][pos], atol=5e-5)
    lung = np.array([np.nan if v is None else v for v in records["m"]["lung_energy"]])
    assert np.allclose(lung, ref["lung_energy"][pos], atol=5e-7, equal_nan=True)
    assert records["box"] == ref["crop_box"][pos].tolist()
    strip, card = (out / p for p in thumb_paths(int(pos[-1])))
    assert Image.open(strip).size == (4 * SIZE, SIZE) and Image.open(card).size == (160, 160)
    assert len(list((out / "thumbs").rglob("*.jpg"))) == 2 * 400
    assert (out / "rejected.csv").read_text() == (synth / "rejected.csv").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', index.decode())  # nothing from the network


def load_chunks(out: Path) -> dict[str, list]:
    """The records of every data/chunk-*.js, concatenated."""
    merged: dict[str, list] = {}
    files = sorted((out / "data").glob("chunk-*.js"))
    for k, path in enumerate(files):
        text = path.read_text()
        assert text.startswith(f"window.ENHANCER_REPORT.chunk({k}, ")
        part = json.loads(text[text.index(",") + 1 : text.rindex(")")])
        assert len(part["pos"]) <= CHUNK
        for key, value in part.items():
            if key == "m":
                for name, v in value.items():
                    merged.setdefault("m", {}).setdefault(name, []).extend(v)
            else:
                merged.setdefault(key, []).extend(value)
    return merged


def test_a_rerun_replaces_the_report_and_foreign_folders_are_refused(tmp_path: Path, synth: Path) -> None:
    out = tmp_path / "report"
    runner = CliRunner()
    assert runner.invoke(main, ["report", str(synth), "--out", str(out), "--limit", "20"]).exit_code == 0
    assert runner.invoke(main, ["report", str(synth), "--out", str(out), "--limit", "10"]).exit_code == 0
    assert len(list((out / "thumbs").rglob("*.card.jpg"))) == 10
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    result = runner.invoke(main, ["report", str(synth), "--out", str(foreign)])
    assert result.exit_code == 2 and "holds other files" in result.output
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]
    inside = runner.invoke(main, ["report", str(synth), "--out", str(synth / "report")])
    assert inside.exit_code == 2 and "inside the dataset" in inside.output
    not_merged = runner.invoke(main, ["report", str(foreign), "--out", str(tmp_path / "r2")])
    assert not_merged.exit_code == 2 and "manifest.json not found" in not_merged.output
    no_cycle = runner.invoke(main, ["report", str(synth), "--out", str(tmp_path / "r3"), "--cycle", str(foreign)])
    assert no_cycle.exit_code == 2 and "summary.json not found" in no_cycle.output
    assert not (tmp_path / "r3").exists()  # inputs are checked before anything is written
    bad_good = runner.invoke(main, ["report", str(synth), "--out", str(tmp_path / "r4"), "--good", "1.5"])
    assert bad_good.exit_code == 2 and "--good 1.5" in bad_good.output


# ---- charts --------------------------------------------------------------------------------------------------


def test_charts_are_well_formed_svg_carrying_their_numbers(synth: Path) -> None:
    data = collect(synth)
    counts = {"correct": np.array([3, 0, 5]), "wrong": np.array([1, 2, 0])}
    svg = ET.fromstring(histogram(np.array([0, 0.5, 0.75, 1]), counts, title="p", xlabel="probability"))
    rects = [r for r in svg.iter(f"{SVG}rect") if r.get("data-series")]  # the legend's squares carry no data
    bars = [(r.get("data-series"), int(r.get("data-bin")), int(r.get("data-count"))) for r in rects]
    assert sorted(bars) == sorted([("correct", 0, 3), ("correct", 2, 5), ("wrong", 0, 1), ("wrong", 1, 2)])
    matrix = np.bincount(data.label * 3 + data.pred, minlength=9).reshape(3, 3)
    cells = ET.fromstring(matrix_chart(matrix, CLASSES, CLASSES, title="m")).iter(f"{SVG}rect")
    got = {(c.get("data-row"), c.get("data-col")): int(c.get("data-count")) for c in cells}
    assert got == {(a, b): int(matrix[i, j]) for i, a in enumerate(CLASSES) for j, b in enumerate(CLASSES)}
    assert sum(got.values()) == 2000
    line = ET.fromstring(line_chart([0, 1, 2], {"acc": [0.5, None, 0.75]}, title="t <&>", xlabel="round"))
    assert [float(c.get("data-value")) for c in line.iter(f"{SVG}circle")] == [0.5, 0.75]
    assert line.find(f"{SVG}title").text == "t <&>"


# ---- cycle and audit -----------------------------------------------------------------------------------------


def test_audit_section_shows_verdicts_intervals_and_plots(tmp_path: Path) -> None:
    audit_dir = make_audit_dir(tmp_path / "audit")
    images = copy_audit_images(audit_dir, tmp_path / "report")
    assert images == ["audit/deletion_curves.png", "audit/randomisation/stage-fc.png"]
    assert (tmp_path / "report" / images[1]).read_bytes() == (audit_dir / "randomisation/stage-fc.png").read_bytes()
    html = audit_html(load_audit(audit_dir), images)
    assert 'Overall verdict: <span class="verdict verdict-fail">fail</span>' in html
    assert "<td>layer4</td><td>0.12</td><td>0.3</td><td>n/a</td>" in html
    assert "<td>miou</td><td>0.3412</td><td>0.3011 \u2013 0.3798</td>" in html
    assert "<td>road.most_relevant_first.50</td><td>0.2</td>" in html and "<td>deletion.auc</td>" in html
    assert "<td>repeatability.ssim</td><td>0.93</td>" in html
    assert html.count("<img ") == 2
    bare = audit_html({"verdict": None, "randomisation": "oops", "localisation": []}, [])  # defensive reading
    assert "n/a" in bare and "<img" not in bare


def test_cycle_section_draws_each_round(tmp_path: Path) -> None:
    rounds = [
        {"round": 0, "loss": 0.7, "accuracy": 0.5, "sensitivity": 0.6, "specificity": 0.4, "auroc": 0.55},
        {"round": 1, "loss": 0.5, "accuracy": 0.75, "sensitivity": 0.8, "specificity": 0.7, "auroc": None},
        {"round": 2, "loss": 0.4, "accuracy": 0.8125, "sensitivity": 0.9, "specificity": 0.7, "box_iou": 0.3},
    ]
    svg = re.findall(r"<svg.*?</svg>", cycle_html(rounds))
    assert len(svg) == 3  # quality, loss, localisation
    quality = ET.fromstring(svg[0])
    acc = [float(c.get("data-value")) for c in quality.iter(f"{SVG}circle") if c.get("data-series") == "accuracy"]
    auroc = [c for c in quality.iter(f"{SVG}circle") if c.get("data-series") == "auroc"]
    assert acc == [0.5, 0.75, 0.8125] and len(auroc) == 1


def test_report_with_cycle_and_audit_through_the_command(tmp_path: Path, synth: Path) -> None:
    cycle = tmp_path / "cycle"
    cycle.mkdir()
    rows = [{"round": k, "loss": 1 / (k + 1), "accuracy": 0.5 + 0.1 * k} for k in range(3)]
    (cycle / "summary.json").write_text(json.dumps({"rounds": rows, "spec": {}}))
    audit = make_audit_dir(tmp_path / "audit")
    out = tmp_path / "report"
    args = ["report", str(synth), "--out", str(out), "--limit", "5", "--cycle", str(cycle), "--audit", str(audit)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    index = (out / "index.html").read_text()
    assert '<section id="cycle">' in index and '<section id="audit">' in index and 'href="#audit"' in index
    assert (out / "audit" / "deletion_curves.png").is_file()
    shutil.rmtree(out)


# ---- datasets of maps per class ---------------------------------------------------------------------------------


def _section(html: str, anchor: str) -> str:
    start = html.index(f'<section id="{anchor}"')
    return html[start : html.index("</section>", start)]


def test_a_dataset_of_maps_per_class_gets_a_section_per_explained_class(tmp_path: Path) -> None:
    dataset = write_per_class_dataset(tmp_path / "ml", n=60)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(dataset), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ref = shard_columns(dataset, "explained", "targets", "prob", "box_iou", "box_hit", "image", "heatmap", "path")
    html = (out / "index.html").read_text()
    found = re.findall(r'<section id="class-(\d+)" class="explained-class" data-class="([^"]+)">', html)
    assert found == [("0", "Atelectasis"), ("1", "Effusion"), ("2", "Mass")]  # Nodule has no map
    assert '<section id="confusion">' not in html and '<section id="classes">' not in html  # no single label
    assert 'href="#explained"' in html and "correct predictions" not in html
    overview = _section(html, "explained")
    for c, name in enumerate(ML_CLASSES[:3]):
        has = (ref["explained"] == c).any(1)
        rows, slots = np.nonzero(ref["explained"] == c)
        target = ref["targets"][has, c]
        counts = [int(has.sum()), *(int((target == t).sum()) for t in (1, 0, -1))]
        mean = ref["prob"][has, c].astype(np.float64).mean()
        cells = "".join(f"<td>{v}</td>" for v in counts)
        assert f'<a href="#class-{c}">{name}</a></td>{cells}<td>{mean:.4f}</td>' in overview
        part = _section(html, f"class-{c}")
        shown = [int(p) for p in re.findall(r'class="class-thumb" data-pos="(\d+)"', part)]
        assert len(shown) == min(12, int(has.sum())) and all(has[shown])
        assert (ref["targets"][shown, c] == 1).tolist() == sorted(
            (ref["targets"][shown, c] == 1).tolist(), reverse=True
        )
        iou = ref["box_iou"][rows, slots]
        assert f"<td>box_iou</td><td>{np.nanmean(iou.astype(np.float64)):.4f}</td>" in part
        hit = ref["box_hit"][rows, slots]
        assert f"<td>box_hit</td><td>{hit[hit != -1].astype(np.float64).mean():.4f}</td>" in part
        # the thumbnail shows that class's map over the image (not another slot's, not the union)
        pos = shown[0]
        slot = int(np.flatnonzero(ref["explained"][pos] == c)[0])
        thumb = np.asarray(Image.open(out / "thumbs" / f"class-{c}" / f"{pos}.jpg").convert("RGB"), np.float64)
        small = Image.fromarray(overlay(ref["image"][pos : pos + 1, 0], ref["heatmap"][pos : pos + 1, slot])[0])
        want = np.asarray(small.resize((160, 160), Image.Resampling.BILINEAR), np.float64)
        assert np.abs(thumb - want).mean() < 4
    assert len(list((out / "thumbs").glob("class-*/*.jpg"))) == sum(
        min(12, int((ref["explained"] == c).any(1).sum())) for c in range(3)
    )
    config = json.loads(re.search(r'<script id="report-config" type="application/json">(.*?)</script>', html)[1])
    # crops and enhanced images from the union are one per image: shown; per-map metrics are in the class sections
    assert [p for p, _ in config["panels"]] == ["image", "overlay", "crop", "enhanced"] and config["metrics"] == []
    records = load_chunks(out)
    assert len(records["pos"]) == 60 and "box" in records and records.get("m", {}) == {}
    # the gallery's overlay: the union of the image's maps (closer to it than to either map alone; JPEG of noise)
    two = int(np.flatnonzero((ref["explained"] >= 0).all(1))[0])
    strip = np.asarray(Image.open(out / thumb_paths(two)[0]).convert("RGB"), np.float64)[:, SIZE : 2 * SIZE]
    heat = ref["heatmap"][two : two + 1]
    errors = [
        np.abs(strip - overlay(ref["image"][two : two + 1, 0], h)[0]).mean()
        for h in (heat.max(1), *heat[:, :2].swapaxes(0, 1))
    ]
    assert errors[0] < min(errors[1:])
