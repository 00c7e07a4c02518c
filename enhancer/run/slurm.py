"""Submitting job files to SLURM: sbatch command lines built from the job's ``[slurm]`` table, nothing site-specific.

Usage::

    enhancer submit jobs/enhance-kermany.toml --set slurm.partition=gpu --set slurm.account=radiology
    enhancer submit jobs/enhance-kermany.toml --shards 3,7        # resubmit the shards a failed run names
    enhancer submit jobs/enhance-kermany.toml --dry-run           # print the sbatch commands only

An enhance job becomes an array (one shard per task, ``slurm/enhance.sbatch``) and a merge job that runs only after
every task succeeded (``--dependency=afterok``, ``slurm/merge.sbatch``). The resolved spec is written to
``OUT/enhance-spec.toml`` first, so every task reads the same settings however the environment changes later.
The scripts get the environment to activate (``ENHANCER_SETUP``) and the Python to use (``ENHANCER_PYTHON``, when no
setup is given: the interpreter that submitted) through sbatch's exported environment.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from enhancer.atomic import atomic_write
from enhancer.specs import SpecError
from enhancer.store.layout import SPEC, slurm_log, spec_file

if TYPE_CHECKING:  # jobs.py calls into this module to submit: the types only, so that there is no import cycle
    from enhancer.run.jobs import Job, SlurmSpec

SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "slurm"  # the repository's slurm/ (editable install)


class SubmitError(RuntimeError):
    """sbatch refused a job; the message carries its answer and the command."""


@dataclass(frozen=True)
class Submitted:
    name: str  # "array", "merge", "train"
    job_id: str  # "" on a dry run
    command: list[str]
    log: str  # the log file pattern

    def shell(self) -> str:
        return shlex.join(self.command)


def resource_options(
    slurm: SlurmSpec, *, gpus: int | None = None, cpus: int | None = None, time: str | None = None
) -> list[str]:
    """The sbatch options every job of a spec shares; empty settings leave the cluster's defaults."""
    gpus = slurm.gpus_per_task if gpus is None else gpus
    opts = [
        f"--{name}={value}"
        for name, value in (
            ("partition", slurm.partition),
            ("account", slurm.account),
            ("qos", slurm.qos),
            ("mem", slurm.mem),
        )
        if value
    ]
    # none: clears the scripts' own "#SBATCH --gres=gpu:N" default for CPU-only jobs (merge, gloo training).
    opts.append(f"--gres=gpu:{slurm.gpu_type + ':' if slurm.gpu_type else ''}{gpus}" if gpus else "--gres=none")
    opts += [f"--cpus-per-task={cpus or slurm.cpus_per_task}", f"--time={time or slurm.time}"]
    return opts


def array_spec(num_shards: int, shards: Sequence[int] | None, throttle: int) -> str:
    """``0-99%20`` or ``3,7%20``."""
    if shards:
        bad = [s for s in shards if not 0 <= s < num_shards]
        if bad:
            raise SpecError(f"--shards: shard {bad[0]} is not in 0..{num_shards - 1} (num_shards = {num_shards})")
        body = ",".join(str(s) for s in sorted(set(shards)))
    else:
        body = f"0-{num_shards - 1}"
    return body + (f"%{throttle}" if throttle else "")


def script_env(job: Job, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The submitting environment plus what the scripts read (sbatch exports it into the job)."""
    env = dict(os.environ if environ is None else environ)
    if job.slurm.setup:
        env["ENHANCER_SETUP"] = job.slurm.setup
        env.pop("ENHANCER_PYTHON", None)  # the activated environment's python3
    else:
        env.pop("ENHANCER_SETUP", None)
        env["ENHANCER_PYTHON"] = sys.executable
    return env


def _sbatch(command: list[str], env: dict[str, str], dry_run: bool) -> str:
    if dry_run:
        return ""
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise SubmitError(
            "sbatch not found: run this on a SLURM login node (or start a local test cluster with "
            "scripts/slurm-local.sh start)"
        ) from None
    if proc.returncode != 0:
        raise SubmitError(
            f"sbatch refused the job ({proc.stderr.strip() or proc.stdout.strip()}); command: {shlex.join(command)}"
        )
    return proc.stdout.strip().split(";")[0]  # --parsable: "id" or "id;cluster"


def submit_enhance(
    job: Job,
    *,
    shards: Sequence[int] | None = None,
    dry_run: bool = False,
    scripts_dir: Path = SCRIPTS_DIR,
    environ: Mapping[str, str] | None = None,
) -> list[Submitted]:
    """The enhance array and its merge job; returns both with their ids."""
    spec, slurm = job.spec, job.slurm
    out = Path(spec.out).resolve()
    log_dir = job.log_dir.resolve()
    job_file = out / SPEC
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)  # sbatch does not create the log folder; a missing one loses logs
        with atomic_write(job_file) as f:
            f.write(job.resolved_toml())
    env = script_env(job, environ)
    env["ENHANCER_NUM_SHARDS"] = str(spec.num_shards)  # the spec's own setting; tasks of a partial resubmission
    name = f"enhance-{out.name}"
    array_log = str(log_dir / slurm_log("enhance", array=True))
    array = array_spec(spec.num_shards, shards, slurm.array_throttle)
    array_cmd = [
        "sbatch",
        "--parsable",
        f"--job-name={name}",
        f"--array={array}",
        f"--output={array_log}",
        "--open-mode=append",
        "--requeue",
        f"--signal=B:USR1@{slurm.signal_seconds}",
        "--ntasks=1",
        *resource_options(slurm),
        *slurm.extra,
        str(scripts_dir / "enhance.sbatch"),
        str(job_file),
    ]
    array_id = _sbatch(array_cmd, env, dry_run)
    merge_log = str(log_dir / slurm_log("merge"))
    merge_cmd = [
        "sbatch",
        "--parsable",
        f"--job-name=merge-{out.name}",
        f"--dependency=afterok:{array_id or '<array id>'}",
        "--kill-on-invalid-dep=yes",
        f"--output={merge_log}",
        "--ntasks=1",
        *resource_options(slurm, gpus=0, cpus=min(2, slurm.cpus_per_task), time=slurm.merge_time),
        *slurm.extra,
        str(scripts_dir / "merge.sbatch"),
        str(out),
    ]
    merge_id = _sbatch(merge_cmd, env, dry_run)
    return [Submitted("array", array_id, array_cmd, array_log), Submitted("merge", merge_id, merge_cmd, merge_log)]


def submit_torchrun(
    job: Job,
    *,
    dry_run: bool = False,
    scripts_dir: Path = SCRIPTS_DIR,
    environ: Mapping[str, str] | None = None,
    subcommand: str = "train",
) -> list[Submitted]:
    """A multi-node DDP job (``slurm/train.sbatch``): one torchrun per node, ``gpus_per_task`` processes each.

    For job kinds whose runner is ``enhancer <subcommand> --job FILE`` (training; register it with this)."""
    slurm = job.slurm
    out = job.output_dir.resolve()
    log_dir = job.log_dir.resolve()
    job_file = out / spec_file(subcommand)
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        job_file.write_text(job.resolved_toml())
    env = script_env(job, environ)
    env["ENHANCER_NPROC_PER_NODE"] = str(max(1, slurm.gpus_per_task))  # CPU-only: one process per node
    env["ENHANCER_SUBCOMMAND"] = subcommand
    log = str(log_dir / slurm_log(subcommand))
    cmd = [
        "sbatch",
        "--parsable",
        f"--job-name={subcommand}-{out.name}",
        f"--nodes={slurm.nodes}",
        "--ntasks-per-node=1",
        f"--output={log}",
        "--open-mode=append",
        "--requeue",
        f"--signal=B:USR1@{slurm.signal_seconds}",
        *resource_options(slurm),
        *slurm.extra,
        str(scripts_dir / "train.sbatch"),
        str(job_file),
    ]
    return [Submitted(subcommand, _sbatch(cmd, env, dry_run), cmd, log)]


def watch_lines(submitted: Sequence[Submitted]) -> list[str]:
    """What to tell the user after a submission: ids, how to watch, where the logs are, how to cancel."""
    ids = [s.job_id for s in submitted if s.job_id]
    lines = [
        f"submitted {s.name} job {s.job_id}: log {s.log}" if s.job_id else f"dry run: {s.name} job, log {s.log}"
        for s in submitted
    ]
    if ids:
        lines += [
            f"watch:   squeue -j {','.join(ids)}        (every 10 s: watch -n 10 squeue -j {','.join(ids)})",
            f"details: scontrol show job {ids[0]}      (kept for MinJobAge after the end)",
            f"cancel:  scancel {' '.join(ids)}",
        ]
    return lines
