"""SIGTERM and SIGINT (Ctrl-C) to a local `enhancer enhance`, without SLURM: the batch in flight finishes, the shard is
discarded (nothing complete-looking is left), and the rerun writes the same arrays as an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from enhancer.enhance import run_enhance
from enhancer.specs import EnhanceSpec
from enhancer.store.layout import lock_path_for, shard_path, tmp_path_for
from tests.test_enhance import _repeated_samples

REPO = Path(__file__).resolve().parents[1]
BATCH = 2


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: f[name][:] for name in f if isinstance(f[name], h5py.Dataset)}


@pytest.fixture(scope="module")
def job(tmp_path_factory, kermany_dir, demo_checkpoints):
    """128 inputs (the samples 8 times) and the shard an uninterrupted run writes from them. Long enough that the
    signal lands mid-shard on a fast CPU too: 32 inputs took 0.6 s from the shard's .tmp file to the exit on a
    2-core Zen 5 VM, barely more than the test's wait before the signal (up to 0.5 s)."""
    root = tmp_path_factory.mktemp("signals")
    data = _repeated_samples(kermany_dir, root / "data", 8)
    checkpoint = demo_checkpoints["tinyvgg"]
    reference = root / "reference"
    run_enhance(EnhanceSpec(data=str(data), out=str(reference), checkpoint=str(checkpoint), batch_size=BATCH))
    return data, checkpoint, _arrays(shard_path(reference, 0, 1))


def _cli(data: Path, out: Path, checkpoint: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "enhancer.cli", "enhance", "--data", str(data), "--checkpoint", str(checkpoint)]
        + ["--out", str(out), "--batch-size", str(BATCH), "--no-progress"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives a foreground job
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "to_group"), [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["SIGTERM", "SIGINT-ctrl-c"]
)
def test_a_stopped_job_discards_its_shard_and_the_rerun_equals_an_uninterrupted_run(tmp_path, job, signum, to_group):
    data, checkpoint, want = job
    out = tmp_path / "out"
    final = shard_path(out, 0, 1)
    proc = _cli(data, out, checkpoint)
    deadline = time.monotonic() + 300
    while not tmp_path_for(final).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(signum).uniform(0.0, 0.5))  # somewhere in the shard's batches
    assert proc.poll() is None and not final.exists(), "the job ended before it could be stopped"
    if to_group:
        os.killpg(proc.pid, signum)  # what Ctrl-C does: the whole foreground group, loader workers included
    else:
        proc.send_signal(signum)
    text, _ = proc.communicate(timeout=300)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, text
    assert f"{name} received: stopping after the current batch" in text
    assert f"stopped by {name}: the shard being written was discarded" in text
    assert "Traceback" not in text
    assert sorted(os.listdir(out)) == []  # no shard, no .tmp, no claim left behind
    assert not lock_path_for(final).exists()

    rerun = _cli(data, out, checkpoint)
    text, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, text
    got = _arrays(final)
    assert sorted(got) == sorted(want)
    for name_, value in want.items():
        np.testing.assert_array_equal(got[name_], value, err_msg=name_)
