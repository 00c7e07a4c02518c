"""Loader throughput, side by side: DALI on CPU threads, the torch DataLoader, and single-process PIL.

Usage::

    .venv/bin/python benchmarks/loader_bench.py                       # 512 files, batch 64, 2 threads/workers
    .venv/bin/python benchmarks/loader_bench.py --n 2048 --threads 8 --device cuda

The 16 real validation X-rays (``enhancer fetch-samples``, kept in the user cache) are symlinked into a temporary
ImageFolder until there are ``--n`` files; every contender runs the real hot path (``enhancer.data.make_loader``:
decode, grey, 224x224 model input normalised, 512x512 uint8 crop source) after one warm-up pass over the first batches.
"single-process PIL" is the torch loader with 0 workers (the same outputs, decoded in the main process);
"seed transform" is the original notebook's per-image torchvision pipeline (model input only), for reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_copies, sample_data

from enhancer.data import make_loader, scan, validate
from enhancer.data.dali_loader import dali_available
from enhancer.preprocessing import SEED_PREPROCESSING


def time_loader(samples: list, warmup: int, **kw: object) -> tuple[str, float, int]:
    make_loader(samples[:warmup], SEED_PREPROCESSING, **kw).__iter__().__next__()
    loader = make_loader(samples, SEED_PREPROCESSING, **kw)
    start = time.perf_counter()
    n = sum(len(batch) for batch in loader)
    return loader.name, time.perf_counter() - start, n


def time_seed_transform(samples: list, batch_size: int) -> tuple[str, float, int]:
    tf = T.Compose(
        [
            T.Grayscale(1),
            T.Resize((224, 224)),
            T.ToTensor(),
            T.Normalize(SEED_PREPROCESSING.mean, SEED_PREPROCESSING.std),
        ]
    )
    tf(Image.open(samples[0].path))
    start = time.perf_counter()
    n = 0
    for b in range(0, len(samples), batch_size):
        n += len(torch.stack([tf(Image.open(s.path)) for s in samples[b : b + batch_size]]))
    return "seed transform (PIL, 1 process)", time.perf_counter() - start, n


def per_image_costs(paths: list[str], source_size: int, rounds: int = 5) -> list[tuple[str, float, float]]:
    """Single-thread ms/image of decode, +224 resize, +source resize: DALI CPU operators vs Pillow (best of rounds)."""
    from nvidia.dali import fn, pipeline_def, types

    def dali(stage: int) -> float:
        @pipeline_def(batch_size=len(paths), num_threads=1, device_id=None, exec_async=False, exec_pipelined=False)
        def pipe() -> tuple:
            encoded, _ = fn.readers.file(files=paths)
            grey = fn.decoders.image(encoded, device="cpu", output_type=types.GRAY)
            outs = [grey]
            for size in (224, source_size)[:stage]:
                outs.append(
                    fn.resize(grey, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True)
                )
            return tuple(outs)

        p = pipe()
        p.build()
        p.run()
        return best(p.run)

    def pil(stage: int) -> float:
        def run() -> None:
            for path in paths:
                with Image.open(path) as im:
                    im.load()
                    for size in (224, source_size)[:stage]:
                        im.resize((size, size), Image.BILINEAR)

        return best(run)

    def best(fn_: Callable[[], object]) -> float:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn_()
            times.append(time.perf_counter() - start)
        return 1000 * min(times) / len(paths)

    labels = ("decode", "decode + 224 resize", f"decode + 224 + {source_size} resize")
    return [(label, dali(stage), pil(stage)) for stage, label in enumerate(labels)]


Contender = tuple[str, Callable[[], tuple[str, float, int]]]  # label, timed run -> (loader name, seconds, images)
Row = tuple[str, str, float, int]  # label, loader name, seconds, images


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="ImageFolder to replicate (default: the 16 sample X-rays, fetched)"
    )
    parser.add_argument("--n", type=int, default=512, help="number of files (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=2, help="DALI threads / DataLoader workers (default: %(default)s)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument(
        "--repeat", type=int, default=2, help="rounds over all contenders; the best round counts (default: %(default)s)"
    )
    args = parser.parse_args()
    args.data = args.data or sample_data()
    return args


def _contenders(samples: list, args: argparse.Namespace) -> list[Contender]:
    common = {"batch_size": args.batch_size, "device": args.device}
    contenders: list[Contender] = []
    if dali_available():
        contenders.append(
            (
                f"DALI, {args.threads} threads",
                lambda: time_loader(samples, args.batch_size, loader="dali", num_threads=args.threads, **common),
            )
        )
    return contenders + [
        (
            f"torch DataLoader, {args.threads} workers",
            lambda: time_loader(samples, args.batch_size, loader="torch", num_threads=args.threads, **common),
        ),
        (
            "single-process PIL",
            lambda: time_loader(samples, args.batch_size, loader="torch", num_threads=0, **common),
        ),
        ("seed transform, 224 only", lambda: time_seed_transform(samples, args.batch_size)),
    ]


def _best_rounds(contenders: list[Contender], repeat: int, n_expected: int) -> list[Row]:
    best: dict[str, tuple[str, float, int]] = {}
    for _ in range(repeat):  # interleaved rounds, best of each: robust to other load on a shared machine
        for label, fn in contenders:
            name, seconds, n = fn()
            assert n == n_expected, (label, n)
            if label not in best or seconds < best[label][1]:
                best[label] = (name, seconds, n)
    return [(label, *best[label]) for label, _ in contenders]


def _print_results(rows: list[Row], args: argparse.Namespace) -> None:
    baseline = next(n / s for label, _, s, n in rows if label == "single-process PIL")
    print(
        f"\n{args.n} files ({len(scan(args.data).samples)} real X-rays repeated), batch {args.batch_size}, "
        f"outputs: 224x224 model input + 512x512 crop source\n"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min; other processes share these cores)\n")
    print("| loader | name | images/s | seconds | vs single-process PIL |")
    print("|---|---|---:|---:|---:|")
    for label, name, seconds, n in rows:
        print(f"| {label} | {name} | {n / seconds:.1f} | {seconds:.2f} | {n / seconds / baseline:.2f}x |")
    if dali_available():
        paths = [s.path for s in scan(args.data).samples]
        print("\nper-image CPU cost, one thread (ms/image, best of 5 passes over the real images)\n")
        print("| stage | DALI CPU operators | Pillow |")
        print("|---|---:|---:|")
        for label, dali_ms, pil_ms in per_image_costs(paths, 512):
            print(f"| {label} | {dali_ms:.2f} | {pil_ms:.2f} |")


def main() -> None:
    args = _parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        make_copies(args.data, Path(tmp), args.n)
        samples, rejected = validate(scan(tmp).samples, level="header", workers=args.threads)
        assert not rejected, rejected
        rows = _best_rounds(_contenders(samples, args), args.repeat, len(samples))
    _print_results(rows, args)


if __name__ == "__main__":
    main()
