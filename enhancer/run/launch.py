"""Several enhance processes on one machine without SLURM: one per GPU (or N on the CPU), each writing its own shards.

Usage::

    enhancer enhance --data val/ --checkpoint model.pth --out enhanced/ --workers 4     # 4 GPUs -> 4 shards
    enhancer merge enhanced/

Worker ``k`` of ``N`` writes shards ``k, k+N, k+2N, ...`` of ``num_shards`` (default ``N``), one
``python -m enhancer.cli enhance --job OUT/enhance-spec.toml --shard-id S`` process per shard, so every worker
is exactly what a SLURM array task runs and a rerun skips complete shards. With GPUs each worker sees one of them
(``CUDA_VISIBLE_DEVICES``); on the CPU the cores are split between the workers. Logs: ``OUT/logs/worker-K.log``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from enhancer.atomic import atomic_write
from enhancer.specs import EnhanceSpec, dump_toml, to_plain
from enhancer.store.layout import LOGS, SPEC, worker_log

STOP_GRACE_S = 30.0


class WorkerError(RuntimeError):
    """Some shards failed; the message names them, their logs and the command that reruns them."""


@dataclass
class _Worker:
    index: int
    shards: list[int]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    shard: int | None = None


def plan(num_shards: int, workers: int) -> list[list[int]]:
    """Shard ids per worker: worker k takes k, k+N, ... (round robin keeps the workers' loads even)."""
    return [list(range(k, num_shards, workers)) for k in range(workers)]


def visible_gpus(environ: Mapping[str, str]) -> list[str]:
    """The GPUs to spread workers over: ``CUDA_VISIBLE_DEVICES`` when set (as given), else every CUDA device."""
    given = environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_device(device: str, visible: int) -> str:
    """The device a worker that sees ``visible`` GPUs runs on: ``cuda:N`` names a GPU of the parent's numbering,
    which becomes a valid ordinal among the worker's own devices (``local_cuda_index``: ``cuda:0`` when it sees
    one); ``auto``, ``cuda`` and ``cpu`` stay as they are."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or not index:
        return device
    from enhancer.train.distributed import local_cuda_index

    return f"cuda:{local_cuda_index(int(index), visible)}"


def write_spec(spec: EnhanceSpec) -> Path:
    """The resolved spec every worker reads (absolute paths, so it does not depend on the working directory)."""
    values = to_plain(dataclasses.replace(spec, shard_id=0))
    for name in ("data", "out", "checkpoint"):
        if values.get(name):
            values[name] = os.path.abspath(values[name])
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SPEC
    with atomic_write(path) as f:  # readers never see half a file
        f.write(f"# Resolved by enhancer for `enhancer enhance --workers`\n{dump_toml('enhance', values)}\n")
    return path


def run_enhance_workers(
    spec: EnhanceSpec, workers: int, *, python: str = sys.executable, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Run every shard of ``spec`` in ``workers`` processes at a time; returns each shard's summary line.

    Raises ``WorkerError`` naming the failed shards after all others have finished."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    environ = dict(os.environ if environ is None else environ)
    gpus = visible_gpus(environ) if spec.device != "cpu" else []
    if gpus:  # each worker sees one GPU (CUDA_VISIBLE_DEVICES below)
        spec = dataclasses.replace(spec, device=worker_device(spec.device, 1))
    job_file = write_spec(spec)
    pool = _workers(spec, workers, environ)
    command = [
        python,
        "-m",
        "enhancer.cli",
        "enhance",
        "--job",
        str(job_file),
        "--num-shards",
        str(spec.num_shards),
        "--no-progress",
    ]
    lines, failed = _supervise(pool, command, spec.num_shards)
    if failed:
        detail = "; ".join(f"shard {s} (exit {rc}, log {log})" for s, rc, log in sorted(failed))
        reruns = " and ".join(f"--shard-id {s}" for s, _, _ in sorted(failed))
        raise WorkerError(
            f"{len(failed)} shard(s) failed: {detail}. Rerun them with `enhancer enhance --job "
            f"{job_file} {reruns}` or run the same command again (complete shards are skipped)"
        )
    return lines


def _workers(spec: EnhanceSpec, workers: int, environ: Mapping[str, str]) -> list[_Worker]:
    """The worker slots: their shards, environment (one GPU each, or a share of the cores) and log file."""
    log_dir = Path(spec.out) / LOGS
    log_dir.mkdir(exist_ok=True)
    gpus = visible_gpus(environ) if spec.device != "cpu" else []
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    pool = []
    for k, shards in enumerate(plan(spec.num_shards, workers)):
        env = dict(environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)]
        env.setdefault("OMP_NUM_THREADS", threads)  # N processes sharing the cores, not N x all cores
        pool.append(_Worker(k, shards, env, log_dir / worker_log(k)))
    return pool


def _supervise(
    pool: list[_Worker], command: list[str], num_shards: int
) -> tuple[list[str], list[tuple[int, int, Path]]]:
    """Start each worker's next shard whenever it is free, until every shard ran; returns the summary lines of the
    shards that succeeded and (shard, exit code, log) of those that failed. Stops every worker on an exception."""
    lines: list[str] = []
    failed: list[tuple[int, int, Path]] = []
    try:
        while any(w.shards or w.proc for w in pool):
            for w in pool:
                if w.proc is not None and w.proc.poll() is not None:
                    if w.proc.returncode == 0:
                        lines.append(_last_line(w.log))
                    else:
                        failed.append((w.shard, w.proc.returncode, w.log))
                    w.proc = w.shard = None
                if w.proc is None and w.shards:
                    w.shard = w.shards.pop(0)
                    with open(w.log, "a") as log:
                        log.write(f"== shard {w.shard} of {num_shards}\n")
                        log.flush()
                        w.proc = subprocess.Popen(
                            [*command, "--shard-id", str(w.shard)], env=w.env, stdout=log, stderr=subprocess.STDOUT
                        )
            time.sleep(0.1)
    except BaseException:
        _stop([w.proc for w in pool if w.proc is not None])
        raise
    return lines, failed


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else f"(no output in {log})"


def _stop(procs: list[subprocess.Popen]) -> None:
    """Ask the workers to stop cleanly (their shards are discarded, not completed), then kill what remains."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
