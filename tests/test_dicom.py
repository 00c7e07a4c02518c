"""DICOM input: windowing, MONOCHROME1 inversion, validation, loader routing and the enhance job, on DICOM files
written here with pydicom and on the real chest radiograph of pydicom-data when it is installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from enhancer.cli import main
from enhancer.data import DataError, make_loader, scan, validate
from enhancer.data.decode import load_grey
from enhancer.data.dicom import window
from enhancer.enhance import merge_enhanced, run_enhance
from enhancer.preprocessing import Preprocessing
from enhancer.specs import EnhanceSpec
from enhancer.store import EnhancedDataset
from tests.tools.missing import missing


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    center: float | None = None,
    width: float | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    frames: int = 1,
) -> Path:
    """A minimal uncompressed single-channel 16-bit DICOM file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


RAMP = (np.arange(64 * 48).reshape(64, 48) % 4096).astype(np.uint16)


def test_window_follows_the_dicom_linear_definition():
    x = np.array([0.0, 99.0, 100.0, 150.0, 199.5, 200.0, 1000.0])
    # c = 150, w = 101: x <= 99.5 -> 0, x > 199.5 -> 1, else (x - 149.5) / 100 + 0.5
    np.testing.assert_allclose(window(x, 150, 101), [0, 0, 0.005, 0.505, 1.0, 1.0, 1.0], atol=1e-6)


def test_window_min_max_and_monochrome1_inversion(tmp_path):
    plain = np.asarray(load_grey(str(write_dicom(tmp_path / "a.dcm", RAMP))))
    want = np.rint((RAMP - RAMP.min()) / (RAMP.max() - RAMP.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(plain, want)  # no window: min-max
    inverted = np.asarray(load_grey(str(write_dicom(tmp_path / "b.dcm", RAMP, photometric="MONOCHROME1"))))
    np.testing.assert_array_equal(inverted.astype(int), 255 - plain.astype(int))
    windowed = np.asarray(
        load_grey(str(write_dicom(tmp_path / "c.dcm", RAMP, center=1000, width=1001, slope=2, intercept=-100)))
    )
    want = np.rint(window(RAMP * 2.0 - 100, 1000, 1001) * 255).astype(np.uint8)
    np.testing.assert_array_equal(windowed, want)
    assert windowed.dtype == np.uint8 and windowed.min() == 0 and windowed.max() == 255


def _folder(tmp_path: Path, kermany_dir: Path) -> Path:
    """ImageFolder with 2 JPEGs and 2 DICOMs per class (one DICOM MONOCHROME1)."""
    root = tmp_path / "mixed"
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        (root / name).mkdir(parents=True)
        for jpeg in sorted((kermany_dir / name).iterdir())[:2]:
            shutil.copy(jpeg, root / name / jpeg.name)
        rng = np.random.default_rng(label)
        body = rng.integers(500, 3500, size=(120, 100))
        write_dicom(root / name / f"{name}_m2.dcm", body, center=2000, width=3000)
        write_dicom(root / name / f"{name}_m1.DCM", 4095 - body, photometric="MONOCHROME1")
    return root


def test_validation_accepts_dicom_and_rejects_broken_and_multiframe_files(tmp_path, kermany_dir):
    root = _folder(tmp_path, kermany_dir)
    (root / "NORMAL" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    write_dicom(root / "NORMAL" / "cine.dcm", np.stack([RAMP, RAMP]), frames=2)
    shutil.copy(root / "NORMAL" / "NORMAL_m2.dcm", root / "NORMAL" / "no_suffix")
    for level in ("header", "full"):
        ok, rejected = validate(scan(root).samples, level=level)
        codes = {Path(r.path).name: r.code for r in rejected}
        assert codes == {"broken.dcm": "not_image", "cine.dcm": "unsupported", "no_suffix": "unsupported"}, level
        assert sum(s.path.lower().endswith(".dcm") for s in ok) == 4
    assert "rename it to *.dcm" in next(r.message for r in rejected if r.path.endswith("no_suffix"))


def test_auto_loader_picks_torch_for_dicom_and_dali_refuses_it(tmp_path, kermany_dir):
    samples = scan(_folder(tmp_path, kermany_dir)).samples
    loader = make_loader(samples, Preprocessing(size=(64, 64)), batch_size=4, loader="auto", num_threads=0)
    assert loader.name == "torch-cpu"
    batches = list(loader)
    assert sum(len(b) for b in batches) == 8 and not loader.rejected
    with pytest.raises(DataError, match=r"\.(dcm|DCM) and 3 more \.dcm file\(s\): loader 'dali' cannot decode DICOM"):
        make_loader(samples, Preprocessing(size=(64, 64)), loader="dali")


def test_enhance_with_the_dali_loader_on_dicom_exits_2_naming_the_file_and_the_fix(
    tmp_path, kermany_dir, demo_checkpoints
):
    root = _folder(tmp_path, kermany_dir)
    out = tmp_path / "enh"
    args = ["enhance", "--data", str(root), "--out", str(out), "--checkpoint", str(demo_checkpoints["tinyvgg"])]
    result = CliRunner().invoke(main, [*args, "--loader", "dali", "--num-threads", "0", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit
    dicoms = [str(p) for p in root.rglob("*") if p.suffix.lower() == ".dcm"]
    named = [
        p for p in dicoms if f"Error: {p} and 3 more .dcm file(s): loader 'dali' cannot decode DICOM" in result.output
    ]
    assert len(named) == 1, result.output
    assert "use --loader torch" in result.output and "or auto" in result.output
    assert not list(out.glob("shard-*")), "nothing is written when the loader is refused"


def test_dicom_samples_enter_the_enhanced_dataset(tmp_path, kermany_dir, demo_checkpoints):
    root = _folder(tmp_path, kermany_dir)
    out = tmp_path / "enh"
    run_enhance(
        EnhanceSpec(
            data=str(root),
            out=str(out),
            checkpoint=str(demo_checkpoints["tinyvgg"]),
            batch_size=4,
            num_threads=0,
            validate="full",
        ),
        progress=False,
    )
    m = merge_enhanced(out)
    assert (m.n_written, m.n_rejected) == (8, 0)
    ds = EnhancedDataset(out, fields=("path", "image", "orig_size"))
    by_name = {Path(ds[i]["path"]).name: ds[i] for i in range(len(ds))}
    m2, m1 = by_name["NORMAL_m2.dcm"], by_name["NORMAL_m1.DCM"]
    assert np.asarray(m2["orig_size"]).tolist() == [120, 100]
    # the MONOCHROME1 file holds the inverted values: after inversion it shows the same picture (up to the window)
    assert np.corrcoef(np.asarray(m1["image"]).ravel(), np.asarray(m2["image"]).ravel())[0, 1] > 0.9


def test_real_chest_radiograph_from_pydicom_data(tmp_path, demo_checkpoints):
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)  # CR chest PA, MONOCHROME1, 1955 x 1841, 15 bit
    if path is None:
        missing(
            "pydicom-data (a real chest radiograph)", how=".venv/bin/pip install pydicom-data==1.0.0 (or `make test`)"
        )
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BodyPartExamined == "CHEST"
    grey = np.asarray(load_grey(path))
    assert grey.shape == (1955, 1841) and grey.dtype == np.uint8
    raw = window(ds.pixel_array.astype(np.float64), float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_array_equal(grey, np.rint((1 - raw) * 255).astype(np.uint8))  # windowed, then inverted
    # inverted correctly, the spine and mediastinum (centre column) are brighter than the lung fields beside them
    h, w = grey.shape
    centre = grey[h // 3 : h // 2, w // 2 - 60 : w // 2 + 60].mean()
    lung = grey[h // 3 : h // 2, w // 4 - 60 : w // 4 + 60].mean()
    assert centre > lung + 20
    root = tmp_path / "real"
    (root / "NORMAL").mkdir(parents=True)
    shutil.copy(path, root / "NORMAL" / "RG1_UNCR.dcm")
    out = tmp_path / "enh"
    run_enhance(
        EnhanceSpec(data=str(root), out=str(out), checkpoint=str(demo_checkpoints["tinyvgg"]), num_threads=0),
        progress=False,
    )
    assert merge_enhanced(out).n_written == 1
    sample = EnhancedDataset(out, fields=("orig_size", "enhanced"))[0]
    assert np.asarray(sample["orig_size"]).tolist() == [1955, 1841] and np.asarray(sample["enhanced"]).any()
