"""merge (manifest.json, rejected.csv, README.md) and verify on small synthetic shards."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from enhancer.store import SCHEMA_VERSION, Manifest, StoreError, merge, shard_path, verify
from tests.tools.store_synth import CLASS_NAMES, FIELDS_ALL, write_dataset, write_shard


def test_merge_three_shards(tmp_path: Path) -> None:
    expected = write_dataset(tmp_path, 3, 10, rejected=(3, 7))
    m = merge(tmp_path, expected_indices=expected)
    assert (m.num_shards, m.n_in, m.n_written, m.n_rejected) == (3, 10, 8, 2)
    assert [s.n_samples for s in m.shards] == [3, 2, 3]  # shard 0: 0,6,9 (+3 rejected); 1: 1,4 (+7); 2: 2,5,8
    assert [s.offset for s in m.shards] == [0, 3, 5]
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION and on_disk["num_shards"] == 3
    assert Manifest.load(tmp_path) == m
    for s in on_disk["shards"]:
        path = tmp_path / s["file"]
        assert s["size"] == path.stat().st_size and len(s["sha256"]) == 64
        assert s["attrs"] == {"slurm_task": s["shard_id"]}  # per-shard provenance stays per shard
    assert on_disk["provenance"] == {"architecture": "resnet101", "class_names": CLASS_NAMES}
    assert on_disk["class_names"] == CLASS_NAMES
    assert list(on_disk["fields"]) == list(FIELDS_ALL)
    assert on_disk["fields"]["enhanced"]["shape"] == [None, 1, 8, 8] and on_disk["fields"]["label"]["dtype"] == "int16"
    assert on_disk["filters"] == {
        name: "gzip1" if name == "heatmap" else "none" for name in FIELDS_ALL if name != "path"
    }
    assert on_disk["fields"]["heatmap"]["codec"] == "gzip1" and on_disk["fields"]["path"]["codec"] == "none"
    written = [i for i in range(10) if i not in (3, 7)]
    assert sum(on_disk["class_counts"]["label"].values()) == 8
    assert on_disk["class_counts"]["label"] == {
        name: sum(1 for i in written if i % 3 == k) for k, name in enumerate(CLASS_NAMES)
    }
    assert on_disk["rejected_codes"] == {"decode": 2}
    with open(tmp_path / "rejected.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["index", "path", "code", "message"],
        ["3", "NORMAL/bad_3.png", "decode", "cannot decode bad_3.png"],
        ["7", "NORMAL/bad_7.png", "decode", "cannot decode bad_7.png"],
    ]
    card = (tmp_path / "README.md").read_text()
    for text in (
        "inputs: 10; written: 8; rejected: 2",
        "| COVID |",
        "`crop_box`",
        "EnhancedDataset",
        "h5py.File",
        "resnet101",
        "per shard (see `manifest.json`): slurm_task",
    ):
        assert text in card, text
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    # Offsets map global sample order to shard rows.
    with h5py.File(shard_path(tmp_path, 1, 3), "r") as f:
        assert f["index"][0] == 1
    assert m.offsets.tolist() == [0, 3, 5, 8]


def test_merge_names_missing_and_incomplete_shards(tmp_path: Path) -> None:
    write_shard(tmp_path, 0, 4, [0, 4])
    write_shard(tmp_path, 2, 4, [2, 6])
    (tmp_path / "shard-00003-of-00004.h5.tmp").write_bytes(b"killed mid-write")
    with pytest.raises(StoreError) as e:
        merge(tmp_path)
    msg = str(e.value)
    assert "shards 1, 3 of 4 are missing or incomplete" in msg
    assert "rerun them with --shard-id 1 and --shard-id 3 (--num-shards 4)" in msg
    assert not (tmp_path / "manifest.json").exists()


def test_merge_rejects_duplicates_and_foreign_layouts(tmp_path: Path) -> None:
    write_shard(tmp_path, 0, 2, [0, 1, 2])
    write_shard(tmp_path, 1, 2, [2, 3])
    with pytest.raises(
        StoreError, match=r"sample index written more than once: 2 \(shards holding them: \{2: \[0, 1\]\}"
    ):
        merge(tmp_path)
    other = tmp_path / "other"
    write_shard(other, 0, 1, [0])
    write_shard(other, 0, 2, [1])
    with pytest.raises(StoreError, match=r"mixes shards of different --num-shards \[1, 2\]"):
        merge(other)
    with pytest.raises(StoreError, match=r"holds shards of a dataset with --num-shards \[2\], not 1"):
        merge(other, num_shards=1)
    foreign = tmp_path / "foreign"
    write_shard(foreign, 0, 1, [0])
    with h5py.File(foreign / "data.h5", "w"):
        pass
    with pytest.raises(StoreError, match="not enhancer shards \\(data.h5\\)"):
        merge(foreign)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StoreError, match="no shard files"):
        merge(empty)


def test_merge_checks_expected_indices(tmp_path: Path) -> None:
    write_dataset(tmp_path, 2, 6, rejected=(1,))
    with pytest.raises(StoreError, match=r"missing indices 6, 7 \(neither written nor rejected\)"):
        merge(tmp_path, expected_indices=range(8))
    with pytest.raises(StoreError, match=r"unexpected indices 5"):
        merge(tmp_path, expected_indices=range(5))
    assert merge(tmp_path, expected_indices=range(6)).n_in == 6


def test_merge_all_rejected_shard_and_field_mismatch(tmp_path: Path) -> None:
    write_shard(tmp_path, 0, 2, [0, 2])
    write_shard(tmp_path, 1, 2, [], rejected=[1, 3])
    m = merge(tmp_path, expected_indices=range(4))
    assert [s.n_samples for s in m.shards] == [2, 0] and m.n_rejected == 2
    assert verify(tmp_path).ok
    odd = tmp_path / "odd"
    write_shard(odd, 0, 2, [0])
    write_shard(odd, 1, 2, [1], fields=("index", "label", "pred", "prob", "path", "orig_size", "heatmap"))
    with pytest.raises(StoreError, match="all shards must come from one job spec"):
        merge(odd)


def test_verify_ok_and_detects_corruption(tmp_path: Path) -> None:
    write_dataset(tmp_path, 3, 12)
    merge(tmp_path)
    report = verify(tmp_path)
    assert report.ok, report.problems
    assert (report.n_shards, report.n_samples) == (3, 10)
    # Flip bytes in the middle of a shard: the checksum must catch it whatever else still reads.
    path = shard_path(tmp_path, 1, 3)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))
    report = verify(tmp_path)
    assert not report.ok
    assert any("shard-00001-of-00003.h5: sha256" in p and "rerun shard 1" in p for p in report.problems), (
        report.problems
    )
    with pytest.raises(StoreError, match="failed verification"):
        report.raise_if_failed()


def test_verify_detects_invariant_violations(tmp_path: Path) -> None:
    write_dataset(tmp_path, 1, 6, rejected=())
    merge(tmp_path)
    path = shard_path(tmp_path, 0, 1)
    with h5py.File(path, "r+") as f:
        f["prob"][0] = np.array([0.5, 0.4, 0.3], dtype=np.float32)
        f["pred"][1] = (int(np.argmax(f["prob"][1])) + 1) % 3
        f["crop_box"][2] = np.array([10, 10, 5, 12], dtype=np.int32)
        f["cam"][3] = np.full((2, 2), np.nan, dtype=np.float32)
        f["index"][4] = f["index"][5]
    problems = verify(tmp_path).problems
    text = "\n".join(problems)
    assert "sha256" in text  # edited after merge
    assert "row 0: prob sums to 1.2" in text
    assert "row 1: pred" in text and "argmax" in text
    assert "row 2: crop_box [10, 10, 5, 12]" in text
    assert "row 3: cam contains NaN" in text
    assert "duplicate sample indices [5]" in text


def test_verify_without_manifest(tmp_path: Path) -> None:
    write_dataset(tmp_path, 1, 2, rejected=())
    report = verify(tmp_path)
    assert not report.ok and "run merge on it first" in report.problems[0]
