"""The crops' resampling: ``enhancer.explain.roi_resample`` against the torchvision ``roi_align`` it replaces.

Usage::

    .venv/bin/python benchmarks/roi_resample_bench.py [--device cpu|cuda] [--batch 64] [--threads N]

One batch as the enhance job crops it: N sources 512 x 512 (uint8 values as float), one box per image covering 40-90 %
of it, resized to 224 x 224. The two contenders run alternately (``--repeats`` times each) so that load on a shared
machine hits both alike; prints the minimum and median of each, their ratio, and the largest difference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import common
import torch
from torchvision.ops import roi_align

from enhancer.explain.roi_resample import roi_resample


def realistic_batch(n: int, side: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """n random 8-bit sources (side x side, float) and boxes (n, 4) xyxy covering 40-90 % of each, integer corners."""
    generator = torch.Generator().manual_seed(0)
    source = torch.randint(0, 256, (n, 1, side, side), generator=generator).float()
    extent = (torch.rand(n, 2, generator=generator) * 0.5 + 0.4) * side
    corner = torch.rand(n, 2, generator=generator) * (side - extent)
    boxes = torch.cat([corner, corner + extent], 1).round()
    return source.to(device), boxes.to(device)


def timed(contenders: dict[str, Callable[[], torch.Tensor]], repeats: int, device: str) -> dict[str, list[float]]:
    """Seconds per call of each contender, run in turns after one warm-up call each."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for run in contenders.values():
        run()
    for _ in range(repeats):
        for name, run in contenders.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default: 64)")
    parser.add_argument("--source", type=int, default=512, help="source side in pixels (default: 512)")
    parser.add_argument("--crop", type=int, default=224, help="crop side in pixels (default: 224)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls of each contender (default: 15)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0: torch's default (default: 0)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    source, boxes = realistic_batch(args.batch, args.source, args.device)
    rois = torch.cat([torch.arange(args.batch, device=args.device, dtype=torch.float)[:, None], boxes], 1)
    size = (args.crop, args.crop)
    contenders = {
        "torchvision roi_align": lambda: roi_align(source, rois, size, 1.0, 0, True),
        "roi_resample": lambda: roi_resample(source, boxes, size, max_grid=args.source // args.crop + 1),
    }
    difference = (contenders["roi_resample"]() - contenders["torchvision roi_align"]()).abs().max()
    times = timed(contenders, args.repeats, args.device)
    print(common.machine())
    threads = torch.get_num_threads()
    print(f"N={args.batch}, source {args.source}^2 -> crop {args.crop}^2, {args.device}, {threads} CPU threads")
    for name, seconds in times.items():
        print(f"{name:>22}: min {min(seconds) * 1e3:7.1f} ms, median {statistics.median(seconds) * 1e3:7.1f} ms")
    ratio = min(times["roi_resample"]) / min(times["torchvision roi_align"])
    print(f"roi_resample / roi_align (min): {ratio:.2f}; largest difference {float(difference):.2e} (values 0..255)")


if __name__ == "__main__":
    main()
