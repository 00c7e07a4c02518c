"""Grad-CAM throughput, side by side: forward only, head-only Grad-CAM (``enhancer.explain.cam.grad_cam``) and the
classic hook + full-backward Grad-CAM, on the same model, batch and device.

Usage::

    python benchmarks/cam_bench.py                        # CPU: resnet101, 224 px, batch 16, float32
    python benchmarks/cam_bench.py --gpu                  # CUDA: bf16 autocast + channels_last, batch 256
    python benchmarks/cam_bench.py --arch resnet50 --batch 8 --iters 5 --device cpu

The model is an untrained zoo model with calibrated BatchNorm (``enhancer.models.demo``) so activations are
realistic (no inf/NaN); speed does not depend on the weights otherwise. The full-backward variant is what
hook-based libraries (pytorch-grad-cam) do with a freshly loaded model: every parameter requires grad, one backward
pass from the score through the whole network. All three keep the batch on the device; timings are medians over
interleaved rounds (other processes on a shared machine hit all three alike).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

from enhancer.explain.cam import AMP, CamSettings, grad_cam
from enhancer.models.demo import build_demo_model, hook_target, xray_like_batch
from enhancer.models.zoo import preprocessing_for

Mode = Callable[[], None]


def full_backward_cam(model: nn.Module, x: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    """Classic Grad-CAM: forward hook on the target layer, backward from the softmax probability of the predicted
    class through the whole network, seed reduction (mean over channels, ReLU, divide by max)."""
    saved: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        saved["a"] = out
        out.register_hook(lambda g: saved.__setitem__("g", g))

    handle = hook_target(model).register_forward_hook(hook)
    try:
        with torch.autocast(x.device.type, dtype=amp) if amp else nullcontext():
            logits = model(x).float()
        probs = logits.softmax(1)
        probs.gather(1, probs.argmax(1, keepdim=True)).sum().backward()
    finally:
        handle.remove()
    a, g = saved["a"].detach().float(), saved["g"].float()
    cam = (g.mean((2, 3), keepdim=True) * a).mean(1).relu()
    model.zero_grad(set_to_none=True)
    return cam / cam.flatten(1).amax(1).clamp_min(1e-30)[:, None, None]


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="resnet101", help="zoo architecture (default: resnet101)")
    p.add_argument("--size", type=int, default=224, help="input side in pixels (default: 224)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 16 on CPU, 256 with --gpu)")
    p.add_argument("--iters", type=int, default=3, help="timed rounds per mode (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds per mode first (default: 1)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda with --gpu, else cpu)")
    p.add_argument(
        "--amp",
        choices=["none", "bf16", "fp16"],
        default=None,
        help="autocast for the trunk, CUDA only (default: bf16 with --gpu, else none)",
    )
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (default with --gpu)")
    p.add_argument("--gpu", action="store_true", help="GPU preset: cuda, bf16 autocast, channels_last, batch 256")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args()


def _modes(model: nn.Module, x: torch.Tensor, settings: CamSettings, amp: torch.dtype | None) -> dict[str, Mode]:
    """The three contenders on one model and batch."""

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=amp) if amp else nullcontext():
            model(x)

    def head_only() -> None:
        grad_cam(model, x, settings)

    def full_backward() -> None:
        model.requires_grad_(True)
        full_backward_cam(model, x, amp)

    return {"forward only": forward, "head-only Grad-CAM": head_only, "full-backward Grad-CAM": full_backward}


def _time(modes: dict[str, Mode], device: torch.device, warmup: int, iters: int) -> dict[str, list[float]]:
    """Seconds per call of each mode, rounds interleaved; the first ``warmup`` rounds are not kept."""
    times: dict[str, list[float]] = {name: [] for name in modes}
    for r in range(warmup + iters):
        for name, fn in modes.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def _print_table(times: dict[str, list[float]], batch: int) -> None:
    rate = {name: batch / statistics.median(t) for name, t in times.items()}
    fwd, head, full = rate["forward only"], rate["head-only Grad-CAM"], rate["full-backward Grad-CAM"]
    print("| mode | images/s | s/batch | vs forward | vs full-backward |")
    print("|---|---:|---:|---:|---:|")
    for name, ips in rate.items():
        print(f"| {name} | {ips:.1f} | {batch / ips:.3f} | {ips / fwd:.2f}x | {ips / full:.2f}x |")
    ok = head >= 2.5 * full and head >= 0.85 * fwd
    print(f"head-only >= 2.5x full-backward and >= 0.85x forward: {'yes' if ok else 'NO'}")


def main() -> None:
    args = _parse_args()
    device = torch.device(args.device or ("cuda" if args.gpu else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu / --device cuda: no CUDA device here; run without them for the CPU figures")
    amp_name = args.amp or ("bf16" if args.gpu else "none")
    amp_name = None if amp_name == "none" else amp_name
    channels_last = args.channels_last or args.gpu
    batch = args.batch or (256 if args.gpu else 16)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    model = build_demo_model(args.arch, input_size=args.size, n_calibration=8).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    in_chans = preprocessing_for(args.arch, args.size).in_chans
    x = xray_like_batch(batch, args.size, in_chans=in_chans).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    settings = CamSettings(amp=amp_name, channels_last=channels_last)
    amp = AMP[amp_name] if device.type == "cuda" else None
    times = _time(_modes(model, x, settings, amp), device, args.warmup, args.iters)

    print(machine())
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, "
        f"{args.arch} {args.size}x{args.size}, batch {batch}, amp {amp_name or 'none'}, "
        f"channels_last {channels_last}, {args.iters} timed rounds (median)"
    )
    _print_table(times, batch)


if __name__ == "__main__":
    main()
