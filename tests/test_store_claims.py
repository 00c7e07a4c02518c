"""Shard claims: one writer per shard, the second refused naming the first, stale claims taken over; and the errors
that name the real cause when a shard's ``.tmp`` disappears under its writer."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from enhancer.store import ShardWriteError, ShardWriter, StoreError, merge, shard_path
from enhancer.store.claims import ClaimInfo, ShardClaim, ShardClaimedError, read_claim
from enhancer.store.layout import check_output_dir, lock_path_for
from tests.tools.store_synth import SHAPES_ALL, make_batch, write_shard

REPO = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()


def _holder(shard: Path, *extra: str) -> subprocess.Popen:
    """Another process that takes the claim on ``shard``, says "held", releases it when a line arrives on its stdin
    (saying "released"), then waits to be killed."""
    code = textwrap.dedent(
        """
        import sys, time
        from enhancer.store.claims import ShardClaim
        claim = ShardClaim(sys.argv[1], job={"slurm_job_id": "812", "slurm_array_task_id": "3"}).acquire()
        print("held", flush=True)
        sys.stdin.readline()
        claim.release()
        print("released", flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(shard), *extra],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _record(shard: Path, *, host: str, pid: int, age_s: float = 0.0) -> None:
    """A claim file as a holder on ``host`` would have left it, last touched ``age_s`` seconds ago."""
    lock = lock_path_for(shard)
    lock.parent.mkdir(parents=True, exist_ok=True)
    info = ClaimInfo(host=host, pid=pid, since="2026-01-01T00:00:00+00:00", boot_id="boot-of-" + host)
    lock.write_text(info.to_json())
    past = time.time() - age_s
    os.utime(lock, (past, past))


def test_claim_records_the_holder_and_goes_away_when_released(tmp_path: Path) -> None:
    shard = shard_path(tmp_path, 0, 2)
    with ShardClaim(shard, job={"slurm_job_id": "7"}) as claim:
        record = json.loads(lock_path_for(shard).read_text())
        assert (record["host"], record["pid"], record["job"]) == (HOST, os.getpid(), {"slurm_job_id": "7"})
        assert record["since"].endswith("+00:00")
        assert read_claim(shard).pid == claim.info.pid == os.getpid()
        check_output_dir(tmp_path, {})  # the claim file belongs to the dataset directory
    assert not lock_path_for(shard).exists()
    assert read_claim(shard) is None


def test_a_second_claim_in_the_same_process_is_refused(tmp_path: Path) -> None:
    shard = shard_path(tmp_path, 1, 2)
    with ShardClaim(shard):
        with pytest.raises(ShardClaimedError, match=f"pid {os.getpid()} on host {HOST}") as err:
            ShardClaim(shard).acquire()
        assert err.value.holder.pid == os.getpid()
        with ShardClaim(shard_path(tmp_path, 0, 2)):  # another shard is free
            pass


def test_a_claim_held_by_another_process_is_refused_naming_it(tmp_path: Path) -> None:
    shard = shard_path(tmp_path, 0, 1)
    holder = _holder(shard)
    try:
        started = time.monotonic()
        with pytest.raises(ShardClaimedError) as err:
            ShardClaim(shard).acquire()
        assert time.monotonic() - started < 1.0
        message = str(err.value)
        assert f"pid {holder.pid} on host {HOST} since " in message
        assert "(slurm_array_task_id=3, slurm_job_id=812)" in message and "its lock is held" in message
        assert err.value.holder.pid == holder.pid
        with pytest.raises(ShardClaimedError):
            ShardWriter(tmp_path, 0, 1, shapes=SHAPES_ALL).open()  # a writer takes the claim too
        assert not Path(str(shard) + ".tmp").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_claim_of_a_killed_holder_is_taken_over(tmp_path: Path, caplog) -> None:
    shard = shard_path(tmp_path, 0, 1)
    holder = _holder(shard)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_path_for(shard).exists()  # a killed holder leaves its claim file
    with caplog.at_level("WARNING", logger="enhancer.store.claims"), ShardClaim(shard) as claim:
        assert claim.taken_over.pid == holder.pid
    assert f"taking over the stale claim on {shard.name} of pid {holder.pid} on host {HOST}" in caplog.text
    assert "its process is gone" in caplog.text


def test_a_claim_from_a_previous_boot_is_stale(tmp_path: Path) -> None:
    shard = shard_path(tmp_path, 0, 1)
    _record(shard, host=HOST, pid=os.getpid())  # this very pid, but recorded under another boot id
    with ShardClaim(shard) as claim:
        assert claim.taken_over.pid == os.getpid()


def test_a_live_holder_without_a_lock_is_refused(tmp_path: Path) -> None:
    # Locks the filesystem did not enforce (the file names a running process, yet its lock is free): refused.
    shard = shard_path(tmp_path, 0, 1)
    lock = lock_path_for(shard)
    lock.parent.mkdir(parents=True, exist_ok=True)
    info = ClaimInfo(host=HOST, pid=os.getppid(), since="2026-01-01T00:00:00+00:00")
    lock.write_text(info.to_json())
    with pytest.raises(ShardClaimedError, match=f"pid {os.getppid()} on host {HOST}.*it may still be running"):
        ShardClaim(shard).acquire()


def test_another_hosts_claim_is_stale_only_after_the_limit_or_when_forced(tmp_path: Path, caplog) -> None:
    shard = shard_path(tmp_path, 0, 1)
    _record(shard, host="node-elsewhere", pid=4242, age_s=30)
    with pytest.raises(ShardClaimedError, match="pid 4242 on host node-elsewhere.*last heartbeat 3\\d s ago"):
        ShardClaim(shard).acquire()
    with ShardClaim(shard, force=True) as claim:
        assert claim.taken_over.host == "node-elsewhere"
    _record(shard, host="node-elsewhere", pid=4242, age_s=30)
    with ShardClaim(shard, stale_after_s=20) as claim:
        assert claim.taken_over.pid == 4242
    _record(shard, host="node-elsewhere", pid=4242, age_s=700)  # older than STALE_AFTER_S (600 s)
    with caplog.at_level("WARNING", logger="enhancer.store.claims"), ShardClaim(shard) as claim:
        assert claim.taken_over.pid == 4242
    assert "its heartbeat is older than 600 s" in caplog.text


def test_force_takes_a_held_claim(tmp_path: Path) -> None:
    shard = shard_path(tmp_path, 0, 1)
    holder = _holder(shard)
    try:
        with ShardClaim(shard, force=True) as claim:
            assert claim.taken_over.pid == holder.pid
            assert read_claim(shard).pid == os.getpid()
    finally:
        holder.kill()
        holder.wait()


def test_the_heartbeat_refreshes_the_claim(tmp_path: Path) -> None:
    shard = shard_path(tmp_path, 0, 1)
    with ShardClaim(shard, heartbeat_s=0.05):
        past = time.time() - 100
        os.utime(lock_path_for(shard), (past, past))
        time.sleep(0.3)
        assert read_claim(shard).heartbeat_age_s < 5


def test_a_writer_given_a_claim_keeps_it_and_checks_it(tmp_path: Path) -> None:
    shard = shard_path(tmp_path, 0, 1)
    with pytest.raises(Exception, match="not held"):
        ShardWriter(tmp_path, 0, 1, shapes=SHAPES_ALL, claim=ShardClaim(shard)).open()
    with pytest.raises(Exception, match="not on this writer's shard"):
        ShardWriter(tmp_path, 0, 1, shapes=SHAPES_ALL, claim=ShardClaim(shard_path(tmp_path, 0, 2)))
    with ShardClaim(shard) as claim:
        with ShardWriter(tmp_path, 0, 1, shapes=SHAPES_ALL, claim=claim) as w:
            w.write(make_batch(range(4)))
        assert claim.held and lock_path_for(shard).exists()  # the caller's claim outlives the writer
    assert sorted(os.listdir(tmp_path)) == [shard.name]
    assert merge(tmp_path).n_written == 4


def test_a_tmp_removed_under_the_writer_is_named_as_such(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path, 0, 1, shapes=SHAPES_ALL)
    w.open()
    w.write(make_batch(range(4)))
    w.tmp_path.unlink()  # what a second job on the same shard did before claims
    with pytest.raises(ShardWriteError) as err:
        w.close()
    message = str(err.value)
    assert "another process removed or replaced it" in message and "disk" not in message
    assert "--shard-id 0 --num-shards 1" in message
    assert os.listdir(tmp_path) == []


def test_a_tmp_replaced_under_the_writer_is_not_published(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path, 0, 1, shapes=SHAPES_ALL)
    w.open()
    w.write(make_batch(range(4)))
    w.tmp_path.unlink()
    w.tmp_path.write_bytes(b"another job's half-written shard")
    with pytest.raises(ShardWriteError, match="another process removed or replaced it"):
        w.close()
    assert not w.path.exists()  # never renamed into place
    assert w.tmp_path.read_bytes() == b"another job's half-written shard"  # and not deleted: it is not ours


def test_merge_names_the_job_still_writing_a_shard(tmp_path: Path) -> None:
    write_shard(tmp_path, 0, 2, [0, 2])
    holder = _holder(shard_path(tmp_path, 1, 2))
    try:
        with pytest.raises(StoreError, match=f"shards 1 of 2 are missing.*shard 1 is claimed by pid {holder.pid}"):
            merge(tmp_path)
    finally:
        holder.kill()
        holder.wait()


def test_a_requeued_slurm_task_takes_over_the_claim_of_its_earlier_run(tmp_path: Path, caplog) -> None:
    shard = shard_path(tmp_path, 3, 8)
    lock = lock_path_for(shard)
    earlier = ClaimInfo(host="node-failed", pid=4242, since="2026-01-01T00:00:00+00:00", job={"slurm_job_id": "812"})
    lock.write_text(earlier.to_json())  # fresh heartbeat, another host: only the job ids tell it is gone
    with pytest.raises(ShardClaimedError, match="it may still be running"):
        ShardClaim(shard, job={"slurm_job_id": "813"}).acquire()  # another job: refused
    with caplog.at_level("WARNING", logger="enhancer.store.claims"):
        with ShardClaim(shard, job={"slurm_job_id": "812", "slurm_restart_count": "1"}) as claim:
            assert claim.taken_over.host == "node-failed"
    assert "an earlier run of this same job, requeued" in caplog.text


def test_a_forced_takeover_keeps_its_claim_file_when_the_old_holder_releases(tmp_path: Path) -> None:
    shard = shard_path(tmp_path, 0, 1)
    holder = _holder(shard)
    try:
        with ShardClaim(shard, force=True):
            holder.stdin.write("release\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "released"
            assert read_claim(shard).pid == os.getpid()  # the old holder left the file: it names us now
    finally:
        holder.kill()
        holder.wait()
    assert not lock_path_for(shard).exists()
