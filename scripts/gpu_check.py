"""The GPU path checked in one run: speed of the enhance job and of a bare forward on the same loader, GPU busy
fraction, store speed, and the maps' agreement (head-only vs full-backward Grad-CAM, bf16 vs float32).

Usage (through ``scripts/gpu-check.sh``, which installs what is missing and sets PYTHONPATH)::

    scripts/gpu-check.sh                        # one NVIDIA GPU: resnet101, batch 256, 4096 JPEGs -> gpu-check.json
    scripts/gpu-check.sh --cpu --quick          # the same code on the CPU, small (what `make test` runs)
    scripts/gpu-check.sh --n 16384 --out /tmp/gpu.json

It runs from the source tree with whatever torch (2.4 or newer) and Python (3.11, 3.12) the machine has, uses the
torch loader (nvJPEG decode on the GPU; DALI is not needed) and the 16 sample X-rays ($ENHANCER_SAMPLES, the user
cache or ../shared/data/kermany-val), replicated to N files by symlinks; without them it writes synthetic X-ray-like
JPEGs. Every check has a status (pass, fail, or info where a goal does not apply, e.g. speed on the CPU) and a
reason; the JSON has the same keys on every device. Exit code 0 when no check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from enhancer.data import make_loader, scan
from enhancer.data.prefetch import Prefetcher
from enhancer.enhance import run_enhance
from enhancer.enhance.batch_loop import process_batch
from enhancer.enhance.job_settings import load_model, output_settings
from enhancer.explain import cam
from enhancer.models.demo import hook_target, save_demo_checkpoint, xray_like_images
from enhancer.specs import EnhanceSpec
from enhancer.store import AsyncShardWriter, per_sample_shapes
from enhancer.store.encoding import default_write_threads

KEYS = (
    "device",
    "device_name",
    "versions",
    "config",
    "samples",
    "enhance_images_per_s",
    "enhance_job_images_per_s",
    "enhance_startup_s",
    "forward_images_per_s",
    "enhance_over_forward",
    "gpu_busy_fraction",
    "store_samples_per_s",
    "store_config",
    "head_vs_full_backward_max_abs",
    "bf16_vs_fp32_correlation",
    "checks",
    "passed",
    "seconds",
)
GOAL_GPU_IMAGES_PER_S = 3000.0  # resnet101 at 224, end to end, on one H100/H200 (bf16)
GOAL_OVER_FORWARD = 0.8
GOAL_GPU_BUSY = 0.8
GOAL_MAP_MAX_ABS = 1e-3
GOAL_BF16_CORRELATION = 0.95
TIME_BUDGET_S = 480.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="run on the CPU (what CI does)")
    p.add_argument("--quick", action="store_true", help="small: tinyvgg, 32 files, batch 8")
    p.add_argument("--n", type=int, help="files (default: 4096; 32 with --quick)")
    p.add_argument("--batch-size", type=int, help="(default: 256; 8 with --quick)")
    p.add_argument("--arch", help="zoo architecture at 224 (default: resnet101; tinyvgg with --quick)")
    p.add_argument("--threads", type=int, help="loader workers (default: cores - 2, at most 8; 0 with --quick)")
    p.add_argument("--checkpoint", type=Path, help="classifier checkpoint at 224 (default: a demo model of --arch)")
    p.add_argument("--out", type=Path, default=Path("gpu-check.json"), help="(default: %(default)s)")
    p.add_argument("--tmp", type=Path, help="work folder (default: a temporary folder, removed after)")
    return p


def _config(args: argparse.Namespace) -> dict[str, Any]:
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible (torch.cuda.is_available() is False); run with --cpu to check the CPU")
    cores = os.cpu_count() or 1
    return {
        "device": "cpu" if args.cpu else "cuda",
        "quick": args.quick,
        "n": args.n or (32 if args.quick else 4096),
        "batch_size": args.batch_size or (8 if args.quick else 256),
        "arch": args.arch or ("tinyvgg" if args.quick else "resnet101"),
        "threads": args.threads if args.threads is not None else (0 if args.quick else max(1, min(8, cores - 2))),
        "loader": "torch",
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
    }


def samples_dir(tmp: Path) -> tuple[Path, str]:
    """The 16 real sample X-rays when this machine has them, else 16 synthetic X-ray-like JPEGs."""
    from enhancer.data.samples import cached_samples

    try:
        return cached_samples(), "the 16 real sample X-rays"
    except Exception as exc:  # no network, no copy: make stand-ins
        print(f"sample X-rays unavailable ({str(exc).splitlines()[0][:120]}); using synthetic X-ray-like JPEGs")
    root = tmp / "synthetic"
    images = (xray_like_images(16, 512, seed=3)[:, 0] * 255).round().to(torch.uint8).numpy()
    for i, img in enumerate(images):
        folder = root / ("NORMAL" if i % 2 else "PNEUMONIA")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize((640, 560)).save(folder / f"synthetic-{i:02d}.jpeg", quality=90)
    return root, "16 synthetic X-ray-like JPEGs (no sample X-rays on this machine)"


def replicate(src: Path, dst: Path, n: int) -> Path:
    """An ImageFolder under ``dst`` with ``n`` symlinks cycling over the images of ``src``."""
    found = scan(str(src))
    for i in range(n):
        s = found.samples[i % len(found.samples)]
        folder = dst / found.class_names[s.label]
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(s.path, folder / f"{i:05d}_{os.path.basename(s.path)}")
    return dst


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_enhance(cfg: dict[str, Any], data: Path, warm: Path, checkpoint: Path, tmp: Path) -> dict[str, Any]:
    """The enhance job as shipped (torch loader, bf16 on CUDA): a warm-up run, then the timed run over ``data``."""

    def spec(src: Path, out: str) -> EnhanceSpec:
        return EnhanceSpec(
            data=str(src),
            out=str(tmp / out),
            checkpoint=str(checkpoint),
            batch_size=cfg["batch_size"],
            device=cfg["device"],
            loader=cfg["loader"],
            num_threads=cfg["threads"],
            amp=cfg["device"] == "cuda",
        )

    run_enhance(spec(warm, "out-warm"), progress=False)
    summary = run_enhance(spec(data, "out-timed"), progress=False)
    print(summary.line(), flush=True)
    shutil.rmtree(tmp / "out-timed", ignore_errors=True)
    return {
        "n_written": summary.n_written,
        "loader": summary.loader,
        "images_per_s": summary.n_written / summary.loop_s if summary.loop_s > 0 else 0.0,
        "job_images_per_s": summary.images_per_s,
        "startup_s": summary.startup_s,
        "busy": summary.device_busy_fraction,
    }


def measure_forward(cfg: dict[str, Any], data: Path, checkpoint: Path) -> float:
    """``model(x)`` on the same loader (prefetched the same way), inference mode, bf16 + channels_last on CUDA:
    images/s from the first batch to the last prediction on the host."""
    ck, _ = load_model(EnhanceSpec(data=str(data), out="-", checkpoint=str(checkpoint)))
    device, cuda = cfg["device"], cfg["device"] == "cuda"
    model = ck.model.to(device).eval()
    if cam.prefers_channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    samples = list(scan(str(data)).samples)
    loader = make_loader(
        samples, ck.preprocessing, batch_size=cfg["batch_size"], loader=cfg["loader"], device=device,
        num_threads=cfg["threads"],
    )  # fmt: skip
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    preds, n, started = [], 0, None
    with torch.inference_mode(), autocast, Prefetcher(loader) as batches:
        for batch, _ in batches:
            if started is None:
                _sync(device)  # the clock starts with the first batch on the device, like the job's loop
                started = time.perf_counter()
            x = (
                batch.image.contiguous(memory_format=torch.channels_last)
                if cam.prefers_channels_last(device)
                else batch.image
            )
            preds.append(model(x).argmax(1))
            n += len(batch)
        torch.cat(preds).cpu()
    return n / (time.perf_counter() - started) if started is not None else 0.0


def measure_store(cfg: dict[str, Any], data: Path, checkpoint: Path, tmp: Path) -> tuple[float, dict[str, Any]]:
    """The shard writer alone, as the job makes it (default codecs, the job's write threads): one real batch of
    outputs written until ``n`` samples; samples/s from the first hand-over to the closed shard, and the writer's
    codecs and threads."""
    spec = EnhanceSpec(data=str(data), out=str(tmp / "store"), checkpoint=str(checkpoint), device=cfg["device"])
    ck, target = load_model(spec)
    settings = output_settings(spec, ck, cfg["device"])
    samples = list(scan(str(data)).samples)[: cfg["batch_size"]]
    loader = make_loader(samples, ck.preprocessing, batch_size=len(samples), loader="torch", device=cfg["device"])
    h, w = target.shape[-2:]
    shapes = per_sample_shapes(settings.fields, H=224, W=224, h=h, w=w, Hc=224, Wc=224, C=ck.config.num_classes)
    rounds = max(1, cfg["n"] // len(samples))
    threads = spec.write_threads or default_write_threads(cfg["threads"])
    writer = AsyncShardWriter(
        spec.out, 0, 1, maxsize=spec.queue_size, copy=False, shapes=shapes, fields=settings.fields, codecs=spec.codec,
        compression=spec.compression, write_threads=threads, attrs={}, expected=rounds * len(samples), overwrite=True,
    )  # fmt: skip
    model = ck.model.to(cfg["device"]).eval()
    batch = next(iter(loader))
    paths = [s.path for s in samples]
    arrays = process_batch(model, batch, {"path": paths}, settings, target=target, codecs=writer.codecs).wait()
    started = time.perf_counter()
    with writer:
        for k in range(rounds):
            writer.put({**arrays, "index": arrays["index"] + k * len(samples)})
    seconds = time.perf_counter() - started
    shutil.rmtree(spec.out, ignore_errors=True)
    used = {"codecs": {name: c.name for name, c in writer.codecs.items()}, "write_threads": threads}
    return rounds * len(samples) / seconds, used


def full_backward_cam(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The classic Grad-CAM as hook-based libraries compute it: every parameter requiring grad, a forward hook on the
    target layer, one backward from the predicted class's logit through the whole network; channel-sum weights,
    ReLU, divided by the max (pytorch-grad-cam's map before its min-max scaling, which a ReLU'd map shares)."""
    saved: dict[str, torch.Tensor] = {}

    def hook(_m: torch.nn.Module, _i: Any, out: torch.Tensor) -> None:
        saved["a"] = out
        out.register_hook(lambda g: saved.__setitem__("g", g))

    model.requires_grad_(True)
    handle = hook_target(model).register_forward_hook(hook)
    try:
        logits = model(x)
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    a, g = saved["a"].detach().float(), saved["g"].float()
    raw = (g.mean((2, 3), keepdim=True) * a).sum(1).relu()
    return raw / raw.flatten(1).amax(1).clamp_min(1e-30)[:, None, None]


def map_agreement(cfg: dict[str, Any], data: Path, checkpoint: Path) -> tuple[float, float]:
    """(max |head-only - full-backward| of the float32 maps, median per-image correlation of the upsampled bf16
    and float32 maps) on the first images of ``data``."""
    ck, _ = load_model(EnhanceSpec(data=str(data), out="-", checkpoint=str(checkpoint)))
    device = cfg["device"]
    model = ck.model.to(device).eval()
    samples = list(scan(str(data)).samples)[:16]
    x = next(iter(make_loader(samples, ck.preprocessing, batch_size=16, loader="torch", device=device))).image
    settings = cam.CamSettings(score="logit", channel_reduce="sum")  # the same score and reduction as the reference
    ours = cam.grad_cam(model, x, settings)
    full = full_backward_cam(model, x)
    fp32 = cam.upsample(cam.grad_cam(model, x).cam, x.shape[-2:]).flatten(1)
    with torch.autocast(device, dtype=torch.bfloat16):  # grad_cam leaves the caller's autocast on the trunk
        bf16 = cam.upsample(cam.grad_cam(model, x).cam, x.shape[-2:]).flatten(1)
    corr = [float(np.corrcoef(a, b)[0, 1]) for a, b in zip(fp32.cpu().numpy(), bf16.cpu().numpy(), strict=True)]
    return float((ours.cam - full).abs().max()), float(np.nanmedian(corr))


def _check(value: float | None, goal: float, judged: bool, what: str, above: bool = True) -> dict[str, Any]:
    """One check's verdict: ``value`` against ``goal`` (at least, or at most with ``above=False``)."""
    if value is None or not judged:
        return {"status": "info", "value": value, "goal": goal, "reason": f"{what}: reported only on this device"}
    ok = value >= goal if above else value <= goal
    sign = ">=" if above else "<="
    verdict = "meets" if ok else "misses"
    return {"status": "pass" if ok else "fail", "value": value, "goal": goal, "reason": f"{verdict} {sign} {goal:g}"}


def judge(r: dict[str, Any], cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every check with its status and reason. Speed goals apply on a GPU only (a CPU runs the same code for CI);
    the store must keep up with the model and the maps must agree everywhere."""
    gpu = cfg["device"] == "cuda" and not cfg["quick"]
    checks = {
        "all_images_written": _check(float(r["n_written"]), float(cfg["n"]), True, "images written"),
        "enhance_speed": _check(r["enhance_images_per_s"], GOAL_GPU_IMAGES_PER_S, gpu, "speed goal set for a GPU"),
        "enhance_over_forward": _check(r["enhance_over_forward"], GOAL_OVER_FORWARD, gpu, "speed goal set for a GPU"),
        "gpu_busy": _check(r["gpu_busy_fraction"], GOAL_GPU_BUSY, gpu, "GPU busy fraction"),
        "store_keeps_up": _check(r["store_samples_per_s"], r["forward_images_per_s"], True, "store vs forward"),
        "head_vs_full_backward": _check(
            r["head_vs_full_backward_max_abs"], GOAL_MAP_MAX_ABS, True, "map agreement", above=False
        ),
        "bf16_vs_fp32": _check(r["bf16_vs_fp32_correlation"], GOAL_BF16_CORRELATION, True, "bf16 maps"),
        "time_budget": _check(r["seconds"], TIME_BUDGET_S, gpu, "time budget set for a GPU", above=False),
    }
    checks["store_keeps_up"]["reason"] += " the forward-only images/s (the store absorbs what the model makes)"
    return checks


def run_checks(cfg: dict[str, Any], tmp: Path, started: float) -> dict[str, Any]:
    src, kind = samples_dir(tmp)
    data = replicate(src, tmp / f"data-{cfg['n']}", cfg["n"])
    warm = replicate(src, tmp / "data-warm", cfg["batch_size"])
    # the demo model's residual branches damped: a random ResNet's maps are chaotic, a trained one's are not
    demo = cfg["checkpoint"] or save_demo_checkpoint(str(tmp / "demo.pt"), cfg["arch"], data=str(src), damped=True)
    checkpoint = Path(demo)
    step: Callable[[str], None] = lambda what: print(f"[{time.perf_counter() - started:6.1f} s] {what}", flush=True)  # noqa: E731
    step(f"{cfg['n']} files ({kind}), demo {cfg['arch']}; enhance job")
    enh = measure_enhance(cfg, data, warm, checkpoint, tmp)
    step("forward only, same loader")
    forward = measure_forward(cfg, data, checkpoint)
    step("store")
    store, store_config = measure_store(cfg, data, checkpoint, tmp)
    print(f"store: {store:,.0f} samples/s with {store_config}", flush=True)
    step("maps: head-only vs full backward, bf16 vs float32")
    max_abs, corr = map_agreement(cfg, src, checkpoint)
    return {
        "samples": kind,
        "n_written": enh["n_written"],
        "enhance_images_per_s": enh["images_per_s"],
        "enhance_job_images_per_s": enh["job_images_per_s"],
        "enhance_startup_s": enh["startup_s"],
        "forward_images_per_s": forward,
        "enhance_over_forward": enh["images_per_s"] / forward if forward else None,
        "gpu_busy_fraction": enh["busy"],
        "store_samples_per_s": store,
        "store_config": store_config,
        "head_vs_full_backward_max_abs": max_abs,
        "bf16_vs_fp32_correlation": corr,
    }


def _versions() -> dict[str, str]:
    import torchvision

    cuda = torch.version.cuda or "none"
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": cuda, "numpy": np.__version__}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = _config(args)
    started = time.perf_counter()
    device_name = torch.cuda.get_device_name() if cfg["device"] == "cuda" else platform.processor() or "cpu"
    print(f"gpu-check on {cfg['device']} ({device_name}): {cfg}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=args.tmp) as tmp_name:
        r = run_checks(cfg, Path(tmp_name), started)
    r.update(device=cfg["device"], device_name=device_name, versions=_versions(), config=cfg)
    r["seconds"] = time.perf_counter() - started
    r["checks"] = judge(r, cfg)
    r["passed"] = all(c["status"] != "fail" for c in r["checks"].values())
    report = {k: r[k] for k in KEYS}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, c in report["checks"].items():
        print(f"{c['status'].upper():<5} {name}: {c['value']} ({c['reason']})")
    print(f"{'PASSED' if report['passed'] else 'FAILED'} in {r['seconds']:.0f} s -> {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
