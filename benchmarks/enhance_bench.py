"""The whole enhance job against forward-only inference through the same loader, side by side in one run.

Usage::

    .venv/bin/python benchmarks/enhance_bench.py                      # resnet101 at 224, 64 files, batch 16, CPU
    .venv/bin/python benchmarks/enhance_bench.py --n 256 --batch-size 32 --json results.json

(a) ``enhancer.enhance.run_enhance`` as shipped (loader -> Grad-CAM -> crops, enhanced images -> HDF5 writer
thread), and (c) forward-only: the same loader feeding ``model(x)`` under ``torch.inference_mode`` with nothing
stored, the ceiling any Grad-CAM job can reach. The 16 real sample X-rays are repeated to ``--n`` files;
contenders alternate over ``--repeats`` rounds after a warm-up, and the median counts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_copies, sample_data

from enhancer.data import make_loader, scan
from enhancer.enhance import run_enhance
from enhancer.models.checkpoints import load_checkpoint
from enhancer.models.demo import save_demo_checkpoint
from enhancer.specs import EnhanceSpec


def forward_only(data: Path, checkpoint: Path, *, batch_size: int, device: str, threads: int) -> float:
    ck = load_checkpoint(checkpoint)
    model = ck.model.to(device).eval()
    samples = list(scan(data).samples)
    start = time.perf_counter()
    loader = make_loader(samples, ck.preprocessing, batch_size=batch_size, device=device, num_threads=threads)
    n = 0
    with torch.inference_mode():
        for batch in loader:
            model(batch.image).argmax(1).cpu()
            n += len(batch)
    return n / (time.perf_counter() - start)


def whole_job(data: Path, checkpoint: Path, out: Path, *, batch_size: int, device: str, threads: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    spec = EnhanceSpec(
        data=str(data),
        out=str(out),
        checkpoint=str(checkpoint),
        batch_size=batch_size,
        device=device,
        num_threads=threads,
    )
    summary = run_enhance(spec, progress=False)
    return summary.n_written / summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="files (default: %(default)s)")
    parser.add_argument("--arch", default="resnet101", help="zoo architecture (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="loader threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the median counts (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="enhance-bench-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        make_copies(sample_data(), data, args.n)
        checkpoint = Path(save_demo_checkpoint(str(tmp / "model.pt"), args.arch))
        common = {"batch_size": args.batch_size, "device": args.device, "threads": args.threads}
        warm = tmp / "warm"
        make_copies(sample_data(), warm, args.batch_size)
        whole_job(warm, checkpoint, tmp / "warm-out", **common)
        forward_only(warm, checkpoint, **common)
        rates: dict[str, list[float]] = {"enhance job": [], "forward only": []}
        for _ in range(args.repeats):
            rates["enhance job"].append(whole_job(data, checkpoint, tmp / "out", **common))
            rates["forward only"].append(forward_only(data, checkpoint, **common))
    median = {k: statistics.median(v) for k, v in rates.items()}
    ratio = median["enhance job"] / median["forward only"]
    print(f"\n{args.arch} at 224, {args.n} files, batch {args.batch_size}, {args.device}, median of {args.repeats}\n")
    print("| contender | images/s (median) | all rounds |")
    print("|---|---:|---|")
    for name, values in rates.items():
        print(f"| {name} | {median[name]:.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"\nenhance job / forward only = {ratio:.2f} (expected >= 0.8)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "images_per_s": rates,
                    "median": median,
                    "ratio": ratio,
                    "machine": machine(),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
