"""Shards written here (h5py with HDF5 2.x) must open in older HDF5: h5dump (Debian 12 ships 1.10) and an h5py
bundling HDF5 1.14 (``ENHANCER_H5PY114_PYTHON``, see tests/tools/read_with_h5py_114.py), with arrays equal. Covered:
the default codecs (raw planes, deflate chunks written directly by the writer's threads, chunks stored raw with the
filter masked off), every field gzip'ed, and JPEG planes (variable-length uint8: the readers get the JPEG bytes).

Both checks skip locally when their tool is missing (saying how to get it) and fail under ``CI=true``; ``make test``
installs both (apt ``hdf5-tools``; a venv with ``pip install h5py==3.14.0``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from enhancer.store import merge
from tests.tools.missing import missing, require_command
from tests.tools.read_with_h5py_114 import digest
from tests.tools.store_synth import write_dataset, write_shard

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, kermany_dir: Path, demo_checkpoints: dict) -> list[Path]:
    """Synthetic shards with every field, plus a shard the enhance job wrote from the real sample X-rays."""
    from enhancer.enhance import merge_enhanced, run_enhance
    from enhancer.specs import EnhanceSpec

    out = tmp_path_factory.mktemp("portable")
    write_dataset(out, 2, 6, rejected=(5,))
    merge(out)
    codecs = tmp_path_factory.mktemp("codecs")
    write_shard(codecs, 0, 2, [0, 2, 4], compression="gzip", write_threads=2)
    write_shard(codecs, 1, 2, [1, 3], codecs={"image": "jpeg95", "crop": "jpeg", "enhanced": "jpeg80"})
    job = tmp_path_factory.mktemp("job")
    spec = EnhanceSpec(data=str(kermany_dir), out=str(job), checkpoint=str(demo_checkpoints["tinyvgg"]))
    run_enhance(spec, progress=False)  # the default codecs, on real X-rays
    merge_enhanced(job)
    return sorted(out.glob("shard-*.h5")) + sorted(codecs.glob("shard-*.h5")) + sorted(job.glob("shard-*.h5"))


def _latest_format_file(path: Path) -> Path:
    # Control: a file these old readers must refuse, so a passing check means something.
    import h5py

    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset("x", data=np.zeros((2, 4), np.uint8), chunks=(1, 4), maxshape=(None, 4), compression="gzip")
    return path


def _digests(f) -> dict[str, str]:
    import h5py

    out: dict[str, str] = {}
    f.visititems(lambda name, obj: out.update({name: digest(obj)}) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_h5dump_reads_every_shard(shards: list[Path], tmp_path: Path) -> None:
    import h5py

    h5dump = require_command("h5dump", install="apt-get install hdf5-tools (`make test` does it as root on Debian)")
    version = subprocess.run([h5dump, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    for path in shards:
        res = subprocess.run([h5dump, str(path)], capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, f"{version} cannot read {path.name}:\n{res.stderr[-2000:]}"
        for name in ("enhanced", "cam", "crop_box", "path", "rejected", "complete", "n_samples", "codec"):
            assert f'"{name}"' in res.stdout, (version, name)
        assert "H5T_CSET_UTF8" in res.stdout
        with h5py.File(path, "r") as f:
            for name, ds in f.items():
                if not isinstance(ds, h5py.Dataset) or h5py.check_vlen_dtype(ds.dtype) is not None:
                    continue
                # The arrays h5dump decodes (deflate, raw, masked chunks) are byte for byte what h5py reads.
                binary = tmp_path / f"{path.stem}-{name}.bin"
                dumped = subprocess.run(
                    [h5dump, "-d", f"/{name}", "-b", "LE", "-o", str(binary), str(path)],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
                assert dumped.returncode == 0, (version, path.name, name, dumped.stderr[-500:])
                assert binary.read_bytes() == ds[()].astype(ds.dtype.newbyteorder("<")).tobytes(), (path.name, name)
            jpeg = [n for n, ds in f.items() if str(ds.attrs.get("codec", "")).startswith("jpeg")]
        for name in jpeg:  # JPEG planes: the file's bytes, starting with the JPEG marker FF D8 FF
            assert f'DATASET "{name}"' in res.stdout and "H5T_VLEN { H5T_STD_U8LE}" in res.stdout
            assert "(0): (255, 216, 255," in res.stdout
    control = subprocess.run(
        [h5dump, str(_latest_format_file(tmp_path / "latest.h5"))], capture_output=True, check=False
    )
    assert control.returncode != 0, f"{version} opened a libver='latest' file: this check proves nothing"


def test_h5py_with_hdf5_114_reads_every_shard(shards: list[Path], tmp_path: Path) -> None:
    python = os.environ.get("ENHANCER_H5PY114_PYTHON")
    if not python:
        missing("ENHANCER_H5PY114_PYTHON (an interpreter with h5py==3.14.0)", how="run the tests with `make test`")
    script = REPO / "tests" / "tools" / "read_with_h5py_114.py"
    res = subprocess.run(
        [python, str(script), *map(str, shards)], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["hdf5"].startswith("1.14.")
    import h5py

    for path in shards:
        theirs = report["files"][str(path)]
        with h5py.File(path, "r") as f:
            ours = _digests(f)
            assert {k: v["sha256"] for k, v in theirs["datasets"].items()} == ours
            assert theirs["attrs"]["complete"] is True
            assert theirs["attrs"]["n_samples"] == int(np.asarray(f.attrs["n_samples"]))
    control = subprocess.run(
        [python, str(script), str(_latest_format_file(tmp_path / "latest.h5"))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert control.returncode != 0, "HDF5 1.14 opened a libver='latest' file from HDF5 2.x: this check proves nothing"
