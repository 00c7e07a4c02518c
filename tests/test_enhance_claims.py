"""Two `enhancer enhance` processes on one output directory and shard: exactly one writes, the other exits 2 naming it;
a killed holder's claim is taken over by the rerun, which completes a shard that verifies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from enhancer.store import is_complete, verify
from enhancer.store.layout import lock_path_for, shard_path, tmp_path_for

REPO = Path(__file__).resolve().parents[1]


def _enhance(data: Path, out: Path, checkpoint: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "enhancer.cli", "enhance", "--data", str(data), "--checkpoint", str(checkpoint)]
        + ["--out", str(out), "--batch-size", "4", "--no-progress"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_claim(lock: Path, pid: int, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            record = json.loads(lock.read_text())
            if record["pid"] == pid:
                return record
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} did not claim {lock} within {timeout_s} s")


@pytest.mark.slow
def test_two_jobs_on_one_shard_then_the_holder_killed(tmp_path, kermany_dir, demo_checkpoints):
    out, checkpoint = tmp_path / "out", demo_checkpoints["tinyvgg"]
    final = shard_path(out, 0, 1)
    first = _enhance(kermany_dir, out, checkpoint)
    try:
        claim = _wait_for_claim(lock_path_for(final), first.pid)
        first.send_signal(signal.SIGSTOP)  # frozen while it holds the claim, wherever it is in the job
        started = time.monotonic()
        second = _enhance(kermany_dir, out, checkpoint)
        text, _ = second.communicate(timeout=60)
        elapsed = time.monotonic() - started
        assert second.returncode == 2, text
        assert elapsed < 5, f"the second job took {elapsed:.1f} s to give up"
        assert f"being written by pid {first.pid} on host {socket.gethostname()} since {claim['since']}" in text
        assert json.loads(lock_path_for(final).read_text())["pid"] == first.pid  # the claim stayed the first's
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert not final.exists()
    rerun = _enhance(kermany_dir, out, checkpoint)
    text, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, text
    assert f"taking over the stale claim on {final.name} of pid {first.pid}" in text
    assert "16 written, 0 rejected of 16" in text
    assert is_complete(final)
    assert sorted(p.name for p in out.iterdir()) == [final.name]  # no .tmp, no .lock
    assert not tmp_path_for(final).exists()
    merged = subprocess.run(
        [sys.executable, "-m", "enhancer.cli", "merge", str(out)], cwd=REPO, capture_output=True, text=True
    )
    assert merged.returncode == 0, merged.stderr
    assert verify(out).ok
