"""Label files of the public chest X-ray datasets (NIH, CheXpert, MIMIC, RSNA, plain csv) over the sample X-rays:
every entry is a sample or a rejection naming its row, and the targets are what the rows say."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from enhancer.data import DataError
from enhancer.data.labels import NIH_FINDINGS, OBSERVATIONS, RSNA_CLASSES, detect_format, read_labels
from tests.tools.label_files import (
    chexpert_file,
    link,
    mimic_file,
    mimic_image_list,
    nih_file,
    nih_file_with_unknown_finding,
    sample_images,
)


def _rejected_rows(found) -> dict[int, str]:
    """row number (from the message) -> code, checking that every message names its file and row."""
    out = {}
    for r in found.rejected:
        name = os.path.basename(found.label_file)
        assert r.message.startswith(f"{name} row "), r.message
        out[int(r.message[len(name) + 5 :].split(":")[0])] = r.code
    return out


def _balanced(found, n_entries: int) -> None:
    assert len(found.samples) == n_entries
    assert [s.index for s in found.samples] == list(range(n_entries))
    assert len(found.rows) == n_entries and found.targets.shape == (n_entries, len(found.class_names))
    rejected = {r.index for r in found.rejected}
    assert len(rejected) == len(found.rejected)
    assert np.all(found.targets[sorted(rejected)] == -1)  # rejected entries train nothing


def test_nih_rows_targets_and_rejections(tmp_path: Path, kermany_dir: Path) -> None:
    f = nih_file(tmp_path, kermany_dir)
    found = read_labels(f.path, f.data, format="nih")
    assert detect_format(str(f.path)) == "nih"
    assert found.class_names == NIH_FINDINGS and found.multi_label
    _balanced(found, f.n_entries)
    assert _rejected_rows(found) == f.rejected
    ok = [s for s in found.samples if s.index not in {r.index for r in found.rejected}]
    assert len(ok) == 16 and all(s.label == -1 for s in ok)
    for s in ok:
        np.testing.assert_array_equal(found.targets[s.index], f.targets[Path(s.path).name], err_msg=s.path)
    assert found.targets[ok[0].index].sum() == 0  # No Finding: all zero
    missing = next(r for r in found.rejected if r.code == "missing")
    assert "00099999_000.png" in missing.message and str(kermany_dir) in missing.message


def test_nih_unknown_finding_and_view_filter(tmp_path: Path, kermany_dir: Path) -> None:
    f = nih_file_with_unknown_finding(tmp_path, kermany_dir)
    found = read_labels(f.path, f.data)
    assert _rejected_rows(found) == {3: "bad_label"}
    assert "'Unicorn'" in found.rejected[0].message and "Hernia" in found.rejected[0].message  # names the valid ones
    with pytest.raises(DataError, match="View Position"):
        read_labels(f.path, f.data, view="frontal")  # no view column to filter on
    g = nih_file(tmp_path, kermany_dir)
    lateral = read_labels(g.path, g.data, view="lateral")
    assert _rejected_rows(lateral) == {**g.rejected, **{row: "filtered" for row in range(2, 18)}}


@pytest.mark.parametrize("uncertain", ["ignore", "zeros", "ones"])
def test_chexpert_uncertain_blank_view(tmp_path: Path, kermany_dir: Path, uncertain: str) -> None:
    f = chexpert_file(tmp_path, kermany_dir, uncertain)
    assert detect_format(str(f.path)) == "chexpert"
    found = read_labels(f.path, f.data, uncertain=uncertain)
    assert found.class_names == OBSERVATIONS
    _balanced(found, f.n_entries)
    assert _rejected_rows(found) == f.rejected
    bad = next(r for r in found.rejected if r.code == "bad_label")
    assert "'maybe'" in bad.message and "'Edema'" in bad.message
    ok = [s for s in found.samples if s.index not in {r.index for r in found.rejected}]
    assert len(ok) == 8
    for s in ok:
        patient = Path(s.path).parts[-3]
        np.testing.assert_array_equal(found.targets[s.index], f.targets[patient], err_msg=s.path)
    assert (found.targets[[s.index for s in ok]] == -1).any() == (uncertain == "ignore")
    frontal = read_labels(f.path, f.data, uncertain=uncertain, view="frontal")
    assert _rejected_rows(frontal) == {**f.rejected, 5: "filtered"}  # patient 3 (row 5) is the lateral view


def test_chexpert_paths_from_any_level(tmp_path: Path, kermany_dir: Path) -> None:
    f = chexpert_file(tmp_path, kermany_dir)
    above = read_labels(f.path, f.data.parent, format="chexpert")  # --data above the release folder
    inside = read_labels(f.path, f.data, format="chexpert")
    assert [s.path for s in above.samples][:8] == [s.path for s in inside.samples][:8]
    assert [r.code for r in above.rejected] == [r.code for r in inside.rejected]


def test_mimic_studies_expand_to_their_images(tmp_path: Path, kermany_dir: Path) -> None:
    f = mimic_file(tmp_path, kermany_dir, "zeros")
    assert detect_format(str(f.path)) == "mimic"
    found = read_labels(f.path, f.data, uncertain="zeros")
    _balanced(found, f.n_entries)
    assert _rejected_rows(found) == f.rejected
    ok = [s for s in found.samples if s.index not in {r.index for r in found.rejected}]
    assert len(ok) == 6  # studies of 1, 2, 1, 2 images
    assert [found.rows[s.index] for s in ok] == [2, 3, 3, 4, 5, 5]  # each image keeps its study's row
    for s in ok:
        np.testing.assert_array_equal(found.targets[s.index], f.targets[Path(s.path).parent.name])
    assert not (found.targets[[s.index for s in ok]] == -1).any()
    with pytest.raises(DataError, match="ViewPosition"):
        read_labels(f.path, f.data, view="frontal")


def _entries(found) -> list[tuple[str, str]]:
    """(image name, "ok" or the rejection code) of every entry, in index order."""
    codes = {r.index: r.code for r in found.rejected}
    return [(Path(s.path).stem, codes.get(s.index, "ok")) for s in found.samples]


def test_mimic_image_list_gives_each_study_its_images_and_views(tmp_path: Path, kermany_dir: Path) -> None:
    f = mimic_file(tmp_path, kermany_dir, "zeros")
    packed = f.path.with_suffix(".csv.gz")  # as the release ships it
    with gzip.open(packed, "wt") as fh:
        fh.write(f.path.read_text())
    f.path.unlink()
    assert detect_format(str(packed)) == "mimic"
    # without the list beside the label file, --view names the fix
    with pytest.raises(DataError, match="--label-metadata mimic-cxr-2.0.0-metadata.csv.gz"):
        read_labels(packed, f.data, view="frontal")
    listed = mimic_image_list(tmp_path / "elsewhere.csv.gz")
    found = read_labels(packed, f.data, uncertain="zeros", metadata=listed)  # every view; the list's images only
    assert found.label_metadata == str(listed)
    assert _entries(found) == [
        ("dicom00", "ok"),
        ("dicom01", "missing"),  # listed, not on disk
        ("dicom10", "ok"),
        ("dicom11", "ok"),
        ("dicom20", "ok"),
        ("dicom30", "ok"),
        ("dicom31", "ok"),
        ("s50000009", "missing"),  # the study has no rows in the list: one entry, its folder
        ("dicom80", "bad_label"),
    ]
    _balanced(found, 9)
    missing = next(r for r in found.rejected if r.path.endswith("s50000009"))
    assert "row 6: study files/p10/p10000009/s50000009 has no rows in elsewhere.csv.gz" in missing.message
    for s in found.samples:
        if Path(s.path).parent.name in f.targets and Path(s.path).exists():
            np.testing.assert_array_equal(found.targets[s.index], f.targets[Path(s.path).parent.name])

    # --view: the list beside the label file is found by itself; other views and blank ones are filtered out
    beside = mimic_image_list(packed.parent / "mimic-cxr-2.0.0-metadata.csv.gz")
    frontal = read_labels(packed, f.data, uncertain="zeros", view="frontal")
    assert frontal.label_metadata == str(beside)
    assert [e for e in _entries(frontal) if e[1] in ("ok", "filtered")] == [
        ("dicom00", "ok"),
        ("dicom10", "ok"),
        ("dicom11", "filtered"),
        ("dicom20", "ok"),
        ("dicom30", "filtered"),
        ("dicom31", "filtered"),
    ]
    lateral = read_labels(packed, f.data, uncertain="zeros", view="lateral")
    assert [n for n, code in _entries(lateral) if code == "ok"] == ["dicom11", "dicom30"]
    reason = next(r.message for r in frontal.rejected if r.path.endswith("dicom11.jpg"))
    assert reason.endswith("row 3: ViewPosition 'LATERAL' is not frontal (--view frontal)"), reason

    # a label file joined with the list beforehand (a dicom_id column, no ViewPosition) takes the views from it
    joined = tmp_path / "joined.csv"
    header, *rows = gzip.decompress(packed.read_bytes()).decode().splitlines()
    link(sample_images(kermany_dir)[0], f.data / "files/p10/p10000001/s50000001/dicom12.jpg")  # not in the list
    joined.write_text(f"dicom_id,{header}\ndicom10,{rows[1]}\ndicom11,{rows[1]}\ndicom12,{rows[1]}\n")
    by_image = read_labels(joined, f.data, format="mimic", uncertain="zeros", view="frontal", metadata=beside)
    assert _entries(by_image) == [("dicom10", "ok"), ("dicom11", "filtered"), ("dicom12", "filtered")]
    assert by_image.rejected[-1].message.endswith(
        "joined.csv row 4: dicom_id 'dicom12' has no row in mimic-cxr-2.0.0-metadata.csv.gz: its view is unknown "
        "(--view frontal)"
    )
    every_view = read_labels(joined, f.data, format="mimic", uncertain="zeros", metadata=beside)
    assert [code for _, code in _entries(every_view)] == ["ok", "ok", "ok"]


def test_mimic_image_list_errors_name_the_file_and_the_fix(tmp_path: Path, kermany_dir: Path) -> None:
    f = mimic_file(tmp_path, kermany_dir)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("dicom_id,study_id\nx,1\n")
    with pytest.raises(DataError, match=r"wrong.csv: not MIMIC-CXR-JPG's image list .*'subject_id', 'ViewPosition'"):
        read_labels(f.path, f.data, metadata=wrong)
    broken = tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz"
    broken.write_bytes(gzip.compress(b"dicom_id,subject_id,study_id,ViewPosition\n" * 50)[:40])  # cut short
    with pytest.raises(DataError, match="mimic-cxr-2.0.0-metadata.csv.gz: not a readable CSV image list"):
        read_labels(f.path, f.data, metadata=broken)
    with pytest.raises(DataError, match="nope.csv.gz: no such image list; pass --label-metadata FILE"):
        read_labels(f.path, f.data, metadata=tmp_path / "nope.csv.gz")
    nih = nih_file(tmp_path, kermany_dir)
    with pytest.raises(DataError, match="not a nih one; drop --label-metadata"):
        read_labels(nih.path, nih.data, metadata=wrong)


def test_csv_and_rsna_formats(tmp_path: Path, kermany_dir: Path) -> None:
    a, b, c = (p.relative_to(kermany_dir) for p in sample_images(kermany_dir)[:3])
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,opacity,effusion\n{a},1,0\n{b},-1,\n{c},1,x\nnone.png,0,1\n")
    found = read_labels(labels, kermany_dir, uncertain="ones")
    assert found.class_names == ("opacity", "effusion")
    np.testing.assert_array_equal(found.targets[:2], [[1, 0], [1, 0]])
    assert _rejected_rows(found) == {4: "bad_label", 5: "missing"}
    rsna = tmp_path / "stage_2_train_labels.csv"
    images = tmp_path / "rsna"
    images.mkdir()
    for pid in ("p1", "p2", "p3"):
        os.symlink(kermany_dir / a, images / f"{pid}.dcm")
    rsna.write_text(
        "patientId,x,y,width,height,Target\np1,,,,,0\np2,10,10,50,60,1\np2,100,10,50,60,1\np3,1,1,5,5,1\n"
        "p3,,,,,0\np4,,,,,0\n"
    )
    found = read_labels(rsna, images)
    assert found.class_names == RSNA_CLASSES and not found.multi_label
    assert [s.label for s in found.samples] == [0, 1, -1, -1]  # one entry per patient
    assert _rejected_rows(found) == {5: "bad_label", 7: "missing"}


def test_bad_label_files_name_the_fix(tmp_path: Path, kermany_dir: Path) -> None:
    odd = tmp_path / "odd.csv"
    odd.write_text("file,finding\na.png,1\n")
    with pytest.raises(DataError, match="--format"):
        read_labels(odd, kermany_dir)
    with pytest.raises(DataError, match="'Finding Labels'"):
        read_labels(odd, kermany_dir, format="nih")
    with pytest.raises(DataError, match="no such label file"):
        read_labels(tmp_path / "nope.csv", kermany_dir)
    with pytest.raises(DataError, match="uncertain"):
        read_labels(odd, kermany_dir, uncertain="maybe")


def test_nih_box_list_gives_boxes_per_finding(tmp_path: Path) -> None:
    from enhancer.explain.localisation import read_boxes

    path = tmp_path / "BBox_List_2017.csv"
    path.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000003_000.png,Infiltrate,100.5,200,50,60,,,\n"
        "00000003_000.png,Mass,10,20,30,40,,,\n"
        "00000003_000.png,Mass,1,2,3,4,,,\n"
    )
    table = read_boxes(path)
    assert table.per_finding and table.lookup("/x/00000003_000.png") == [
        (100.5, 200.0, 150.5, 260.0),
        (10.0, 20.0, 40.0, 60.0),
        (1.0, 2.0, 4.0, 6.0),
    ]
    boxes = table.class_batch(["/x/00000003_000.png", "/x/other.png"], ["Infiltration", "Mass", "Nodule"])
    assert boxes.shape == (2, 3, 2, 4)
    assert boxes[0, 0, 0].tolist() == [100.5, 200.0, 150.5, 260.0] and boxes[0, 0, 1].isnan().all()
    assert boxes[0, 1].tolist() == [[10.0, 20.0, 40.0, 60.0], [1.0, 2.0, 4.0, 6.0]]
    assert boxes[0, 2].isnan().all() and boxes[1].isnan().all()  # no Nodule box; an unlisted image
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h]\n00000003_000.png,Mass,10,20,0,40\n")
    with pytest.raises(ValueError, match="BBox_List_2017.csv:2: box .* is empty"):
        read_boxes(path)


def test_training_and_evaluation_join_the_image_list_too(tmp_path: Path, kermany_dir: Path) -> None:
    from enhancer.specs import EvaluateSpec, TrainSpec
    from enhancer.train.data import open_source
    from enhancer.train.loop import label_source

    f = mimic_file(tmp_path, kermany_dir, "zeros")
    listed = mimic_image_list(tmp_path / "images.csv.gz")
    common = {"data": str(f.data), "labels": str(f.path), "view": "frontal", "label_metadata": str(listed)}
    for spec in (TrainSpec(out=str(tmp_path / "run"), **common), EvaluateSpec(checkpoint="m.pt", **common)):
        source = open_source(f.data, split=None, labels=label_source(spec))
        assert sorted(Path(p).name for p in source.paths) == ["dicom00.jpg", "dicom10.jpg", "dicom20.jpg"]
        assert source.targets.shape == (3, len(OBSERVATIONS))


def test_label_files_name_each_images_patient(tmp_path: Path, kermany_dir: Path) -> None:
    nih = read_labels(nih_file(tmp_path, kermany_dir).path, kermany_dir)
    rejected = {r.index for r in nih.rejected}
    assert [nih.groups[s.index] for s in nih.samples if s.index not in rejected] == [str(i) for i in range(16)]
    assert all(nih.groups[i] == "" for i in rejected)  # a rejected entry belongs to nobody
    f = chexpert_file(tmp_path, kermany_dir)
    chexpert = read_labels(f.path, f.data)
    assert {
        chexpert.groups[s.index] for s in chexpert.samples if s.index not in {r.index for r in chexpert.rejected}
    } == {f"patient{i:05d}" for i in range(8)}
    m = mimic_file(tmp_path, kermany_dir, "zeros")
    mimic = read_labels(m.path, m.data, uncertain="zeros")
    ok = [s for s in mimic.samples if s.index not in {r.index for r in mimic.rejected}]
    assert [mimic.groups[s.index] for s in ok] == [
        "10000000",
        "10000001",
        "10000001",
        "10000002",
        "10000003",
        "10000003",
    ]
