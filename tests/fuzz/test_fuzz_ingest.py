"""A fuzzed ingest: the enhance job over >= 1,000 hostile files made from the real samples (``tests/fuzz/mutants.py``)
never crashes or hangs, writes or rejects (with a reason) every input, and stays under a memory bound.

Two jobs run as real processes: the torch loader on a set with DICOM files among the images, and the DALI loader on
an image-only set (``validate = auto`` decodes every file with PIL first there: DALI 2.4 crashes the process on some
corrupt JPEGs that PIL refuses, which this test found). A tiny model (TinyVGG, 2 channels, 32 x 32 input) keeps the
model's share negligible: what is under test is everything around it.

Sizes: ``FUZZ_N`` mutants per job (default 500, so ~1,000 files in all with the fixed extras); ``pytest --runslow``
adds the extended variant (5,000 per job). ``FUZZ_SEED`` picks another reproducible set. A failure prints the seed, the
command that reproduces it and the offending files (a crash is narrowed down to one file by bisecting the input).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import pytest

from enhancer.data import REJECTION_CODES
from enhancer.store.layout import shard_path
from tests.fuzz.mutants import HUGE_SIDE, Plan, huge_png_header, make_fuzz_dataset

REPO = Path(__file__).resolve().parents[2]
FAST_N = int(os.environ.get("FUZZ_N", "500"))
EXTENDED_N = 5000
SEED = int(os.environ.get("FUZZ_SEED", "20260301"))
JOB_TIMEOUT_S = 900  # a hang: the job is killed and the test fails (the decode time limit is far shorter)
PEAK_RSS_BOUND = 1536 * 2**20  # 1.5 GiB per process: the 50,000 x 50,000 bomb alone would take 2.5 GB decoded


@dataclass
class JobRun:
    returncode: int
    output: str
    peak_rss: int  # bytes: the largest of the job's processes (wait4's ru_maxrss covers its waited-for children)
    timed_out: bool


def run_measured(args: Sequence[str], log: Path, timeout_s: float = JOB_TIMEOUT_S) -> JobRun:
    """Run ``args`` (stdout + stderr to ``log``), killed after ``timeout_s``; its exit status and peak RSS."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            list(args), cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out, stderr=subprocess.STDOUT
        )
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        proc.kill()

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return JobRun(proc.returncode, log.read_text(errors="replace"), usage.ru_maxrss * 1024, killed.is_set())


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory) -> Path:
    import torch

    from enhancer.models.checkpoints import save_checkpoint
    from enhancer.models.demo import preprocessing_for
    from enhancer.models.zoo import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fuzz-model") / "tinyvgg-2x32.pt"
    model = build_model("tinyvgg", width=2, input_size=32).eval()
    save_checkpoint(str(path), model, preprocessing=preprocessing_for("tinyvgg", 32), meta={"note": "fuzz test"})
    return path


def enhance_args(data: Path, out: Path, checkpoint: Path, loader: str) -> list[str]:
    return [sys.executable, "-m", "enhancer.cli", "enhance", "--data", str(data), "--checkpoint", str(checkpoint)] + [
        "--out", str(out), "--loader", loader, "--batch-size", "64", "--num-threads", "2", "--fields", "heatmap",
        "--compression", "none", "--set", "source_size=32", "--set", "crop.size=[32, 32]", "--no-progress",
        "--decode-timeout-s", "20",
    ]  # fmt: skip


def read_outcome(out: Path) -> tuple[set[str], dict[str, tuple[str, str]]]:
    """Paths written and {path: (code, message)} rejected, as stored in the shard."""
    with h5py.File(shard_path(out, 0, 1), "r") as f:
        written = {p.decode() if isinstance(p, bytes) else p for p in f["path"][:]}
        g = f["rejected"]
        rejected = {
            (p.decode() if isinstance(p, bytes) else p): (c.decode(), m.decode())
            for p, c, m in zip(g["path"][:], g["code"][:], g["message"][:], strict=True)
        }
        assert int(f.attrs["n_samples"]) == len(written) and int(f.attrs["n_rejected"]) == len(rejected)
    return written, rejected


def _stored_name(plan: Plan, rel: str) -> str:
    """The path as the job stores it (undecodable bytes as \\xNN escapes, like ``batch_loop.storable_path``)."""
    path = os.path.join(os.fspath(plan.root), rel)
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_outcome(plan: Plan, written: set[str], rejected: dict[str, tuple[str, str]], context: str) -> None:
    entries = {_stored_name(plan, rel): (rel, e) for rel, e in plan.entries.items()}
    assert not written & set(rejected), f"{context}: written and rejected: {sorted(written & set(rejected))[:5]}"
    lost = set(entries) - written - set(rejected)
    assert not lost and written | set(rejected) == set(entries), f"{context}: inputs lost: {sorted(lost)[:5]}"
    bad = [f"{p}: {c!r} with message {m!r}" for p, (c, m) in rejected.items() if c not in REJECTION_CODES or not m]
    assert not bad, f"{context}: rejections without a known code and a reason: {bad[:5]}"
    wrong = []
    for stored, (rel, entry) in sorted(entries.items()):
        got = "written" if stored in written else rejected[stored][0]
        if entry.must is not None and got != entry.must:
            detail = rejected.get(stored, ("", ""))[1]
            wrong.append(f"{rel} ({entry.kind} of {entry.base}): {got} {detail!r}, expected {entry.must}")
    assert not wrong, f"{context}: {len(wrong)} file(s) not handled as expected:\n" + "\n".join(wrong[:20])


def bisect_crash(plan: Plan, args_for, tmp: Path, files: list[str]) -> list[str]:
    """The smallest part of ``files`` (halving, at most 20 rounds) on which the job still crashes."""
    for step in range(20):
        if len(files) <= 1:
            break
        for part, half in enumerate((files[: len(files) // 2], files[len(files) // 2 :])):
            name = f"bisect-{step}-{part}"
            listing = tmp / f"{name}.csv"
            with open(listing, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
                w = csv.writer(fh)
                w.writerow(["path", "label"])
                w.writerows([os.path.join(os.fspath(plan.root), rel), rel.split("/")[0]] for rel in half)
            run = run_measured(args_for(listing, tmp / f"{name}-out"), tmp / f"{name}.log")
            if run.returncode < 0 or run.timed_out:
                files = half
                break
        else:
            break  # neither half alone: the crash needs files from both
    return files


def run_fuzz_job(plan: Plan, checkpoint: Path, loader: str, tmp: Path) -> None:
    out = tmp / "out"
    run = run_measured(enhance_args(plan.root, out, checkpoint, loader), tmp / "job.log")
    context = (
        f"fuzz seed {plan.seed}, {len(plan.entries)} files, loader {loader} (reproduce: FUZZ_SEED={plan.seed} "
        f"FUZZ_N={plan.n} pytest {Path(__file__).relative_to(REPO)})"
    )
    if run.returncode != 0 or run.timed_out:
        files = sorted(plan.entries) if run.returncode < 0 or run.timed_out else []
        culprits = bisect_crash(plan, lambda d, o: enhance_args(d, o, checkpoint, loader), tmp, files) if files else []
        what = "hung (killed)" if run.timed_out else f"exited with {run.returncode}"
        pytest.fail(f"{context}: the job {what}; offending file(s): {culprits[:10]}\n{run.output[-3000:]}")
    written, rejected = read_outcome(out)
    check_outcome(plan, written, rejected, context)
    assert run.peak_rss < PEAK_RSS_BOUND, f"{context}: peak RSS {run.peak_rss / 2**20:.0f} MiB"
    print(f"{context}: {len(written)} written + {len(rejected)} rejected, peak RSS {run.peak_rss / 2**20:.0f} MiB")


@pytest.mark.slow
@pytest.mark.parametrize("n", [FAST_N, pytest.param(EXTENDED_N, marks=pytest.mark.extended)], ids=["fast", "extended"])
def test_fuzzed_ingest_with_dicom_through_the_torch_loader(tmp_path, kermany_dir, micro_checkpoint, n):
    plan = make_fuzz_dataset(kermany_dir, tmp_path / "fuzz", n=n, seed=SEED)
    assert plan.has_dicom and len(plan.entries) >= n
    run_fuzz_job(plan, micro_checkpoint, "torch", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("n", [FAST_N, pytest.param(EXTENDED_N, marks=pytest.mark.extended)], ids=["fast", "extended"])
def test_fuzzed_ingest_of_images_through_dali(tmp_path, kermany_dir, micro_checkpoint, n):
    plan = make_fuzz_dataset(kermany_dir, tmp_path / "fuzz", n=n, seed=SEED + 1, dicom=False)
    assert not plan.has_dicom
    run_fuzz_job(plan, micro_checkpoint, "dali", tmp_path)


def _child(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_50000_square_png_header_is_refused_without_allocating_it(tmp_path):
    bomb = tmp_path / "NORMAL" / "bomb.png"
    bomb.parent.mkdir()
    bomb.write_bytes(huge_png_header(HUGE_SIDE, HUGE_SIDE))
    assert bomb.stat().st_size < 200
    done = _child(
        """
        import resource, sys
        from enhancer.data import scan, validate
        from enhancer.data.decode import classify_decode_error, load_grey
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        samples = scan(sys.argv[1]).samples
        codes = [r.code for level in ("header", "full") for r in validate(samples, level=level)[1]]
        for limit in (100_000_000, None):  # ours from the header; without one, PIL's own guard (~179 M pixels)
            try:
                load_grey(samples[0].path, max_pixels=limit)
                codes.append("decoded")
            except Exception as e:
                codes.append(classify_decode_error(e, samples[0].path)[0])
        print(" ".join(codes), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """,
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    *codes, grown_kb = done.stdout.split()
    assert codes == ["too_large"] * 4, done.stdout
    assert int(grown_kb) < 50 * 1024, f"peak RSS grew by {int(grown_kb) / 1024:.0f} MiB to refuse a 2.5 GB image"


def test_an_unreadable_file_is_rejected_as_such_for_a_user_without_rights(tmp_path, kermany_dir):
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="enhancer-perm-"))  # outside root's private pytest folder
    try:
        (root / "NORMAL").mkdir()
        source = next(kermany_dir.glob("NORMAL/*.jpeg"))
        (root / "NORMAL" / "open.jpeg").write_bytes(source.read_bytes())
        (root / "NORMAL" / "closed.jpeg").write_bytes(source.read_bytes())
        os.chmod(root / "NORMAL" / "closed.jpeg", 0)
        for d in (root, root / "NORMAL"):
            os.chmod(d, 0o755)
        code = """
            import os, sys
            from PIL import Image
            from enhancer.data import scan, validate
            from enhancer.data.decode import classify_decode_error, load_grey
            Image.init()  # every import first: the interpreter's own files may be out of nobody's reach
            samples = scan(sys.argv[1]).samples
            validate(samples[1:], level="full")
            if os.geteuid() == 0:  # root reads anything: drop to nobody, as a shared cluster user would be
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            ok, rejected = validate(samples, level="full")
            print(sorted(os.path.basename(s.path) for s in ok), [(os.path.basename(r.path), r.code) for r in rejected])
            closed = os.path.join(sys.argv[1], "NORMAL", "closed.jpeg")
            try:
                load_grey(closed)
            except Exception as e:
                print(classify_decode_error(e, closed)[0])
            """
        done = _child(code, str(root))
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["['open.jpeg'] [('closed.jpeg', 'unreadable')]", "unreadable"]
    finally:
        os.chmod(root / "NORMAL" / "closed.jpeg", 0o644)
        import shutil

        shutil.rmtree(root)


def test_a_file_over_the_decode_time_limit_is_rejected(kermany_dir):
    from enhancer.data import scan, validate
    from enhancer.data.decode import DecodeRefused, load_grey

    samples = scan(kermany_dir).samples[:2]
    ok, rejected = validate(samples, level="full", timeout_s=1e-6)
    assert ok == [] and {r.code for r in rejected} == {"timeout"}
    assert "longer than the 1e-06 s limit" in rejected[0].message
    with pytest.raises(DecodeRefused, match="longer than"):
        load_grey(samples[0].path, timeout_s=1e-6)
    assert validate(samples, level="full", timeout_s=60)[1] == []
    assert load_grey(samples[0].path, timeout_s=60).size == (1776, 1416)


def test_auto_validation_decodes_with_pil_wherever_dali_or_nvjpeg_decode(kermany_dir):
    from enhancer.data import scan
    from enhancer.enhance.inputs import validation_level
    from enhancer.specs import EnhanceSpec

    samples = scan(kermany_dir).samples
    spec = EnhanceSpec(data=str(kermany_dir), out="out")
    assert validation_level(replace(spec, loader="dali"), samples, "cpu") == "full"
    assert validation_level(replace(spec, loader="torch"), samples, "cpu") == "header"
    assert validation_level(replace(spec, loader="torch"), samples, "cuda") == "full"  # nvJPEG decodes there
    assert validation_level(replace(spec, loader="dali", validate="header"), samples, "cpu") == "header"  # as asked
