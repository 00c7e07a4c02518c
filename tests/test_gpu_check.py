"""`scripts/gpu-check.sh --cpu --quick`: the GPU check's code runs on the CPU in every test run, so it cannot rot, and
its JSON has every key of the GPU run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu(tmp_path, kermany_dir, demo_checkpoints) -> None:
    out = tmp_path / "gpu-check.json"
    env = {**os.environ, "PYTHON": sys.executable, "ENHANCER_SAMPLES": str(kermany_dir)}
    args = ["--cpu", "--quick", "--checkpoint", str(demo_checkpoints["tinyvgg"]), "--out", str(out), "--tmp"]
    proc = subprocess.run(
        [str(ROOT / "scripts" / "gpu-check.sh"), *args, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert tuple(report) == gpu_check.KEYS  # the GPU run writes the same keys
    assert report["passed"] is True and report["device"] == "cpu" and report["samples"].startswith("the 16 real")
    statuses = {name: c["status"] for name, c in report["checks"].items()}
    for judged in ("all_images_written", "store_keeps_up", "head_vs_full_backward", "bf16_vs_fp32"):
        assert statuses.pop(judged) == "pass", report["checks"][judged]
    assert set(statuses.values()) == {"info"}  # speed and time goals are a GPU's
    assert report["head_vs_full_backward_max_abs"] <= 1e-3 and report["bf16_vs_fp32_correlation"] >= 0.95
    assert (
        report["enhance_images_per_s"] > 0
        and report["forward_images_per_s"] > 0
        and report["gpu_busy_fraction"] is None
    )
    assert "PASS  head_vs_full_backward" in proc.stdout


def test_judging_a_gpu_run() -> None:
    cfg = {"device": "cuda", "quick": False, "n": 4096}
    r = {
        "n_written": 4096,
        "enhance_images_per_s": 3500.0,
        "enhance_over_forward": 0.7,
        "gpu_busy_fraction": 0.95,
        "store_samples_per_s": 9000.0,
        "forward_images_per_s": 5000.0,
        "head_vs_full_backward_max_abs": 2e-4,
        "bf16_vs_fp32_correlation": 0.99,
        "seconds": 300.0,
    }
    checks = gpu_check.judge(r, cfg)
    assert {k: c["status"] for k, c in checks.items() if c["status"] != "pass"} == {"enhance_over_forward": "fail"}
    assert checks["enhance_over_forward"]["reason"] == "misses >= 0.8"
    assert gpu_check.judge({**r, "store_samples_per_s": 4000.0}, cfg)["store_keeps_up"]["status"] == "fail"
