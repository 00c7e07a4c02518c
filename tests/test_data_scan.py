"""Scanning (folder and CSV) and sharding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enhancer.data import Sample, scan, scan_csv, scan_folder, shard


def test_scan_folder_real_images(kermany_dir: Path) -> None:
    found = scan(kermany_dir)
    assert found.class_names == ("NORMAL", "PNEUMONIA")
    assert len(found.samples) == 16  # ATTRIBUTION.md at the root is not in a class folder
    assert [s.index for s in found.samples] == list(range(16))
    assert [s.label for s in found.samples] == [0] * 8 + [1] * 8
    assert all(os.path.isabs(s.path) and s.path.endswith(".jpeg") for s in found.samples)
    names = [os.path.basename(s.path) for s in found.samples]
    assert names[:8] == sorted(names[:8]) and names[8:] == sorted(names[8:])
    assert scan(kermany_dir) == found  # deterministic


def test_scan_folder_hidden_nested_and_non_utf8(tmp_path: Path) -> None:
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a" / ".hidden" / "x").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    for rel in ["b/2.jpeg", "b/deep/1.jpeg", "a/z.png", "a/.DS_Store", "a/.hidden/x/skip.jpeg", ".git/skip.jpeg"]:
        (tmp_path / rel).write_bytes(b"x")
    raw = os.path.join(os.fsencode(tmp_path), b"a", b"caf\xe9.jpeg")  # latin-1 name, invalid UTF-8
    with open(raw, "wb") as fh:
        fh.write(b"x")
    found = scan_folder(tmp_path)
    assert found.class_names == ("a", "b")
    rel = [os.path.relpath(s.path, tmp_path) for s in found.samples]
    assert rel == ["a/caf\udce9.jpeg", "a/z.png", "b/2.jpeg", "b/deep/1.jpeg"]
    assert os.fsencode(found.samples[0].path) == raw
    assert [s.label for s in found.samples] == [0, 0, 1, 1]


def test_scan_csv_relative_names_and_ints(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,label\nimgs/b.png,PNEUMONIA\n/abs/a.png,NORMAL\nimgs/c.png,PNEUMONIA\n")
    found = scan(csv_path)
    assert found.class_names == ("NORMAL", "PNEUMONIA")
    assert found.samples == (
        Sample(0, str(tmp_path / "imgs/b.png"), 1),
        Sample(1, "/abs/a.png", 0),
        Sample(2, str(tmp_path / "imgs/c.png"), 1),
    )
    csv_path.write_text("path,label\nx.png,2\ny.png,0\n")
    found = scan_csv(csv_path)
    assert found.class_names == ("0", "1", "2") and [s.label for s in found.samples] == [2, 0]


@pytest.mark.parametrize("text", ["file,label\na.png,0\n", "path,label\na.png,0\nb.png,NORMAL\n"])
def test_scan_csv_errors(tmp_path: Path, text: str) -> None:
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(ValueError, match="l.csv"):
        scan_csv(tmp_path / "l.csv")


def test_scan_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        scan_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no class folders"):
        scan_folder(tmp_path)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="ImageFolder"):
        scan(tmp_path / "x.txt")


@pytest.mark.parametrize("n", [0, 1, 3, 16, 101])
def test_shard_covers_everything_exactly_once(n: int) -> None:
    samples = [Sample(i, f"/f{i}", i % 2) for i in range(n)]
    for num_shards in range(1, 8):
        parts = [shard(samples, k, num_shards) for k in range(num_shards)]
        assert [s for part in parts for s in part] == samples  # disjoint, complete, in order
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert parts == [shard(samples, k, num_shards) for k in range(num_shards)]  # deterministic


def test_shard_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="shard_id"):
        shard([], 3, 3)
    with pytest.raises(ValueError, match="num_shards"):
        shard([], 0, 0)
