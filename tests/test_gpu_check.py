"""`scripts/gpu-check.sh --cpu --quick`: the GPU check's code runs on the CPU in every test run, so it cannot rot, and
its JSON has every key of the GPU run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu(tmp_path, kermany_dir, demo_checkpoints) -> None:
    out = tmp_path / "gpu-check.json"
    # PYTHONPROFILEIMPORTTIME: every import the run makes goes to stderr, for the wheel-folder check below
    env = {**os.environ, "PYTHON": sys.executable, "ENHANCER_SAMPLES": str(kermany_dir), "PYTHONPROFILEIMPORTTIME": "1"}
    args = ["--cpu", "--quick", "--checkpoint", str(demo_checkpoints["tinyvgg"]), "--out", str(out), "--tmp"]
    proc = subprocess.run(
        [str(ROOT / "scripts" / "gpu-check.sh"), *args, str(tmp_path)], env=env, capture_output=True, text=True
    )
    errors = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("import time:"))
    assert proc.returncode == 0, proc.stdout[-3000:] + errors[-3000:]
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
    assert report["store_config"]["codecs"]["heatmap"] == "gzip1"  # the job's default codecs (store_bench's choice)
    assert report["store_config"]["write_threads"] >= 1
    _every_package_imported_comes_with_torch_or_the_wheel_folder(proc.stderr)


def _imported(stderr: str) -> set[str]:
    """The top-level modules named in a ``-X importtime`` log."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"^import time:.*\|\s*([\w.]+)\s*$", stderr, re.M)}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_with_torch() -> set[str]:
    """The top-level modules of torch, torchvision and every distribution they require (not extras): what a machine
    with torch and torchvision preinstalled has for sure."""
    dists: set[str] = set()
    todo = ["torch", "torchvision"]
    while todo:
        name = _norm(todo.pop())
        if name in dists:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:  # a requirement whose marker excludes this platform
            continue
        dists.add(name)
        todo += [re.split(r"[^\w.-]", r, maxsplit=1)[0] for r in requires if "extra ==" not in r]
    return {m for m, ds in metadata.packages_distributions().items() if any(_norm(d) in dists for d in ds)}


def _imported_by_our_code() -> set[str]:
    """Top-level names the package and the check import themselves (anywhere, lazily included)."""
    files = [*(ROOT / "enhancer").rglob("*.py"), ROOT / "scripts" / "gpu_check.py"]
    return {m for f in files for m in re.findall(r"^\s*(?:from|import)\s+(\w+)", f.read_text(), re.M)}


def _every_package_imported_comes_with_torch_or_the_wheel_folder(stderr: str) -> None:
    """A GPU machine has Python, torch and torchvision (and what they require) and nothing else: whatever else the
    run imported must be in gpu-check.sh's table of what it installs and among the wheels gpu-wheels.sh downloads.
    Optional imports of torch's own (optree, say) are torch's business unless our code imports them too."""
    plain_torch = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import torch, torchvision"], capture_output=True, text=True
    )
    torch_optional = _imported(plain_torch.stderr) - _imported_by_our_code()
    provided = _installed_with_torch() | torch_optional | set(sys.stdlib_module_names) | {"enhancer", "gpu_check"}
    needed = _imported(stderr) - provided
    check_sh = (ROOT / "scripts" / "gpu-check.sh").read_text()
    table = dict(re.findall(r'"(\w+)": "(\w+)"', check_sh[check_sh.index("needed = {") :].split("}")[0]))
    wheels = re.search(r"^PACKAGES=\((.*)\)$", (ROOT / "scripts" / "gpu-wheels.sh").read_text(), re.M)
    assert wheels is not None
    pinned = {item.split("==")[0] for item in wheels.group(1).split()}
    assert {"h5py", "isal", "tqdm"} <= needed, needed  # the log was read
    assert needed <= set(table), f"imported by the run but not installed by gpu-check.sh: {needed - set(table)}"
    assert set(table.values()) <= pinned, f"in gpu-check.sh's table but not downloaded: {set(table.values()) - pinned}"


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
