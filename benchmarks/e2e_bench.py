"""End to end, side by side: ``enhancer enhance`` against the classic Grad-CAM pipeline (two variants) and three
forward-only ceilings, with every timed run's outputs checked against the classic pipeline's.

Usage::

    .venv/bin/python benchmarks/e2e_bench.py --n 256                   # CPU: resnet101 at 224 (~30 min, quiet)
    .venv/bin/python benchmarks/e2e_bench.py --n 256 --json e2e.json   # the same, figures also as JSON
    .venv/bin/python benchmarks/e2e_bench.py --device cuda             # GPU: the chosen loader (DALI when installed,
                                                                       # else torch/nvJPEG), bf16, batch 256, N 4096
    .venv/bin/python benchmarks/e2e_bench.py --n 16 --arch tinyvgg --repeats 1 --batch-sizes "" --whole-n 16  # smoke

Contenders (``e2e_contenders.py``), all on the same files (the 16 real sample X-rays symlinked to N files) and the
same model (a calibrated demonstration checkpoint; speed does not depend on the weights): (a) the enhance job as
shipped, (b) the classic pipeline with every parameter requiring grad and (b') with a frozen trunk, (c) forward-only
in eager NCHW, channels_last and torch.compile.

Every measurement (contender, files, batch size) runs in a fresh process (this script re-invoked with ``--worker``)
so that its peak resident memory is its own: one untimed warm-up pass over a batch of files, then one timed pass.
Rounds interleave the contenders (a noisy shared machine hits them alike) and the medians count; the load average
is printed with each run. The first round's outputs are kept and each contender's are compared with the classic
pipeline's (predictions; heatmaps in grey levels and crop boxes for the Grad-CAM contenders). Scaling runs (a) at
4N (peak RSS at N and 4N); the batch sweep runs (a) at N; the whole-process section times the command lines
(``python -m enhancer.cli enhance`` against ``python classic_pipeline.py``) on 64 files, start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TreeMemory, emit_result, machine, make_copies, own_peak_rss_mib, run_worker, sample_data
from e2e_contenders import CONTENDERS, Options, compare_outputs, run_contender

Runs = dict[Any, list[dict[str, Any]]]  # contender (or batch size) -> one result per round


def _options(args: argparse.Namespace, batch_size: int | None) -> Options:
    return Options(batch_size=batch_size, device=args.device, threads=args.threads, loader=args.loader)


def worker(args: argparse.Namespace) -> None:
    """``--worker NAME``: warm up, time one pass, report as one JSON line (read by ``run_worker``)."""
    opts, state = _options(args, args.batch_size), {}
    t0 = time.perf_counter()
    run_contender(args.worker, args.warm, args.checkpoint, args.out / "warm", opts, state)
    warmup_s = time.perf_counter() - t0
    with TreeMemory() as tree:
        n, seconds, loader = run_contender(args.worker, args.data, args.checkpoint, args.out / "timed", opts, state)
    if args.keep:
        shutil.copytree(args.out / "timed", args.keep, dirs_exist_ok=True)
    shutil.rmtree(args.out, ignore_errors=True)
    emit_result(
        {
            "contender": args.worker,
            "n": n,
            "batch_size": args.batch_size,
            "seconds": seconds,
            "images_per_s": n / seconds,
            "loader": loader,
            "warmup_s": warmup_s,
            "peak_rss_mib": own_peak_rss_mib(),
            "tree_peak_pss_mib": tree.peak_mib,
            "pss_samples": tree.samples,
            "pss_sampling_s": tree.sampling_s,
            "load_average": os.getloadavg()[0],
        }
    )


def _measure(
    args: argparse.Namespace, tmp: Path, name: str, n: int, batch_size: int | None, keep: Path | None = None
) -> dict[str, Any]:
    argv = ["--worker", name, "--data", str(tmp / f"data-{n}"), "--warm", str(tmp / "warm")]
    argv += ["--checkpoint", str(tmp / "model.pt"), "--out", str(tmp / "out"), "--device", args.device]
    argv += ["--threads", str(args.threads), "--loader", args.loader]
    argv += ["--batch-size", str(batch_size)] if batch_size else []
    argv += ["--keep", str(keep)] if keep else []
    r = run_worker(Path(__file__).resolve(), argv)
    print(
        f"  {name:<16} n={r['n']:<6} batch={batch_size or 'default':<7} {r['images_per_s']:9.2f} images/s  "
        f"peak RSS {r['peak_rss_mib']:6.0f} MiB, with workers {r['tree_peak_pss_mib']:6.0f} MiB PSS "
        f"({r['loader']}; load {r['load_average']:.1f})",
        flush=True,
    )
    return r


def _whole_process(args: argparse.Namespace, tmp: Path) -> dict[str, list[float]]:
    """Seconds of the command lines on ``whole_n`` files, from launch to exit (imports, start-up, everything)."""
    data, model = tmp / f"data-{args.whole_n}", tmp / "model.pt"
    here = Path(__file__).resolve().parent
    enhance = [sys.executable, "-m", "enhancer.cli", "enhance", "--data", str(data), "--checkpoint", str(model)]
    classic = [sys.executable, str(here / "classic_pipeline.py"), str(data), str(model)]
    commands = {  # OUT: the output, filled in per run
        "enhance": [*enhance, "--device", args.device, "--no-progress", "--out", "OUT"],
        "classic": [*classic, "OUT", "--grads", "all", "--device", args.device],
        "classic-frozen": [*classic, "OUT", "--grads", "as-loaded", "--device", args.device],
    }
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, command in commands.items():
            out = tmp / (f"whole-{name}" if name == "enhance" else f"whole-{name}.h5")
            shutil.rmtree(out, ignore_errors=True)
            out.unlink(missing_ok=True)
            start = time.perf_counter()
            subprocess.run([str(out) if a == "OUT" else a for a in command], check=True, stdout=subprocess.DEVNULL)
            seconds[name].append(time.perf_counter() - start)
            print(f"  {name:<16} {args.whole_n} files: {seconds[name][-1]:6.1f} s (load {os.getloadavg()[0]:.1f})")
    return seconds


def _run_all(args: argparse.Namespace, tmp: Path, report: dict[str, Any]) -> tuple[Runs, Runs, Runs]:
    """Checkpoint, data copies, then the main rounds (the first keeps its outputs for the check), scaling, sweep
    and the whole-process timings (into ``report``)."""
    from enhancer.models.demo import save_demo_checkpoint

    save_demo_checkpoint(str(tmp / "model.pt"), args.arch)
    for n in sorted({args.n, args.n * args.scale, args.whole_n} - {0}):
        make_copies(sample_data(), tmp / f"data-{n}", n)
    make_copies(sample_data(), tmp / "warm", max(args.batch_size or 16, 16))
    print(f"\nmain table: {args.repeats} rounds at N={args.n}")
    main: Runs = {c: [] for c in args.contenders}
    for r in range(args.repeats):
        for c in args.contenders:
            keep = tmp / "kept" / c if r == 0 else None
            main[c].append(_measure(args, tmp, c, args.n, args.batch_size, keep))
    if "classic" in args.contenders:
        report["checks"] = {
            c: compare_outputs(tmp / "kept" / c, tmp / "kept" / "classic") for c in args.contenders if c != "classic"
        }
    scale: Runs = {"enhance": []} if args.scale and "enhance" in args.contenders else {}
    for _ in range(args.extra_repeats if scale else 0):
        print(f"\nscaling: (a) at {args.scale}N={args.n * args.scale}")
        scale["enhance"].append(_measure(args, tmp, "enhance", args.n * args.scale, args.batch_size))
    sweep: Runs = {b: [] for b in args.batch_sizes}
    for _ in range(args.extra_repeats if sweep else 0):
        print(f"\nbatch sweep of (a) at N={args.n}")
        for b, runs in sweep.items():
            runs.append(_measure(args, tmp, "enhance", args.n, b))
    if args.whole_n:
        print(f"\nwhole process: the command lines on {args.whole_n} files, {args.repeats} rounds")
        report["whole_process_s"] = _whole_process(args, tmp)
    return main, scale, sweep


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["images_per_s"] for r in runs]
    return {
        "images_per_s": statistics.median(rates),
        "rounds": rates,
        "loader": runs[0]["loader"],
        "n": runs[0]["n"],
        "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
        "tree_peak_pss_mib": statistics.median(r["tree_peak_pss_mib"] for r in runs),
        "load_average": [r["load_average"] for r in runs],
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: %(default)s)")
    p.add_argument("--n", type=int, help="files (default: 256 on cpu, 4096 on cuda)")
    p.add_argument("--scale", type=int, default=4, help="(a) also at scale * N files; 0: not (default: 4)")
    p.add_argument("--arch", default="resnet101", help="zoo architecture, at 224 (default: %(default)s)")
    p.add_argument("--batch-size", type=int, help="for every contender (default: the enhance job's own default)")
    p.add_argument("--batch-sizes", help="batch sweep of (a) at N, comma-separated (default: 8,16,32; cuda: none)")
    p.add_argument("--threads", type=int, help="loader threads / DataLoader workers (default: 2 on cpu, 8 on cuda)")
    p.add_argument("--loader", default="auto", choices=["auto", "dali", "torch"], help="(a)'s and (c)'s loader "
                   "(default: %(default)s: DALI when installed, on the CPU and on CUDA)")  # fmt: skip
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="main table (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the main table; medians (default: %(default)s)")
    p.add_argument("--extra-repeats", type=int, default=1, help="rounds of scaling and sweep (default: %(default)s)")
    p.add_argument("--whole-n", type=int, default=64, help="files of the whole-process runs; 0: none (default: 64)")
    p.add_argument("--tmp", type=Path, help="folder for the copies and outputs (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file ('-': stdout)")
    for hidden in ("--worker", "--data", "--warm", "--checkpoint", "--out", "--keep"):
        p.add_argument(hidden, type=str if hidden == "--worker" else Path, help=argparse.SUPPRESS)
    return p


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but CUDA is not available; run on a GPU machine or drop --device")
    args.n = args.n or (4096 if cuda else 256)
    args.threads = args.threads if args.threads is not None else (min(8, os.cpu_count() or 1) if cuda else 2)
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"--contenders: unknown {sorted(unknown)}; valid: {', '.join(CONTENDERS)}")
    args.contenders = names
    sweep = args.batch_sizes if args.batch_sizes is not None else ("" if cuda else "8,16,32")
    args.batch_sizes = [int(b) for b in sweep.split(",") if b.strip()]
    return args


def main() -> None:
    args = _parser().parse_args()
    if args.worker:
        worker(args)
        return
    args = _resolve(args)
    print(machine())
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "machine": machine(),
        "date": started.isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "args": {k: v if isinstance(v, int | list) else str(v) for k, v in vars(args).items() if v is not None},
    }
    with tempfile.TemporaryDirectory(prefix="e2e-bench-", dir=args.tmp) as tmp_name:
        main_runs, scale_runs, sweep_runs = _run_all(args, Path(tmp_name), report)
    report.update(
        main={c: _summary(r) for c, r in main_runs.items()},
        scaling={c: _summary(r) for c, r in scale_runs.items()},
        sweep={b: _summary(r) for b, r in sweep_runs.items()},
        seconds=(datetime.now(UTC) - started).total_seconds(),
    )
    from e2e_report import print_report

    report["acceptance"] = print_report(args, report)
    if args.json:
        text = json.dumps(report, indent=2)
        print(text) if str(args.json) == "-" else args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
