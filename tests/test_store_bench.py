"""benchmarks/store_bench.py on a few samples: its JSON has the documented keys, every config reads back, and the
figures it reports are the shards' own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_store_bench_quick_run(tmp_path: Path, demo_checkpoints: dict[str, Path]) -> None:
    out = tmp_path / "store.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "store_bench.py"), "--n", "48", "--batch-size", "16"]
    cmd += ["--repeats", "1", "--threads", "1,2", "--configs", "default,gzip4,jpeg95"]
    cmd += ["--checkpoint", str(demo_checkpoints["tinyvgg"]), "--json", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["default"].startswith("default@") and "machine:" in report["machine"]
    names = [c["name"] for c in report["configs"]]
    assert names == ["default@1", "default@2", "gzip4@1", "gzip4@2", "jpeg95@1", "jpeg95@2"]
    for c in report["configs"]:
        assert {"name", "codecs", "threads", "samples_per_s", "bytes_per_sample", "readback_ok", "psnr_db"} <= set(c)
        assert c["readback_ok"] is True and c["samples_per_s"] > 0
    by = {c["name"]: c for c in report["configs"]}
    assert by["default@1"]["codecs"]["heatmap"] == "gzip1" and by["default@1"]["codecs"]["image"] == "none"
    assert by["jpeg95@1"]["codecs"]["image"] == "jpeg95" and by["jpeg95@1"]["psnr_db"] >= 40
    assert by["gzip4@1"]["psnr_db"] is None  # lossless: compared for equality instead
    # Smaller files where the codecs compress more: JPEG < deflate on everything < raw planes.
    assert by["jpeg95@1"]["bytes_per_sample"] < by["gzip4@1"]["bytes_per_sample"] < by["default@1"]["bytes_per_sample"]
    assert "| default | 1 |" in proc.stdout and "read back" in proc.stdout
