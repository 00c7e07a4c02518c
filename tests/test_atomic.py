"""enhancer.atomic: a file is replaced whole or not at all, and no temporary outlives the write."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch

from enhancer.atomic import atomic_path, atomic_write, move_into_place


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_text("old\n")
    with atomic_write(target, encoding="utf-8", newline="") as f:
        f.write("new\r\n")
        assert target.read_text() == "old\n"  # readers see the old file until the block ends
    assert target.read_bytes() == b"new\r\n"  # newline="" writes line ends as given
    with atomic_write(target, "wb") as f:
        f.write(b"\x00\xff")
    assert target.read_bytes() == b"\x00\xff"
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_an_exception_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    target.write_text("epoch\n1\n")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_write(target) as f:
        f.write("epoch\n1\n2\n")
        f.flush()
        assert len(os.listdir(tmp_path)) == 2  # the temporary exists while writing
        raise RuntimeError("disk on fire")
    assert target.read_text() == "epoch\n1\n"
    assert os.listdir(tmp_path) == ["metrics.csv"]
    fresh = tmp_path / "new.csv"
    with pytest.raises(KeyboardInterrupt), atomic_write(fresh):
        raise KeyboardInterrupt
    assert not fresh.exists() and os.listdir(tmp_path) == ["metrics.csv"]


def test_atomic_path_for_writers_that_want_a_name(tmp_path: Path) -> None:
    target = tmp_path / "best.pt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.rsplit(".", 1)[0] == "best.pt"  # one suffix added, no dot in it
        torch.save({"w": torch.arange(3)}, tmp)
    assert torch.load(target, weights_only=True)["w"].tolist() == [0, 1, 2]
    # torch names the records after the file less its last suffix: the target's own name, whatever the temporary
    assert zipfile.ZipFile(target).namelist()[0] == "best.pt/data.pkl"
    before = target.read_bytes()
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a checkpoint")
        raise ValueError("stopped")
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["best.pt"]


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    with open(tmp_path / "plain", "w") as f:
        f.write("x")
    with atomic_write(tmp_path / "atomic") as f:
        f.write("x")
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode  # umask, not 0600


def test_move_into_place_and_bad_modes(tmp_path: Path) -> None:
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "a.jpeg").write_bytes(b"new")
    (tmp_path / "a.jpeg").write_bytes(b"old")
    move_into_place(tmp_path / "staging" / "a.jpeg", tmp_path / "a.jpeg", sync_dir=True)
    assert (tmp_path / "a.jpeg").read_bytes() == b"new" and os.listdir(tmp_path / "staging") == []
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"), atomic_write(tmp_path / "x", "a"):
        pass
    assert sorted(os.listdir(tmp_path)) == ["a.jpeg", "staging"]
