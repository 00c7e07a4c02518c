"""EnhancedDataset (DataLoader workers under fork and spawn), export_imagefolder, and the store's import rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from enhancer.store import EnhancedDataset, StoreError, export_imagefolder, merge
from tests.tools.store_synth import CLASS_NAMES, make_batch, write_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("enhanced")
    write_dataset(out, 3, 20, rejected=(4,))
    merge(out, expected_indices=range(20))
    return out


def test_samples_match_the_shards(dataset_dir: Path) -> None:
    ds = EnhancedDataset(dataset_dir, fields=("enhanced", "label", "path", "index", "prob", "crop_box"))
    assert len(ds) == 19 and ds.class_names == CLASS_NAMES
    indices = [int(ds[i]["index"]) for i in range(len(ds))]
    assert sorted(indices) == [i for i in range(20) if i != 4]
    for i in (0, 6, 7, 18, -1):
        s = ds[i]
        k = indices[i]
        want = make_batch([k])
        assert torch.equal(s["enhanced"], torch.from_numpy(want["enhanced"][0]))
        assert s["enhanced"].dtype == torch.uint8 and s["enhanced"].shape == (1, 8, 8)
        assert s["label"].dtype == torch.int16 and int(s["label"]) == k % 3
        assert s["path"] == want["path"][0] and isinstance(s["path"], str)
        assert s["prob"].dtype == torch.float32 and s["crop_box"].dtype == torch.int32
    assert ds.labels.tolist() == [k % 3 for k in indices]
    with pytest.raises(IndexError):
        ds[19]
    with pytest.raises(StoreError, match="not in .*; this dataset has: index, label"):
        EnhancedDataset(dataset_dir, fields=("enhancedd",))
    pair = EnhancedDataset(dataset_dir, transform=lambda s: (s["enhanced"].float() / 255, int(s["label"])))
    x, y = pair[0]
    assert x.dtype == torch.float32 and y == indices[0] % 3


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_see_every_sample_once(dataset_dir: Path, context: str) -> None:
    ds = EnhancedDataset(dataset_dir, fields=("index", "enhanced", "path"))
    ds[0]  # the parent has open handles now: forked workers must reopen theirs, spawn must not pickle them
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=context)
    for _epoch in range(2 if context == "fork" else 1):
        seen = [int(i) for batch in loader for i in batch["index"]]
        assert sorted(seen) == [i for i in range(20) if i != 4]
        assert len(seen) == len(set(seen)) == len(ds)
    ds.close()


def test_export_imagefolder(dataset_dir: Path, tmp_path: Path) -> None:
    n = export_imagefolder(dataset_dir, tmp_path / "png", field="enhanced")
    assert n == 19
    files = sorted(p.relative_to(tmp_path / "png").as_posix() for p in (tmp_path / "png").rglob("*.png"))
    assert len(files) == 19 and "COVID/img_0000.png" in files and "NORMAL/img_0001.png" in files
    assert not list((tmp_path / "png").rglob("*.tmp"))
    img = np.array(Image.open(tmp_path / "png" / "PNEUMONIA" / "img_0005.png"))
    np.testing.assert_array_equal(img, make_batch([5])["enhanced"][0, 0])
    with pytest.raises(StoreError, match="valid choices: enhanced, image, heatmap, crop"):
        export_imagefolder(dataset_dir, tmp_path / "x", field="prob")


def test_store_imports_no_torch_and_no_model_code() -> None:
    code = (
        "import sys, enhancer.store, enhancer.store.manifest, enhancer.store.verification; "
        "bad = [m for m in ('torch', 'enhancer.models.zoo', 'enhancer.explain.cam') if m in sys.modules]; "
        "from enhancer.store import dataset; "
        "bad += [m for m in ('enhancer.models.zoo', 'enhancer.explain.cam') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_only_the_store_imports_h5py() -> None:
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "enhancer").rglob("*.py")
        if "store" not in p.relative_to(REPO / "enhancer").parts
        and any(line.strip().startswith(("import h5py", "from h5py")) for line in p.read_text().splitlines())
    ]
    assert offenders == [], f"h5py must only be used through enhancer.store: {offenders}"
