"""The slurm/ scripts on a real single-node SLURM (scripts/slurm-local.sh): array + merge, requeue, failure, DDP.

Run: ``pytest -m slurm`` (as root; the fixture installs and starts the cluster, and stops what it started).
Locally the tests skip when the cluster cannot be started; under CI=true they fail instead. Every wait polls
squeue/scontrol with a timeout (a request the cluster can never satisfy would otherwise wait forever).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from enhancer.cli import main
from enhancer.store.layout import read_shard_attrs
from tests.test_enhance import _repeated_samples
from tests.test_launch import assert_same_dataset, one_process_reference
from tests.tools.missing import missing

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm-local.sh"
ENHANCE_JOB = ROOT / "jobs" / "enhance-kermany.toml"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def tinyvgg_reference(tmp_path_factory, kermany_dir, demo_checkpoints):
    """What the cluster runs must equal: the 16 real samples enhanced by one local process (tinyvgg demo model)."""
    return one_process_reference(tmp_path_factory.mktemp("reference") / "one", kermany_dir, demo_checkpoints["tinyvgg"])


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """SLURM_CONF of the local test cluster, started (and installed) by scripts/slurm-local.sh when needed."""
    state = os.environ.get("ENHANCER_SLURM_DIR", "/tmp/enhancer-slurm")
    was_up = subprocess.run([str(SCRIPT), "status"], check=False, capture_output=True, timeout=60).returncode == 0
    try:
        proc = subprocess.run([str(SCRIPT), "start"], check=False, capture_output=True, text=True, timeout=600)
        problem = "" if proc.returncode == 0 else (proc.stdout + proc.stderr).strip()[-2000:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem:
        message = f"the local SLURM cluster did not start ({SCRIPT} start): {problem}"
        missing(message, how="run `scripts/slurm-local.sh start` as root on Debian (it installs the packages)")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf = f"{state}/etc/slurm.conf"
    yield conf
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    if not was_up:  # leave a cluster somebody else started running
        subprocess.run([str(SCRIPT), "stop"], check=False, capture_output=True, timeout=120)


def _run(*command: str) -> str:
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(command)}: {proc.stderr or proc.stdout}"
    return proc.stdout


def _records(job: str) -> list[dict[str, str]]:
    """``scontrol show job`` records (one per array task), as key -> value (finished jobs stay for MinJobAge)."""
    cmd = ["scontrol", "-o", "show", "job", job]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def _state(job: str) -> str:
    records = _records(job)
    return records[0]["JobState"] if records else "UNKNOWN"


def _task_states(array_id: str) -> dict[int, str]:
    return {int(r["ArrayTaskId"]): r["JobState"] for r in _records(array_id) if r.get("ArrayTaskId", "").isdigit()}


def _wait(condition: Callable[[], bool], timeout: float, what: str, logs: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            queue = subprocess.run(["squeue", "-a", "-r"], check=False, capture_output=True, text=True).stdout
            files = sorted(logs.glob("*.out")) if logs else []
            tails = "".join(f"\n== {p.name}\n{p.read_text()[-1500:]}" for p in files)
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\nsqueue:\n{queue}{tails}")
        time.sleep(0.2)


def _wait_final(job: str, timeout: float, logs: Path) -> str:
    _wait(lambda: _state(job) in FINAL, timeout, f"job {job} to finish", logs)
    return _state(job)


def _submit(out: Path, data: Path, checkpoint: Path, *sets: str) -> tuple[str, str]:
    """`enhancer submit` of the real job file, sized for this 2-CPU test node; returns (array id, merge id)."""
    settings = [
        f"data={data}",
        f"checkpoint={checkpoint}",
        f"out={out}",
        "device=cpu",
        "num_threads=1",
        "slurm.cpus_per_task=1",
        "slurm.mem=2G",
        "slurm.time=00:15:00",
        "slurm.array_throttle=0",
        *sets,
    ]
    result = CliRunner().invoke(main, ["submit", str(ENHANCE_JOB), *[a for s in settings for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    array = re.search(r"submitted array job (\d+)", result.output).group(1)
    merge = re.search(r"submitted merge job (\d+)", result.output).group(1)
    assert f"squeue -j {array},{merge}" in result.output, "the user is told how to watch the jobs"
    return array, merge


def test_array_of_four_plus_merge_equals_one_local_process(
    slurm_cluster, tmp_path, kermany_dir, demo_checkpoints, tinyvgg_reference
):
    out = tmp_path / "array"
    array, merge = _submit(
        out, kermany_dir, demo_checkpoints["tinyvgg"], "num_shards=4", "batch_size=4", "slurm.array_throttle=2"
    )
    assert _wait_final(merge, 300, out / "logs") == "COMPLETED"
    assert _task_states(array) == dict.fromkeys(range(4), "COMPLETED")
    logs = sorted(p.name for p in (out / "logs").glob("*.out"))
    assert logs == [*(f"enhance-{array}_{k}.out" for k in range(4)), f"merge-{merge}.out"]
    assert "16 written, 0 rejected of 16 in 4 shard(s)" in (out / "logs" / f"merge-{merge}.out").read_text()
    assert_same_dataset(out, tinyvgg_reference)
    for k in range(4):  # SLURM's ids are part of every shard's provenance
        slurm = read_shard_attrs(out / f"shard-{k:05d}-of-00004.h5")["slurm"]
        assert (slurm["slurm_array_job_id"], slurm["slurm_array_task_id"]) == (array, str(k))
    # The fake GPUs: each task saw one, as on a GPU cluster (and ran on the CPU, as torch finds no CUDA here).
    assert "CUDA_VISIBLE_DEVICES=0" in (out / "logs" / f"enhance-{array}_0.out").read_text()


def test_preempted_and_requeued_tasks_resume_without_duplicates(slurm_cluster, tmp_path, kermany_dir, demo_checkpoints):
    out = tmp_path / "requeue"
    logs = out / "logs"
    # 96 files (the samples 6 times), one per batch: each task spends seconds inside its shard, the window the
    # signals must hit (8 files a task took 0.5 s on a 2-core Zen 5 VM, less than the test needs to look)
    data = _repeated_samples(kermany_dir, tmp_path / "data", 6)
    array, merge = _submit(out, data, demo_checkpoints["tinyvgg"], "num_shards=2", "batch_size=1")
    # Task 0: the time-limit warning (what --signal=B:USR1@N delivers): it stops cleanly and requeues itself.
    _wait(lambda: (out / "shard-00000-of-00002.h5.tmp").exists(), 180, "task 0 to start its shard", logs)
    _run("scancel", "--signal=USR1", "--batch", f"{array}_0")
    # Task 1: requeued from outside in the middle of its shard (an admin, or preemption by a higher priority job).
    _wait(lambda: (out / "shard-00001-of-00002.h5.tmp").exists(), 180, "task 1 to start its shard", logs)
    _run("scontrol", "requeue", f"{array}_1")
    for k in (0, 1):
        _wait(lambda k=k: _task_states(array).get(k) == "PENDING", 60, f"task {k} to be pending again", logs)
        # A requeued job waits ~120 s before it may start again. Not `now`: slurmd refuses to launch a job id in
        # the same second as it killed it ("already killed, do not launch batch job") and the task would fail.
        _run("scontrol", "update", f"JobId={array}_{k}", "StartTime=now+2")
    assert _wait_final(merge, 300, logs) == "COMPLETED"
    records = {int(r["ArrayTaskId"]): r for r in _records(array)}
    assert {k: (r["JobState"], r["Restarts"]) for k, r in records.items()} == {
        0: ("COMPLETED", "1"),
        1: ("COMPLETED", "1"),
    }
    first, second = (logs / f"enhance-{array}_0.out").read_text(), (logs / f"enhance-{array}_1.out").read_text()
    assert "USR1 received" in first and f"requeueing {array}_0" in first
    assert "TERM received" in second or "DUE TO JOB REQUEUE" in second
    for log in (first, second):
        assert "not written (Preempted: stopped by SIGTERM)" in log, log  # stopped mid-shard, .tmp discarded
        assert "(restart 1)" in log and "48 written, 0 rejected of 48" in log, log
    assert not list(out.glob("*.tmp"))
    assert_same_dataset(out, one_process_reference(tmp_path / "one", data, demo_checkpoints["tinyvgg"]))


def test_failed_task_blocks_the_merge_and_merge_names_the_shard(
    slurm_cluster, tmp_path, kermany_dir, demo_checkpoints, tinyvgg_reference
):
    out = tmp_path / "failure"
    out.mkdir()
    # A directory where task 1 must write its temporary shard: that task fails (like a broken disk), task 0 not.
    (out / "shard-00001-of-00002.h5.tmp").mkdir()
    array, merge = _submit(out, kermany_dir, demo_checkpoints["tinyvgg"], "num_shards=2", "batch_size=4")
    _wait(lambda: len([s for s in _task_states(array).values() if s in FINAL]) == 2, 240, "both tasks", out / "logs")
    assert _task_states(array) == {0: "COMPLETED", 1: "FAILED"}
    # The merge never runs: its afterok dependency can no longer be met and --kill-on-invalid-dep cancels it.
    _wait(lambda: _state(merge) == "CANCELLED", 60, "the merge job to be cancelled", out / "logs")
    assert not (out / "logs" / f"merge-{merge}.out").exists() and not (out / "manifest.json").exists()
    assert "shard-00001-of-00002.h5.tmp" in (out / "logs" / f"enhance-{array}_1.out").read_text()
    by_hand = CliRunner().invoke(main, ["merge", str(out)])
    assert by_hand.exit_code == 2 and "--shard-id 1" in by_hand.output and "--shard-id 0" not in by_hand.output
    # After the cause is fixed, resubmitting just that shard completes the dataset.
    (out / "shard-00001-of-00002.h5.tmp").rmdir()
    result = CliRunner().invoke(main, ["submit", str(out / "enhance-spec.toml"), "--shards", "1"])
    assert result.exit_code == 0, result.output
    merge = re.search(r"submitted merge job (\d+)", result.output).group(1)
    assert _wait_final(merge, 240, out / "logs") == "COMPLETED"
    assert_same_dataset(out, tinyvgg_reference)


def test_train_sbatch_runs_two_task_ddp_on_cpu(slurm_cluster, tmp_path, kermany_dir, monkeypatch):
    run = tmp_path / "run"
    job = tmp_path / "train-smoke.toml"
    job.write_text(f"""
[train]
data = "{kermany_dir}"
out = "{run}"
arch = "tinyvgg"
init = "random"
epochs = 1
batch_size = 4
val_fraction = 0.25
augment = false
device = "cpu"
num_workers = 0

[slurm]
gpus_per_task = 0           # gloo on the CPU
cpus_per_task = 1
mem = "2G"
time = "00:10:00"
# Two torchrun launchers (one process each) on this one node stand in for two nodes.
extra = ["--ntasks=2", "--ntasks-per-node=2"]
""")
    monkeypatch.setenv("LOGLEVEL", "INFO")  # torchrun then logs the rendezvous result (sbatch exports it to the job)
    result = CliRunner().invoke(main, ["submit", str(job)])
    assert result.exit_code == 0, result.output
    job_id = re.search(r"submitted train job (\d+)", result.output).group(1)
    log = run / "logs" / f"train-{job_id}.out"
    assert _wait_final(job_id, 300, run / "logs") == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    assert "2 launcher(s) x 1 process(es)" in text and "finished with exit code 0" in text, text[-3000:]
    assert text.count("global_world_sizes=[2]") == 2, "both launchers joined one 2-process group"
    assert (run / "best.pt").exists() and (run / "last.pt").exists()
