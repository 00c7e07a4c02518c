"""ShardWriter / AsyncShardWriter: roundtrip, validation, crash safety, disk full. Real h5py, tiny arrays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from enhancer.store import (
    FIELDS,
    SCHEMA_VERSION,
    AsyncShardWriter,
    ShardWriteError,
    ShardWriter,
    StoreError,
    is_complete,
    resolve_fields,
    shard_path,
    shard_status,
)
from enhancer.store.schema import decode_attrs
from tests.tools.store_synth import CLASS_NAMES, FIELDS_ALL, SHAPES_ALL, make_batch, write_shard

REPO = Path(__file__).resolve().parents[1]


def _run_child(code: str, *args: str, timeout: float = 60) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("compression", ["gzip", "lzf", "none"])
def test_roundtrip_every_field(tmp_path: Path, compression: str) -> None:
    attrs = {
        "class_names": CLASS_NAMES,
        "gradcam": {"target": "layer4", "eps": 1e-6},
        "seed": 3,
        "ok": True,
        "checkpoint_sha256": "ab" * 32,
        "scale": 0.5,
        "slurm": None,
    }
    batches = [make_batch(range(4)), make_batch(range(4, 9)), make_batch([])]
    with ShardWriter(
        tmp_path, 2, 4, fields=None, shapes=SHAPES_ALL, compression=compression, attrs=attrs, expected=10
    ) as w:
        for b in batches:
            w.write(b)
        w.add_rejected([{"index": 9, "path": "NORMAL/x.png", "code": "decode", "message": "truncated"}])
    path = shard_path(tmp_path, 2, 4)
    assert path.name == "shard-00002-of-00004.h5"
    assert sorted(os.listdir(tmp_path)) == [path.name]
    assert is_complete(path)
    want = {
        k: np.concatenate([np.asarray(b[k], dtype=object if k == "path" else None) for b in batches])
        for k in FIELDS_ALL
    }
    with h5py.File(path, "r") as f:
        for name in FIELDS_ALL:
            ds = f[name]
            assert ds.shape == (9, *SHAPES_ALL[name])
            assert ds.chunks == (1, *SHAPES_ALL[name])
            assert ds.maxshape == (None, *SHAPES_ALL[name])
            if name == "path":
                assert h5py.check_string_dtype(ds.dtype).encoding == "utf-8"
                assert [p.decode() for p in ds[:]] == list(want["path"])
            else:
                assert ds.dtype == np.dtype(FIELDS[name].dtype)
                np.testing.assert_array_equal(ds[:], want[name].astype(ds.dtype))
                assert ds.compression == (None if compression == "none" else compression)
        assert f["rejected/index"][:].tolist() == [9]
        assert f["rejected/code"][0].decode() == "decode"
        a = decode_attrs(f.attrs)
    assert a["complete"] is True and a["n_samples"] == 9 and a["n_rejected"] == 1 and a["expected"] == 10
    assert a["schema_version"] == SCHEMA_VERSION and (a["shard_id"], a["num_shards"]) == (2, 4)
    assert a["fields"] == list(FIELDS_ALL)
    for key, value in attrs.items():
        assert a[key] == value, key


def test_default_codecs(tmp_path: Path) -> None:
    path = write_shard(tmp_path, 0, 1, [0, 1])
    with h5py.File(path, "r") as f:
        # Measured (benchmarks/store_bench.py): X-ray planes stay raw, the smooth heatmap is deflated at level 1.
        assert (f["heatmap"].compression, f["heatmap"].compression_opts, f["heatmap"].shuffle) == ("gzip", 1, False)
        assert f["heatmap"].attrs["codec"] == "gzip1"
        for name in ("image", "crop", "enhanced", "cam", "prob", "index", "label"):
            assert (f[name].compression, f[name].attrs["codec"]) == (None, "none"), name
        assert f["path"].compression is None  # filters on vlen strings would only compress heap pointers


def test_field_selection_and_validation(tmp_path: Path) -> None:
    fields = resolve_fields("heatmap, enhanced")
    assert fields == ("index", "label", "pred", "prob", "path", "orig_size", "heatmap", "enhanced")
    with pytest.raises(StoreError, match="valid choices: image, cam"):
        resolve_fields(["heatmapp"])
    with pytest.raises(StoreError, match="no per-sample shape for field 'heatmap'"):
        ShardWriter(tmp_path, 0, 1, fields=fields, shapes={"prob": (3,)})
    with pytest.raises(StoreError, match="does not match the schema"):
        ShardWriter(tmp_path, 0, 1, fields=fields, shapes={**SHAPES_ALL, "enhanced": (3, 8, 8)})
    with pytest.raises(StoreError, match="unknown compression 'zstd'; valid choices: auto, gzip, lzf, none"):
        ShardWriter(tmp_path, 0, 1, shapes=SHAPES_ALL, compression="zstd")
    with pytest.raises(StoreError, match="reserved"):
        ShardWriter(tmp_path, 0, 1, shapes=SHAPES_ALL, attrs={"complete": True})
    with pytest.raises(StoreError, match="not JSON-serialisable"):
        ShardWriter(tmp_path, 0, 1, shapes=SHAPES_ALL, attrs={"x": {"a": object()}})
    with pytest.raises(StoreError, match="out of range"):
        shard_path(tmp_path, 4, 4)
    with ShardWriter(tmp_path, 0, 1, fields=fields, shapes=SHAPES_ALL) as w:
        with pytest.raises(StoreError, match="missing \\['enhanced'\\]"):
            w.write({k: v for k, v in make_batch([0], fields).items() if k != "enhanced"})
        bad = make_batch([0], fields)
        bad["heatmap"] = bad["heatmap"].astype(np.float32)
        with pytest.raises(StoreError, match="need uint8"):
            w.write(bad)
        bad = make_batch([0], fields)
        bad["label"] = np.array([70000])
        with pytest.raises(StoreError, match="do not fit int16"):
            w.write(bad)
        w.write(make_batch([0, 1], fields))
        with pytest.raises(StoreError, match="index \\[1\\] rejected more than once"):
            w.add_rejected([(1, "a", "b", "c")])
    assert is_complete(shard_path(tmp_path, 0, 1))


def test_expected_count_mismatch_is_not_complete(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="2 written \\+ 0 rejected = 2, expected 3"):
        write_shard(tmp_path, 0, 1, [0, 1], expected=3)
    assert os.listdir(tmp_path) == []


def test_exception_inside_context_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), ShardWriter(tmp_path, 1, 2, shapes=SHAPES_ALL) as w:
        w.write(make_batch([0, 1]))
        assert w.tmp_path.exists() and not w.path.exists()
        raise ZeroDivisionError("compute failed")
    assert os.listdir(tmp_path) == []
    assert shard_status(tmp_path, 2) == {0: "missing", 1: "missing"}


def test_rerun_rules(tmp_path: Path) -> None:
    path = write_shard(tmp_path, 0, 2, [0, 2])
    with pytest.raises(StoreError, match="already exists; skip complete shards"):
        write_shard(tmp_path, 0, 2, [0, 2])
    write_shard(tmp_path, 0, 2, [0, 2, 4], overwrite=True)
    with h5py.File(path, "r") as f:
        assert f.attrs["n_samples"] == 3
    # A left-over .tmp is incomplete, and entering the shard again replaces it.
    stale = shard_path(tmp_path, 1, 2).with_name("shard-00001-of-00002.h5.tmp")
    stale.write_bytes(b"half a file")
    assert shard_status(tmp_path, 2) == {0: "complete", 1: "incomplete"}
    assert not is_complete(stale)
    write_shard(tmp_path, 1, 2, [1, 3])
    assert shard_status(tmp_path, 2) == {0: "complete", 1: "complete"}
    assert not stale.exists()


def test_sigkill_while_writing_leaves_only_tmp_and_its_claim(tmp_path: Path, caplog) -> None:
    child = _run_child(
        """
        import sys
        from tests.tools.store_synth import SHAPES_ALL, make_batch
        from enhancer.store import ShardWriter
        with ShardWriter(sys.argv[1], 1, 3, shapes=SHAPES_ALL, flush_interval_s=0) as w:
            i = 0
            while True:
                w.write(make_batch(range(i, i + 4)))
                i += 4
                if i == 40:
                    print("writing", flush=True)
        """,
        str(tmp_path),
    )
    try:
        assert child.stdout.readline().strip() == "writing", child.stderr.read()
        time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert sorted(os.listdir(tmp_path)) == ["shard-00001-of-00003.h5.lock", "shard-00001-of-00003.h5.tmp"]
    assert shard_status(tmp_path, 3) == {0: "missing", 1: "incomplete", 2: "missing"}
    assert not is_complete(tmp_path / "shard-00001-of-00003.h5.tmp")
    with h5py.File(tmp_path / "shard-00001-of-00003.h5.tmp", "r") as f:  # flushed, readable, but not complete
        assert not f.attrs["complete"]
    with caplog.at_level("WARNING", logger="enhancer.store.claims"):
        write_shard(tmp_path, 1, 3, [1, 4])
    assert f"taking over the stale claim on shard-00001-of-00003.h5 of pid {child.pid} on host" in caplog.text
    assert os.listdir(tmp_path) == ["shard-00001-of-00003.h5"]
    assert shard_status(tmp_path, 3)[1] == "complete"


@pytest.mark.parametrize("flush_interval_s", [0.0, 3600.0])
def test_disk_full_names_the_shard_and_leaves_it_incomplete(tmp_path: Path, flush_interval_s: float) -> None:
    # RLIMIT_FSIZE makes write() fail with EFBIG (SIGXFSZ ignored), like a full disk, without mounting anything.
    # With a long flush interval the error only surfaces at close: it must still never be marked complete.
    child = _run_child(
        """
        import json, resource, signal, sys
        import numpy as np
        from tests.tools.store_synth import make_batch
        from enhancer.store import ShardWriter, per_sample_shapes, resolve_fields
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))
        fields = resolve_fields(["image"])
        rng = np.random.default_rng(0)
        result = {"batches": 0}
        try:
            with ShardWriter(sys.argv[1], 2, 3, fields=fields, shapes=per_sample_shapes(fields, H=64, W=64, C=3),
                             compression="none", flush_interval_s=float(sys.argv[2])) as w:
                for b in range(60):
                    batch = make_batch(range(8 * b, 8 * b + 8), fields)
                    batch["image"] = rng.integers(0, 256, (8, 1, 64, 64), dtype=np.uint8)  # incompressible
                    w.write(batch)
                    result["batches"] += 1
        except OSError as e:
            result.update(type=type(e).__name__, message=str(e), errno=e.errno, filename=e.filename)
        print(json.dumps(result))
        """,
        str(tmp_path),
        str(flush_interval_s),
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result.get("type") == "ShardWriteError", result
    assert "shard-00002-of-00003.h5.tmp" in result["message"]
    assert "NOT complete" in result["message"] and "--shard-id 2 --num-shards 3" in result["message"]
    assert result["errno"] == 27  # EFBIG, found in HDF5's message
    if flush_interval_s == 0:
        assert result["batches"] < 10  # stopped early, not at the end of the shard
    assert shard_status(tmp_path, 3)[2] != "complete"
    assert not (tmp_path / "shard-00002-of-00003.h5").exists()


def test_async_writer_roundtrip_and_order(tmp_path: Path) -> None:
    with AsyncShardWriter(tmp_path, 0, 1, shapes=SHAPES_ALL, maxsize=2, attrs={"class_names": CLASS_NAMES}) as w:
        for start in range(0, 40, 4):
            batch = make_batch(range(start, start + 4))
            w.put(batch)
            batch["image"][:] = 0  # the caller may reuse its buffers: put copied them
        w.add_rejected([(40, "a.png", "decode", "bad")])
    with h5py.File(w.path, "r") as f:
        assert f["index"][:].tolist() == list(range(40))
        np.testing.assert_array_equal(f["image"][4:8], make_batch(range(4, 8))["image"])
        assert f["rejected/index"][:].tolist() == [40]
    assert is_complete(w.path)


def test_async_writer_reraises_thread_error(tmp_path: Path) -> None:
    w = AsyncShardWriter(tmp_path, 0, 1, shapes=SHAPES_ALL)
    with pytest.raises(StoreError, match="do not fit int16"), w:
        bad = make_batch([0, 1])
        bad["label"] = np.array([1, 99999])
        w.put(bad)
        deadline = time.time() + 10
        while time.time() < deadline:  # the error shows up at a later put (or at close)
            w.put(make_batch([2]))
            time.sleep(0.01)
    assert os.listdir(tmp_path) == []


def test_async_writer_exception_in_caller_discards_shard(tmp_path: Path) -> None:
    with pytest.raises(KeyError), AsyncShardWriter(tmp_path, 0, 1, shapes=SHAPES_ALL, maxsize=1) as w:
        for start in range(0, 20, 2):
            w.put(make_batch(range(start, start + 2)))
        raise KeyError("compute failed")
    assert os.listdir(tmp_path) == []


def test_shard_write_error_is_oserror() -> None:
    e = ShardWriteError("cannot write shard file x.h5.tmp: full", 28, "x.h5.tmp")
    assert isinstance(e, OSError) and isinstance(e, StoreError)
    assert str(e) == "cannot write shard file x.h5.tmp: full" and e.errno == 28
