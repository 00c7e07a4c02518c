"""Job files: which job kind a TOML file describes, its validated spec, its SLURM resources, and running it locally.

Usage::

    job = load_job("jobs/enhance-kermany.toml", overrides={"batch_size": 16, "slurm.partition": "gpu"})
    for line in run_job(job, RunContext(workers=2)):
        print(line)

A job file holds exactly one job table (``[enhance]``, ``[train]``, ``[cycle]``: whatever is registered with
``register_job``) and optionally a ``[slurm]`` table of resources (``SlurmSpec``). Both go through
``enhancer.specs.load_spec``, so one precedence rule holds: command line (``--set key=value``; ``slurm.<key>`` for
the resources) > ``ENHANCER_*`` environment (``ENHANCER_SLURM__PARTITION`` for the resources) > job file > defaults.

Library code here never reads ``SLURM_*`` variables: the command line passes SLURM's ids in ``RunContext``.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import signal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enhancer.specs import (
    CycleSpec,
    EnhanceSpec,
    SpecError,
    TrainSpec,
    dump_toml,
    load_spec,
    read_job_file,
    to_plain,
)
from enhancer.stopping import Preempted as Preempted  # re-exported: where the command line catches it
from enhancer.stopping import request_stop
from enhancer.store.layout import LOGS

SLURM_TABLE = "slurm"
SLURM_ENV_PREFIX = "ENHANCER_SLURM__"
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # SLURM's --time forms: MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]


@dataclass(frozen=True)
class SlurmSpec:
    """Resources of a job on a SLURM cluster (the ``[slurm]`` table). Empty strings mean "the cluster's default"."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    gpus_per_task: int = 1  # GPUs per array task / per training node; 0: CPU-only jobs (no --gres)
    gpu_type: str = ""  # e.g. "a100": --gres=gpu:a100:1; empty: any GPU
    cpus_per_task: int = 8  # the loader's decode threads plus the main process
    mem: str = ""  # e.g. "32G" per task; empty: the partition's DefMemPerCPU
    time: str = "04:00:00"  # per array task (enhance) or for the whole run (train)
    array_throttle: int = 0  # at most this many array tasks at once (sbatch --array=...%M); 0: no limit
    signal_seconds: int = 300  # USR1 this long before the time limit: the task stops cleanly and requeues itself
    nodes: int = 1  # training: nodes, one torchrun launcher per node
    setup: str = ""  # shell line run first in every job, e.g. "source /shared/venvs/enhancer/bin/activate"
    log_dir: str = ""  # per-task logs (shared storage, not /tmp); empty: logs/ inside the job's output directory
    merge_time: str = "00:30:00"  # time limit of the merge job
    extra: tuple[str, ...] = ()  # further sbatch options, e.g. ["--constraint=a100", "--exclude=node12"]

    def __post_init__(self) -> None:
        for name in ("gpus_per_task", "array_throttle", "signal_seconds"):
            if getattr(self, name) < 0:
                raise SpecError(f"slurm.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("cpus_per_task", "nodes"):
            if getattr(self, name) < 1:
                raise SpecError(f"slurm.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("time", "merge_time"):
            if not _TIME.match(getattr(self, name)):
                raise SpecError(
                    f"slurm.{name} = {getattr(self, name)!r} is not a SLURM time (e.g. 04:00:00, 1-12:00:00)"
                )
        if self.mem and not re.match(r"^\d+[KMGT]?$", self.mem):
            raise SpecError(f"slurm.mem = {self.mem!r} is not a SLURM memory size (e.g. 32G, 16000M)")
        bad = [x for x in self.extra if not x.startswith("-")]
        if bad:
            raise SpecError(f"slurm.extra items must be sbatch options starting with '-', got {bad[0]!r}")


@dataclass(frozen=True)
class RunContext:
    """How ``run_job`` runs a job on this machine."""

    workers: int = 1  # processes (one per GPU when there are GPUs)
    progress: bool = False
    on_line: Callable[[str], None] | None = None  # progress lines of long jobs (epochs, rounds) as they happen
    extra_attrs: dict[str, Any] = field(default_factory=dict)  # provenance from the edge (SLURM ids)


@dataclass(frozen=True)
class JobKind:
    """A registered job table: its spec class, how to run it locally, which fields name files."""

    table: str
    spec_cls: type
    run: Callable[[Any, RunContext], list[str]]  # returns the lines to print
    output_field: str = "out"  # the directory that receives the resolved spec and, by default, the SLURM logs
    path_fields: tuple[str, ...] = ()  # made absolute when a resolved spec is written (jobs run elsewhere)
    submit: Callable[..., list[Any]] | None = None  # (job, *, dry_run, **options) -> the submitted SLURM jobs


JOB_KINDS: dict[str, JobKind] = {}


def register_job(kind: JobKind) -> JobKind:
    """Make ``[kind.table]`` job files runnable by ``enhancer run`` and ``enhancer submit``."""
    if kind.table == SLURM_TABLE or kind.table in JOB_KINDS:
        raise ValueError(f"job table [{kind.table}] is already taken")
    JOB_KINDS[kind.table] = kind
    return kind


@dataclass(frozen=True)
class Job:
    """A validated job file: the job kind, its resolved spec and its SLURM resources."""

    path: str
    kind: JobKind
    spec: Any
    slurm: SlurmSpec

    @property
    def output_dir(self) -> Path:
        return Path(getattr(self.spec, self.kind.output_field))

    @property
    def log_dir(self) -> Path:
        return Path(self.slurm.log_dir) if self.slurm.log_dir else self.output_dir / LOGS

    def resolved_toml(self) -> str:
        """The job as run: every setting explicit, file paths absolute (the recipe log of the run)."""
        values = to_plain(self.spec)
        for name in self.kind.path_fields:
            # Only real paths: "init = auto" is a keyword, not a file in the working directory.
            if values.get(name) and (name == self.kind.output_field or os.path.exists(values[name])):
                values[name] = os.path.abspath(values[name])
        slurm = to_plain(self.slurm)
        slurm["log_dir"] = os.path.abspath(self.log_dir)
        header = f"# Resolved from {self.path} by enhancer; rerun with: enhancer run THIS_FILE\n"
        return header + dump_toml(self.kind.table, values) + "\n\n" + dump_toml(SLURM_TABLE, slurm) + "\n"


def _split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    job, slurm = {}, {}
    for key, value in overrides.items():
        if key.startswith(SLURM_TABLE + "."):
            # `--set slurm.time=01:00:00` parses as a TOML time of day; SLURM wants the text.
            slurm[key[len(SLURM_TABLE) + 1 :]] = value.isoformat() if isinstance(value, datetime.time) else value
        else:
            job[key] = value
    return job, slurm


def load_job(
    path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Job:
    """Validate a job file: exactly one registered job table, an optional ``[slurm]`` table, nothing else."""
    path = str(path)
    document = read_job_file(path)
    unknown = sorted(set(document) - set(JOB_KINDS) - {SLURM_TABLE})
    if unknown:
        valid = ", ".join(f"[{t}]" for t in [*JOB_KINDS, SLURM_TABLE])
        raise SpecError(f"{path}: unknown table [{unknown[0]}]; valid tables: {valid}")
    tables = [t for t in document if t in JOB_KINDS]
    if len(tables) != 1:
        found = " and ".join(f"[{t}]" for t in tables) or "none"
        raise SpecError(f"{path}: a job file holds exactly one job table of {', '.join(JOB_KINDS)} (found {found})")
    kind = JOB_KINDS[tables[0]]
    job_overrides, slurm_overrides = _split_overrides(overrides or {})
    environ = os.environ if environ is None else environ
    spec = load_spec(kind.spec_cls, path, table=kind.table, overrides=job_overrides, environ=environ)
    # ENHANCER_SLURM__PARTITION -> the spec machinery's ENHANCER_PARTITION for the [slurm] table only.
    slurm_environ = {  # quoted when it looks like a time of day (ENHANCER_SLURM__TIME=01:00:00), for the same reason
        "ENHANCER_" + k[len(SLURM_ENV_PREFIX) :]: f'"{v}"' if re.fullmatch(r"[\d:]+", v) and ":" in v else v
        for k, v in environ.items()
        if k.startswith(SLURM_ENV_PREFIX)
    }
    if SLURM_TABLE in document:
        slurm = load_spec(SlurmSpec, path, table=SLURM_TABLE, overrides=slurm_overrides, environ=slurm_environ)
    else:
        slurm = load_spec(SlurmSpec, None, overrides=slurm_overrides, environ=slurm_environ)
    return Job(path, kind, spec, slurm)


def run_job(job: Job, context: RunContext | None = None) -> list[str]:
    """Run a validated job on this machine; returns the summary lines."""
    return job.kind.run(job.spec, context or RunContext())


# -- stopping cleanly -------------------------------------------------------------------------------------------


@contextmanager
def stop_on_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> Iterator[None]:
    """Turn the given signals into a ``Preempted`` exception in the main thread while the block runs: at the end of
    the batch in flight inside ``enhancer.stopping.batch_boundaries`` (the enhance loop), at once elsewhere or at a
    second signal.

    The exception unwinds through the shard writer, which then discards its ``.tmp`` instead of completing it, so a
    stopped shard is simply missing and its rerun (or the requeued SLURM task) writes it again. Installed by the
    command line, never on import."""

    def _raise(signum: int, _frame: Any) -> None:
        if request_stop(signum):
            return  # held: the enhance loop raises it once its current batch is done
        # Ignore further signals while unwinding (SLURM may send TERM after USR1), then stop.
        for s in signums:
            signal.signal(s, signal.SIG_IGN)
        raise Preempted(signum)

    previous = {s: signal.signal(s, _raise) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# -- the built-in job kinds ------------------------------------------------------------------------------------


def _run_enhance_job(spec: EnhanceSpec, context: RunContext) -> list[str]:
    """Every shard of the spec (in this process, or in ``context.workers`` processes), then the merge."""
    from enhancer.enhance import merge_enhanced, run_enhance

    if context.workers > 1:
        from enhancer.run.launch import run_enhance_workers

        lines = run_enhance_workers(spec, context.workers)
    else:
        lines = [
            run_enhance(
                dataclasses.replace(spec, shard_id=k), progress=context.progress, extra_attrs=context.extra_attrs
            ).line()
            for k in range(spec.num_shards)
        ]
    manifest = merge_enhanced(spec.out)
    merged = (
        f"{spec.out}: merged {manifest.n_written} written, {manifest.n_rejected} rejected of {manifest.n_in} "
        f"in {len(manifest.shards)} shard(s)"
    )
    return [*lines, merged]


def _submit_enhance_job(job: Job, **options: Any) -> list[Any]:
    from enhancer.run.slurm import submit_enhance

    return submit_enhance(job, **options)


def _run_train_job(spec: TrainSpec, context: RunContext) -> list[str]:
    from enhancer.train.loop import fit

    if context.workers > 1:
        raise SpecError(
            "training runs several processes through torchrun, not --workers: "
            "torchrun --nproc-per-node N -m enhancer.cli train --job FILE"
        )
    say = context.on_line

    def on_epoch(r: dict[str, Any]) -> None:
        if say is not None:
            say(
                f"epoch {r.get('epoch')}: train loss {r.get('train_loss')}, val loss {r.get('val_loss')}, "
                f"val acc {r.get('val_acc')}{' (best)' if r.get('best') else ''}"
            )

    result = fit(spec, on_epoch=on_epoch)
    return [result.line()] if result.is_main else []


def _submit_train_job(job: Job, **options: Any) -> list[Any]:
    from enhancer.run.slurm import submit_torchrun

    return submit_torchrun(job, subcommand="train", **options)


def _run_cycle_job(spec: CycleSpec, context: RunContext) -> list[str]:
    from enhancer.cycle import run_cycle

    return [run_cycle(spec, on_line=context.on_line).markdown]


# Registering is a dict insertion (like timm's @register_model); the runners import torch only when called.
register_job(
    JobKind(
        "enhance", EnhanceSpec, _run_enhance_job, path_fields=("data", "out", "checkpoint"), submit=_submit_enhance_job
    )
)
register_job(JobKind("train", TrainSpec, _run_train_job, path_fields=("data", "out", "init"), submit=_submit_train_job))
register_job(JobKind("cycle", CycleSpec, _run_cycle_job, path_fields=("data", "test", "checkpoint", "out")))
