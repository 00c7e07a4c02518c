"""What every benchmark here shares: the machine line, the replicated sample dataset, peak memory.

Benchmarks run from the repository root, e.g. ``.venv/bin/python benchmarks/enhance_bench.py``; they import this
module as ``common`` (their own folder is on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
import torchvision

from enhancer.data import scan


def sample_data() -> Path:
    """The 16 real sample X-rays, as users get them (``enhancer fetch-samples``), kept in the user cache."""
    from enhancer.data.samples import cached_samples

    return cached_samples()


def machine() -> str:
    """Host, CPU, cores, GPU (by name), load and library versions: printed with every figure."""
    cpu = _cpu_name() or platform.processor() or "?"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    versions = [
        f"python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"torchvision {torchvision.__version__}",
        f"numpy {np.__version__}",
    ]
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


def _cpu_name() -> str | None:
    """The CPU's model name from /proc/cpuinfo, with its family and model numbers: a virtual machine often shows only
    the vendor's line ("AMD EPYC"), and the numbers tell the generation (family 25: Zen 3/4, family 26: Zen 5)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if name is None:
        return None
    numbers = [f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields]
    return f"{name} ({', '.join(numbers)})" if numbers else name


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


def own_peak_rss_mib() -> float:
    """Peak resident memory of this process image only (``VmHWM``). Unlike ``peak_rss_mib`` (``ru_maxrss``), it is
    not inherited: on Linux a child started by fork + exec reports its parent's high-water mark as its own
    ``ru_maxrss`` when that is larger, which hides the child's real figure."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mib()


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
            ppid = int(rest.rsplit(")", 1)[1].split()[1])  # the command name in (...) may hold spaces
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        parents.setdefault(ppid, []).append(int(pid))
    found, todo = [], [root]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class TreeMemory:
    """Context manager sampling the proportional set size (PSS: shared pages split among their users) of this
    process and all its descendants (DataLoader workers, validation pools); ``peak_mib`` is the largest sum seen.
    Forked workers share most of their parent's pages, so summing their RSS would count those pages several times;
    PSS counts each page once.

    Reading PSS is not free: the kernel walks every page table (~40 ms for a 1.5 GiB process, ~170 ms for 6 GiB on
    a 2-core VM), and at a fixed 0.5 s that slowed the measured jobs by ~5%, the largest ones most. So the sampler
    waits ``duty`` times its own last sample's cost between samples (at least ``interval`` seconds): it never takes
    more than ~1 / ``duty`` of one core, whatever the size of the process it watches."""

    def __init__(self, interval: float = 0.5, duty: float = 50.0) -> None:
        self.interval, self.duty, self.peak_mib = interval, duty, 0.0
        self.samples, self.sampling_s, self.last_s = 0, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)

    def sample(self) -> float:
        start = time.perf_counter()
        me = os.getpid()
        mib = sum(_pss_kib(pid) for pid in (me, *_descendants(me))) / 1024
        self.peak_mib = max(self.peak_mib, mib)
        self.last_s = time.perf_counter() - start
        self.samples += 1
        self.sampling_s += self.last_s
        return mib

    def _pause(self) -> float:
        return max(self.interval, self.duty * self.last_s)

    def _run(self) -> None:
        while not self._stop.wait(self._pause()):
            self.sample()

    def __enter__(self) -> Self:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def forward_only(
    data: Path, checkpoint: Path, *, batch_size: int, device: str, threads: int, loader: str = "auto", amp: bool = False
) -> tuple[int, float, str]:
    """The ceiling of any Grad-CAM job: the enhance job's loader feeding ``model(x)`` under ``inference_mode``,
    nothing stored. ``amp``: bf16 autocast + channels_last on CUDA, as the enhance job's ``amp``. Returns (images,
    seconds, loader name), timed from the checkpoint file to the last prediction on the host."""
    from enhancer.data import make_loader, scan
    from enhancer.models.checkpoints import load_checkpoint

    start = time.perf_counter()
    ck = load_checkpoint(checkpoint)
    model = ck.model.to(device).eval()
    on_cuda = device.startswith("cuda")
    if amp and on_cuda:
        model = model.to(memory_format=torch.channels_last)
    made = make_loader(
        list(scan(data).samples),
        ck.preprocessing,
        batch_size=batch_size,
        loader=loader,
        device=device,
        num_threads=threads,
    )
    n = 0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp and on_cuda else nullcontext()
    with torch.inference_mode(), autocast:
        for batch in made:
            x = batch.image.contiguous(memory_format=torch.channels_last) if amp and on_cuda else batch.image
            model(x).argmax(1).cpu()  # the host needs the predictions: this also waits for the device
            n += len(batch)
    return n, time.perf_counter() - start, made.name


RESULT_PREFIX = "BENCH_RESULT "


def emit_result(result: dict[str, Any]) -> None:
    """A worker's figures, as the last stdout line its parent reads (``run_worker``)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(script: Path, args: list[str]) -> dict[str, Any]:
    """Run ``script args`` in a fresh interpreter (so its peak RSS is its own) and return what it ``emit_result``-ed.
    The worker's stderr goes straight to ours; a failure raises with the tail of its stdout."""
    proc = subprocess.run([sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stdout.splitlines()[-20:])
        raise RuntimeError(f"benchmark worker {' '.join(args[:2])} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])
