"""What every benchmark here shares: the machine line, the replicated sample dataset, peak memory.

Benchmarks run from the repository root, e.g. ``.venv/bin/python benchmarks/enhance_bench.py``; they import this
module as ``common`` (their own folder is on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path

import numpy as np
import torch
import torchvision

from enhancer.data import scan

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "shared/data/kermany-val"


def machine() -> str:
    """Host, CPU, cores, GPU (by name), load and library versions: printed with every figure."""
    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))  # fmt: skip
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    versions = [f"python {platform.python_version()}", f"torch {torch.__version__}",
                f"torchvision {torchvision.__version__}", f"numpy {np.__version__}"]  # fmt: skip
    try:
        import nvidia.dali

        versions.append(f"nvidia-dali {nvidia.dali.__version__}")
    except ImportError:
        pass
    return (
        f"machine: {platform.node()} {platform.system()} {platform.release()} {platform.machine()}; CPU {cpu}; "
        f"{os.cpu_count()} cores; torch threads {torch.get_num_threads()}; GPU {gpu}; "
        f"load average {os.getloadavg()[0]:.2f} (1 min, at start)\nversions: {', '.join(versions)}"
    )


def make_copies(src: Path, dst: Path, n: int) -> None:
    """An ImageFolder under ``dst`` with ``n`` symlinks cycling over the images of ``src``."""
    found = scan(src)
    for name in found.class_names:
        (dst / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        s = found.samples[i % len(found.samples)]
        os.symlink(s.path, dst / found.class_names[s.label] / f"{i:05d}_{os.path.basename(s.path)}")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
