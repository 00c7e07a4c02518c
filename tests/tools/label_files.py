"""Label files of the public multi-label datasets' formats, built over the 16 sample X-rays, with the rows that
must be rejected (a missing image, an unknown finding or value) and the targets the good rows mean.

Usage::

    files = nih_file(tmp_path, kermany_dir)     # LabelFile(path, data, rows, expected targets, rejected rows)
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from enhancer.data.labels import NIH_FINDINGS, OBSERVATIONS


@dataclass(frozen=True)
class LabelFile:
    path: Path  # the label file
    data: Path  # the --data folder its images are under
    n_entries: int
    targets: dict[str, np.ndarray]  # image file name -> expected targets of the accepted entries
    rejected: dict[int, str]  # row number -> rejection code


def sample_images(kermany_dir: Path) -> list[Path]:
    """The 16 sample X-rays, NORMAL first, sorted."""
    return sorted(kermany_dir.glob("NORMAL/*.jpeg")) + sorted(kermany_dir.glob("PNEUMONIA/*.jpeg"))


def nih_targets(*names: str) -> np.ndarray:
    t = np.zeros(len(NIH_FINDINGS), np.int8)
    for n in names:
        t[NIH_FINDINGS.index(n)] = 1
    return t


def nih_file(tmp: Path, kermany_dir: Path) -> LabelFile:
    """Data_Entry_2017.csv layout: every sample image once (|-joined findings, No Finding), plus a missing image and
    an unknown finding."""
    images = sample_images(kermany_dir)
    findings = [("No Finding",), ("Effusion",), ("Cardiomegaly", "Effusion"), ("Atelectasis", "Infiltration", "Mass")]
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
    targets, rejected = {}, {}
    for i, image in enumerate(images):
        names = ("Pneumonia", "Infiltration") if "PNEUMONIA" in image.parent.name and i % 2 else findings[i % 4]
        lines.append(f"{image.name},{'|'.join(names)},0,{i},50,M,PA")
        targets[image.name] = nih_targets(*[n for n in names if n != "No Finding"])
    lines.append("00099999_000.png,Effusion,0,99,40,F,PA")
    rejected[len(lines)] = "missing"
    lines.append(f"{images[0].name},Unicorn|Effusion,0,98,40,F,PA")
    rejected[len(lines)] = "bad_label"
    path = tmp / "Data_Entry_2017.csv"
    path.write_text("\n".join(lines) + "\n")
    return LabelFile(path, kermany_dir, len(lines) - 1, targets, rejected)


def nih_file_with_unknown_finding(tmp: Path, kermany_dir: Path) -> LabelFile:
    """Two rows: one good, one whose image exists but names a finding NIH does not have."""
    a, b = sample_images(kermany_dir)[:2]
    path = tmp / "Data_Entry_unknown.csv"
    path.write_text(f"Image Index,Finding Labels\n{a.name},Mass|Nodule\n{b.name},Cardiomegaly|Unicorn\n")
    return LabelFile(path, kermany_dir, 2, {a.name: nih_targets("Mass", "Nodule")}, {3: "bad_label"})


def _observation_row(i: int) -> list[str]:
    """14 cells cycling through 1.0, 0.0, -1.0 and blank, shifted per row."""
    cycle = ["1.0", "0.0", "-1.0", ""]
    return [cycle[(i + k) % 4] for k in range(len(OBSERVATIONS))]


def expected_observations(cells: list[str], uncertain: str) -> np.ndarray:
    value = {"1.0": 1, "0.0": 0, "": 0, "-1.0": {"ignore": -1, "zeros": 0, "ones": 1}[uncertain]}
    return np.array([value[c] for c in cells], np.int8)


def link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dest)


def chexpert_file(tmp: Path, kermany_dir: Path, uncertain: str = "ignore") -> LabelFile:
    """CheXpert layout (CheXpert-v1.0-small/train/patientNNNNN/study1/view1_frontal.jpg): 8 frontal images, one
    lateral, a missing image and a cell that is not 1 / 0 / -1 / blank. ``--data`` is the release folder."""
    images = sample_images(kermany_dir)[::2]
    root = tmp / "chexpert"
    lines = ["Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(OBSERVATIONS)]
    targets, rejected = {}, {}
    for i, image in enumerate(images):
        rel = f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_{'lateral' if i == 3 else 'frontal'}.jpg"
        link(image, root / rel)
        cells = _observation_row(i)
        lines.append(f"{rel},Male,60,{'Lateral' if i == 3 else 'Frontal'},{'' if i == 3 else 'AP'}," + ",".join(cells))
        targets[f"patient{i:05d}"] = expected_observations(cells, uncertain)
    lines.append(
        "CheXpert-v1.0-small/train/patient09999/study1/view1_frontal.jpg,Female,30,Frontal,PA," + ",".join(["0.0"] * 14)
    )
    rejected[len(lines)] = "missing"
    bad = _observation_row(0)
    bad[5] = "maybe"
    link(images[0], root / "CheXpert-v1.0-small/train/patient08888/study1/view1_frontal.jpg")
    lines.append(
        "CheXpert-v1.0-small/train/patient08888/study1/view1_frontal.jpg,Female,30,Frontal,PA," + ",".join(bad)
    )
    rejected[len(lines)] = "bad_label"
    path = root / "CheXpert-v1.0-small" / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    return LabelFile(path, root / "CheXpert-v1.0-small", len(lines) - 1, targets, rejected)


def mimic_file(tmp: Path, kermany_dir: Path, uncertain: str = "ignore") -> LabelFile:
    """mimic-cxr-2.0.0-chexpert.csv layout: one row per study; studies hold one or two JPEGs under
    files/pXX/pSUBJECT/sSTUDY/; one study folder is missing, one row has an unknown value."""
    images = sample_images(kermany_dir)[1::2]
    root = tmp / "mimic"
    lines = ["subject_id,study_id," + ",".join(OBSERVATIONS)]
    targets, rejected, n_entries = {}, {}, 0
    for i in range(4):
        subject, study = f"1000000{i}", f"5000000{i}"
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        for j, image in enumerate(images[2 * i : 2 * i + (2 if i % 2 else 1)]):
            link(image, folder / f"dicom{i}{j}.jpg")
            n_entries += 1
        cells = _observation_row(i + 1)
        lines.append(f"{subject},{study}," + ",".join(cells))
        targets[f"s{study}"] = expected_observations(cells, uncertain)
    lines.append("10000009,50000009," + ",".join(["1.0"] * 14))
    rejected[len(lines)] = "missing"
    bad = _observation_row(0)
    bad[0] = "2"
    link(images[-1], root / "files/p10/p10000008/s50000008/dicom80.jpg")
    lines.append("10000008,50000008," + ",".join(bad))
    rejected[len(lines)] = "bad_label"
    path = root / "mimic-cxr-2.0.0-chexpert.csv"
    path.write_text("\n".join(lines) + "\n")
    return LabelFile(path, root, n_entries + 2, targets, rejected)


def mimic_image_list(path: Path) -> Path:
    """mimic-cxr-2.0.0-metadata.csv.gz over ``mimic_file``'s studies: every JPEG with a view (PA, AP, LATERAL, PA,
    LL, blank, PA), plus dicom01, listed in study 0 but not on disk; no rows for the missing study 50000009."""
    rows = [
        ("dicom00", "10000000", "50000000", "PA"),
        ("dicom01", "10000000", "50000000", "PA"),
        ("dicom10", "10000001", "50000001", "AP"),
        ("dicom11", "10000001", "50000001", "LATERAL"),
        ("dicom20", "10000002", "50000002", "PA"),
        ("dicom30", "10000003", "50000003", "LL"),
        ("dicom31", "10000003", "50000003", ""),
        ("dicom80", "10000008", "50000008", "PA"),
    ]
    text = "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns\n"
    text += "".join(f"{d},{s},{t},CHEST (PA AND LAT),{v},3056,2544\n" for d, s, t, v in rows)
    with gzip.open(path, "wt") as fh:
        fh.write(text)
    return path
