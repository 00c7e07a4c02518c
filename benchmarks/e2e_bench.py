"""End to end, side by side: ``enhancer enhance`` against the classic Grad-CAM pipeline and forward-only inference.

Usage::

    .venv/bin/python benchmarks/e2e_bench.py --n 256                   # CPU: resnet101 at 224, batch 16 (~1 hour)
    .venv/bin/python benchmarks/e2e_bench.py --n 256 --json e2e.json   # the same, figures also as JSON
    .venv/bin/python benchmarks/e2e_bench.py --device cuda             # GPU: torch loader, bf16 + channels_last,
                                                                       # batch 256, N 4096 (and 4N)
    .venv/bin/python benchmarks/e2e_bench.py --n 16 --arch tinyvgg --repeats 1 --batch-sizes 8 --no-check  # smoke

Contenders, all on the same files (the 16 real sample X-rays symlinked to N files) and the same model (a calibrated
demonstration checkpoint, ``enhancer.models.demo``; speed does not depend on the weights):

(a) ``enhancer enhance`` as shipped: ``run_enhance`` (what the command calls) with the default settings (loader
    ``auto``: DALI on the CPU; on CUDA the torch loader with ``amp``), writing a full HDF5 shard;
(b) the classic pipeline (``classic_pipeline.py``): ImageFolder + DataLoader, pytorch-grad-cam one batch at a time
    (every parameter requiring grad, as in a script that builds and loads the model: the backward runs through the
    whole network; ``--classic-grads as-loaded`` stops it after layer4), crops cut per image with PIL, enhanced
    images with numpy, h5py writes per sample, into one HDF5 file;
(c) forward only: our loader feeding ``model(x)`` under inference mode, nothing stored: the limit.

Every measurement (contender, files, batch size) runs in a fresh process (this script re-invoked with ``--worker``)
so that its peak resident memory is its own: one untimed warm-up pass over ``batch-size`` files, then one timed
pass from the checkpoint file to the last output. Rounds interleave the contenders (a noisy shared machine hits them
alike) and the medians over rounds count. Peak memory is the worker process's own high-water mark (``VmHWM``;
``ru_maxrss`` would report the parent's when larger) and, for information, the peak proportional set size of the
worker with all its child processes (DataLoader workers), sampled every 0.5 s. Scaling runs (a) and (c) at 4N
(``--scale-contenders`` adds (b)); the batch sweep runs (a) at N. Before timing, the classic outputs are checked
against ours on the 16 real images (heatmaps to 1e-3 with pytorch-grad-cam's Grad-CAM settings, on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    TreeMemory,
    emit_result,
    forward_only,
    machine,
    make_copies,
    own_peak_rss_mib,
    run_worker,
    sample_data,
)

CONTENDERS = {
    "enhance": "(a) enhancer enhance",
    "classic": "(b) classic pipeline",
    "forward": "(c) forward only",
    "enhance-torch": "(a') enhancer enhance, torch loader",  # for information on the CPU (DALI is the default there)
}
GOAL_VS_CLASSIC = 3.0
GOAL_VS_FORWARD = 0.8
GOAL_MEMORY_GROWTH = 1.10


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_contender(
    name: str,
    data: Path,
    checkpoint: Path,
    out: Path,
    *,
    batch_size: int,
    device: str,
    threads: int,
    loader: str,
    classic_grads: str = "all",
) -> tuple[int, float, str]:
    """One pass of one contender: (images done, seconds from the checkpoint file to the last output, loader)."""
    on_cuda = device.startswith("cuda")
    _sync(device)
    if name in ("enhance", "enhance-torch"):
        from enhancer.enhance import run_enhance
        from enhancer.specs import EnhanceSpec

        shutil.rmtree(out, ignore_errors=True)
        spec = EnhanceSpec(
            data=str(data),
            out=str(out),
            checkpoint=str(checkpoint),
            batch_size=batch_size,
            device=device,
            num_threads=threads,
            amp=on_cuda,
            loader="torch" if name == "enhance-torch" else loader,
        )
        start = time.perf_counter()
        summary = run_enhance(spec, progress=False)
        _sync(device)
        return summary.n_written, time.perf_counter() - start, summary.loader
    if name == "classic":
        from classic_pipeline import run_classic

        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        n = run_classic(
            data,
            checkpoint,
            out / "classic.h5",
            batch_size=batch_size,
            workers=threads,
            device=device,
            grads=classic_grads,
        )
        _sync(device)
        return n, time.perf_counter() - start, "torchvision ImageFolder"
    if name == "forward":
        return forward_only(
            data, checkpoint, batch_size=batch_size, device=device, threads=threads, loader=loader, amp=on_cuda
        )
    raise ValueError(f"unknown contender {name!r}; valid: {', '.join(CONTENDERS)}")


def worker(args: argparse.Namespace) -> None:
    """``--worker NAME``: warm up, time one pass, report as one JSON line (read by ``run_worker``)."""
    common = {
        "batch_size": args.batch_size,
        "device": args.device,
        "threads": args.threads,
        "loader": args.loader,
        "classic_grads": args.classic_grads,
    }
    t0 = time.perf_counter()
    run_contender(args.worker, args.warm, args.checkpoint, args.out / "warm", **common)
    warmup_s = time.perf_counter() - t0
    with TreeMemory() as tree:
        n, seconds, loader = run_contender(args.worker, args.data, args.checkpoint, args.out / "timed", **common)
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
        }
    )


def _measure(args: argparse.Namespace, tmp: Path, name: str, data: Path, batch_size: int) -> dict[str, Any]:
    argv = [
        "--worker",
        name,
        "--data",
        str(data),
        "--warm",
        str(tmp / f"warm-{batch_size}"),
        "--checkpoint",
        str(tmp / "model.pt"),
        "--out",
        str(tmp / "out"),
        "--batch-size",
        str(batch_size),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--loader",
        args.loader,
        "--classic-grads",
        args.classic_grads,
    ]
    r = run_worker(Path(__file__).resolve(), argv)
    print(
        f"  {name:<14} n={r['n']:<6} batch={batch_size:<4} {r['images_per_s']:9.2f} images/s  "
        f"peak RSS {r['peak_rss_mib']:6.0f} MiB, with workers {r['tree_peak_pss_mib']:6.0f} MiB PSS ({r['loader']})",
        flush=True,
    )
    return r


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["images_per_s"] for r in runs]
    return {
        "images_per_s": statistics.median(rates),
        "rounds": rates,
        "loader": runs[0]["loader"],
        "n": runs[0]["n"],
        "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
        "tree_peak_pss_mib": statistics.median(r["tree_peak_pss_mib"] for r in runs),
    }


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _check(args: argparse.Namespace, tmp: Path) -> dict[str, Any] | None:
    """Classic vs enhancer outputs on the 16 real images with the benchmark's architecture, on the CPU."""
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError as exc:
        print(f"output check skipped: pytorch-grad-cam cannot be imported ({exc}); pip install grad-cam==1.5.7")
        return None
    from classic_pipeline import compare_with_enhancer

    result = compare_with_enhancer(sample_data(), tmp / "model.pt", batch_size=16)
    print(result.line(), flush=True)
    return {**asdict(result), "passed": result.passed}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: %(default)s)")
    p.add_argument("--n", type=int, help="files (default: 256 on cpu, 4096 on cuda)")
    p.add_argument("--scale", type=int, default=4, help="scaling run at scale * N files; 0: none (default: 4)")
    p.add_argument("--arch", default="resnet101", help="zoo architecture, at 224 (default: %(default)s)")
    p.add_argument("--batch-size", type=int, help="for every contender (default: 16 on cpu, 256 on cuda)")
    p.add_argument(
        "--batch-sizes",
        help="batch sweep of (a) at N, comma-separated; empty: none (default: 8,16,32 on cpu, 64,128,256,512 on cuda)",
    )
    p.add_argument("--threads", type=int, help="loader threads / DataLoader workers (default: 2 on cpu, 8 on cuda)")
    p.add_argument(
        "--loader",
        default="auto",
        choices=["auto", "dali", "torch"],
        help="loader of (a) and (c) (default: auto = DALI on cpu; cuda always uses torch)",
    )
    p.add_argument(
        "--classic-grads",
        default="all",
        choices=["all", "as-loaded"],
        help="(b)'s parameters requiring grad: all (a model built in a script: full backward, the seed's "
        "way) or as-loaded (enhancer's loader: layer4 + head, backward stops there) (default: %(default)s)",
    )
    p.add_argument(
        "--contenders",
        default="enhance,classic,forward",
        help=f"main table, from {', '.join(CONTENDERS)} (default: %(default)s)",
    )
    p.add_argument("--scale-contenders", default="enhance,forward", help="run at scale * N (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the main table; medians (default: %(default)s)")
    p.add_argument(
        "--extra-repeats", type=int, default=1, help="rounds of the scaling and batch-sweep runs (default: %(default)s)"
    )
    p.add_argument("--no-check", action="store_true", help="skip the classic-vs-enhancer output check")
    p.add_argument("--tmp", type=Path, help="folder for the copies and outputs (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file ('-': stdout)")
    for hidden in ("--worker", "--data", "--warm", "--checkpoint", "--out"):
        p.add_argument(hidden, type=str if hidden == "--worker" else Path, help=argparse.SUPPRESS)
    return p


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but CUDA is not available; run on a GPU machine or drop --device")
    args.n = args.n or (4096 if cuda else 256)
    args.batch_size = args.batch_size or (256 if cuda else 16)
    args.threads = args.threads if args.threads is not None else (min(8, os.cpu_count() or 1) if cuda else 2)
    if cuda:
        args.loader = "torch"  # DALI's wheel cannot travel to the lent GPU machines; torch-gpu decodes with nvJPEG
    for option in ("contenders", "scale_contenders"):
        names = [c.strip() for c in getattr(args, option).split(",") if c.strip()]
        unknown = set(names) - set(CONTENDERS)
        if unknown:
            raise SystemExit(f"--{option.replace('_', '-')}: unknown {sorted(unknown)}; valid: {', '.join(CONTENDERS)}")
        setattr(args, option, names)
    sweep = args.batch_sizes if args.batch_sizes is not None else ("64,128,256,512" if cuda else "8,16,32")
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
        "args": {
            k: v if isinstance(v, int | list) else str(v)
            for k, v in vars(args).items()
            if k not in ("worker", "data", "warm", "checkpoint", "out")
        },
    }
    with tempfile.TemporaryDirectory(prefix="e2e-bench-", dir=args.tmp) as tmp_name:
        main_runs, scale_runs, sweep_runs = _run_all(args, Path(tmp_name), report)
    report.update(
        main={c: _summary(r) for c, r in main_runs.items()},
        scaling={c: _summary(r) for c, r in scale_runs.items()},
        sweep={b: _summary(r) for b, r in sweep_runs.items()},
        seconds=(datetime.now(UTC) - started).total_seconds(),
    )
    report["acceptance"] = _print_tables(args, report)
    if args.json:
        text = json.dumps(report, indent=2)
        if str(args.json) == "-":
            print(text)
        else:
            args.json.write_text(text + "\n")


Runs = dict[Any, list[dict[str, Any]]]  # contender (or batch size) -> one result per round


def _run_all(args: argparse.Namespace, tmp: Path, report: dict[str, Any]) -> tuple[Runs, Runs, Runs]:
    """Checkpoint, output check (into ``report``), data copies, then the main, scaling and batch-sweep rounds."""
    from enhancer.models.demo import save_demo_checkpoint

    save_demo_checkpoint(str(tmp / "model.pt"), args.arch)
    contenders = list(args.contenders)
    if "classic" in contenders + args.scale_contenders:
        try:
            import pytorch_grad_cam  # noqa: F401
        except ImportError as exc:
            print(f"(b) classic pipeline skipped: pytorch-grad-cam cannot be imported ({exc})")
            contenders = [c for c in contenders if c != "classic"]
            args.scale_contenders = [c for c in args.scale_contenders if c != "classic"]
    report["check"] = None if args.no_check else _check(args, tmp)
    sizes = {args.n, args.n * args.scale} if args.scale else {args.n}
    for n in sorted(sizes):
        make_copies(sample_data(), tmp / f"data-{n}", n)
    for b in {args.batch_size, *args.batch_sizes}:
        make_copies(sample_data(), tmp / f"warm-{b}", max(b, 16))

    print(f"\nmain table: {args.repeats} rounds at N={args.n}")
    main_runs: Runs = {c: [] for c in contenders}
    for _ in range(args.repeats):
        for c in contenders:
            main_runs[c].append(_measure(args, tmp, c, tmp / f"data-{args.n}", args.batch_size))
    scale_runs: Runs = {c: [] for c in args.scale_contenders if args.scale}
    if scale_runs:
        print(f"\nscaling: {args.extra_repeats} round(s) at {args.scale}N={args.n * args.scale}")
    for _ in range(args.extra_repeats if scale_runs else 0):
        for c, runs in scale_runs.items():
            runs.append(_measure(args, tmp, c, tmp / f"data-{args.n * args.scale}", args.batch_size))
    sweep_runs: Runs = {b: [] for b in args.batch_sizes}
    if sweep_runs:
        print(f"\nbatch sweep of (a): {args.extra_repeats} round(s) at N={args.n}")
    for _ in range(args.extra_repeats if sweep_runs else 0):
        for b, runs in sweep_runs.items():
            runs.append(_measure(args, tmp, "enhance", tmp / f"data-{args.n}", b))
    return main_runs, scale_runs, sweep_runs


def _print_tables(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    """The Markdown tables and the goal lines; returns the goal figures for the JSON."""
    goals: dict[str, Any] = {}
    _print_main(args, report, goals)
    if report["scaling"]:
        _print_scaling(args, report["main"], report["scaling"], goals)
    if report["sweep"]:
        print(f"\nbatch sweep of (a) at N={args.n}, {args.extra_repeats} round(s)\n")
        print("| batch | images/s | peak RSS MiB | peak PSS MiB, with workers |")
        print("|---:|---:|---:|---:|")
        for b, s in report["sweep"].items():
            print(f"| {b} | {s['images_per_s']:.2f} | {s['peak_rss_mib']:.0f} | {s['tree_peak_pss_mib']:.0f} |")
    rate = {c: s["images_per_s"] for c, s in report["main"].items()}
    if args.device == "cuda" and "enhance" in rate:
        goals["gpu_images_per_s"] = rate["enhance"]
        print(
            f"\n{torch.cuda.get_device_name()}: (a) {rate['enhance']:.0f} images/s end to end (goal on an H100: "
            ">= 3000)"
        )
    return goals


def _print_main(args: argparse.Namespace, report: dict[str, Any], goals: dict[str, Any]) -> None:
    """The main table, then a/b, a/c and the output check against their goals."""
    print(
        f"\n{args.arch} at 224, N={args.n} files (the 16 real X-rays repeated), batch {args.batch_size}, "
        f"{args.device}, {args.threads} loader threads, (b) with grads on {args.classic_grads} parameters; median "
        f"of {args.repeats} rounds, each a fresh process after a warm-up pass\n"
    )
    print("| contender | loader | images/s (median) | all rounds | peak RSS MiB | peak PSS MiB, with workers |")
    print("|---|---|---:|---|---:|---:|")
    for c, s in report["main"].items():
        print(
            f"| {CONTENDERS[c]} | {s['loader']} | {s['images_per_s']:.2f} | "
            f"{', '.join(f'{v:.2f}' for v in s['rounds'])} | {s['peak_rss_mib']:.0f} | "
            f"{s['tree_peak_pss_mib']:.0f} |"
        )
    rate = {c: s["images_per_s"] for c, s in report["main"].items()}
    print()
    if "enhance" in rate and "classic" in rate:
        goals["a_over_b"] = rate["enhance"] / rate["classic"]
        print(
            f"a/b = {goals['a_over_b']:.2f} (goal >= {GOAL_VS_CLASSIC}): "
            f"{_verdict(goals['a_over_b'] >= GOAL_VS_CLASSIC)}"
        )
    if "enhance" in rate and "forward" in rate:
        goals["a_over_c"] = rate["enhance"] / rate["forward"]
        print(
            f"a/c = {goals['a_over_c']:.2f} (goal >= {GOAL_VS_FORWARD}): "
            f"{_verdict(goals['a_over_c'] >= GOAL_VS_FORWARD)}"
        )
    if report.get("check") is not None:
        goals["check_passed"] = report["check"]["passed"]
        print(
            f"classic vs enhancer outputs: {_verdict(goals['check_passed'])} (heatmap max |diff| "
            f"{report['check']['heatmap_max_abs']:.2g})"
        )


def _print_scaling(
    args: argparse.Namespace, main_table: dict[str, Any], scaling: dict[str, Any], goals: dict[str, Any]
) -> None:
    """Throughput and peak memory at N and at scale * N; (a)'s memory growth against its goal."""
    big = args.n * args.scale
    print(f"\nscaling: N={args.n} (main table) against {args.scale}N={big}, {args.extra_repeats} round(s)\n")
    print(
        f"| contender | images/s at {args.n} | images/s at {big} | peak RSS MiB at {args.n} | "
        f"peak RSS MiB at {big} | memory {args.scale}N/N | PSS with workers, MiB at {args.n} / {big} |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for c, s in scaling.items():
        base = main_table.get(c)
        if base is None:
            print(
                f"| {CONTENDERS[c]} | - | {s['images_per_s']:.2f} | - | {s['peak_rss_mib']:.0f} | - | "
                f"- / {s['tree_peak_pss_mib']:.0f} |"
            )
            continue
        growth = s["peak_rss_mib"] / base["peak_rss_mib"]
        goals.setdefault("memory_growth", {})[c] = growth
        print(
            f"| {CONTENDERS[c]} | {base['images_per_s']:.2f} | {s['images_per_s']:.2f} | "
            f"{base['peak_rss_mib']:.0f} | {s['peak_rss_mib']:.0f} | {growth:.3f} | "
            f"{base['tree_peak_pss_mib']:.0f} / {s['tree_peak_pss_mib']:.0f} |"
        )
    if "enhance" in goals.get("memory_growth", {}):
        g = goals["memory_growth"]["enhance"]
        print(
            f"\n(a) peak memory {args.scale}N/N = {g:.3f} (goal <= {GOAL_MEMORY_GROWTH}): "
            f"{_verdict(g <= GOAL_MEMORY_GROWTH)}"
        )


if __name__ == "__main__":
    main()
