"""Integrity you can locate: every shard stores a crc32 per sample and field; a byte flipped inside a stored chunk is
named by shard, sample and field in ``verify`` (and ``--repair-list`` names the shard to rerun) and in
``EnhancedDataset``."""

from __future__ import annotations

import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from enhancer.cli import main
from enhancer.store import EnhancedDataset, StoreError, merge, verify
from enhancer.store.checksums import CHECKSUMS, changed_rows, row_checksums, sample_bytes
from tests.tools.store_synth import FIELDS_ALL, write_shard


def flip_byte_in_chunk(path: Path, field: str, row: int) -> int:
    """Flip one bit of the middle byte of sample ``row``'s chunk of ``field``, found through h5py's chunk info;
    returns the file offset."""
    with h5py.File(path, "r") as f:
        ds = f[field]
        info = ds.id.get_chunk_info_by_coord((row,) + (0,) * (ds.ndim - 1))
    offset = info.byte_offset + info.size // 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x10]))
    return offset


@pytest.fixture(params=["none", "gzip", "lzf"])
def dataset(request, tmp_path: Path) -> Path:
    """Three shards of indices 0..9 round robin (3 and 7 rejected), every field, written with one codec."""
    out = tmp_path / request.param
    for k in range(3):
        mine = [i for i in range(10) if i % 3 == k]
        written, rejected = [i for i in mine if i not in (3, 7)], [i for i in mine if i in (3, 7)]
        write_shard(out, k, 3, written, rejected, compression=request.param)
    merge(out)
    return out


def test_every_field_has_one_checksum_per_sample(dataset: Path) -> None:
    for path in sorted(dataset.glob("shard-*.h5")):
        with h5py.File(path, "r") as f:
            for name in FIELDS_ALL:
                values = f[name][:]
                stored = f[CHECKSUMS][name][:]
                assert stored.dtype == np.uint32 and len(stored) == len(values)
                assert stored.tolist() == [zlib.crc32(sample_bytes(v)) for v in values], name
                assert changed_rows(values, stored) == []
    assert verify(dataset).ok


def test_checksums_cover_the_bytes_a_reader_gets() -> None:
    assert row_checksums(["NORMAL/a.png"]).tolist() == [zlib.crc32(b"NORMAL/a.png")]
    assert row_checksums([b"NORMAL/a.png"]).tolist() == [zlib.crc32(b"NORMAL/a.png")]
    planes = np.arange(24, dtype=np.uint8).reshape(2, 1, 3, 4)
    assert row_checksums(planes).tolist() == [zlib.crc32(p.tobytes()) for p in planes]
    assert row_checksums(np.array([3, -1], dtype=np.int16)).tolist() == [
        zlib.crc32(np.int16(3).tobytes()),
        zlib.crc32(np.int16(-1).tobytes()),
    ]


@pytest.mark.parametrize("field", ["enhanced", "heatmap", "cam", "prob"])
def test_a_flipped_byte_is_named_by_shard_sample_and_field(dataset: Path, field: str) -> None:
    shard = dataset / "shard-00001-of-00003.h5"  # indices 1, 4, 10 -> rows 0, 1, 2 (7 is rejected)
    flip_byte_in_chunk(shard, field, 1)
    report = verify(dataset)
    assert not report.ok and report.rerun == {1}
    named = [p for p in report.problems if f"shard-00001-of-00003.h5 sample 1 (index 4), field {field!r}" in p]
    assert len(named) == 1, report.problems
    assert "checksum mismatch" in named[0] or "unreadable" in named[0]

    result = CliRunner().invoke(main, ["verify", str(dataset)])
    assert result.exit_code == 1
    assert f"shard-00001-of-00003.h5 sample 1 (index 4), field {field!r}" in result.output

    ds = EnhancedDataset(dataset, fields=(field, "label"))
    assert ds.locate(4) == (1, 1)  # dataset item 4 is row 1 of the second shard
    with pytest.raises(StoreError, match=rf"shard-00001-of-00003.h5 sample 1 \(dataset item 4\), field '{field}'"):
        ds[4]
    for item in (0, 3, 5, 7):  # the other samples read fine
        ds[item]


def test_repair_list_prints_the_shard_ids_and_the_commands(dataset: Path) -> None:
    flip_byte_in_chunk(dataset / "shard-00002-of-00003.h5", "crop", 0)
    flip_byte_in_chunk(dataset / "shard-00000-of-00003.h5", "image", 2)
    result = CliRunner().invoke(main, ["verify", str(dataset), "--repair-list"])
    assert result.exit_code == 1
    assert result.stdout.split() == ["0", "2"]
    assert "2 shard(s) to rerun" in result.stderr
    assert f"rm -f {dataset}/shard-00000-of-00003.h5 {dataset}/shard-00002-of-00003.h5 {dataset}/manifest.json" in (
        result.stderr
    )
    assert "--num-shards 3 --shard-id 2" in result.stderr and f"enhancer merge {dataset}" in result.stderr


def test_a_clean_dataset_has_nothing_to_repair(dataset: Path) -> None:
    result = CliRunner().invoke(main, ["verify", str(dataset), "--repair-list"])
    assert result.exit_code == 0 and result.stdout == ""
    assert "ok" in result.stderr


def test_shards_without_checksums_still_verify(dataset: Path) -> None:
    for path in dataset.glob("shard-*.h5"):
        with h5py.File(path, "r+") as f:
            del f[CHECKSUMS]
    merge(dataset)  # new sha256s
    assert verify(dataset).ok
    assert len(EnhancedDataset(dataset, fields=("enhanced",))) == 8
