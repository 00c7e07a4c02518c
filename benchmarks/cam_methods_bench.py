"""CAM throughput per method, side by side with pytorch-grad-cam 1.5.7 on the same model, layer and batch.

(``cam_bench.py`` times head-only Grad-CAM against the classic full backward and a forward pass alone.)

Usage::

    python benchmarks/cam_methods_bench.py --method all --arch resnet101,densenet121             # CPU, 224 px, batch 16
    python benchmarks/cam_methods_bench.py --method gradcam,scorecam --arch resnet101 --json cam.json
    python benchmarks/cam_methods_bench.py --method all --arch resnet101 --device cuda --batch 64

Ours is ``enhancer.explain.compute.compute_cam`` plus what pytorch-grad-cam returns on top (the map bilinearly
resized to the input and min-max scaled, on the host); theirs is the method's class called on the same batch with
its default target (the predicted class). Both use pytorch-grad-cam's convention (score = the target logit, channel
sum, min-max), so the maps must agree: the table shows the largest difference. eigencam / eigengradcam: pytorch-grad-
cam keeps LAPACK's arbitrary sign of the principal component, ours makes its largest value positive, so an image can
come out as the other half of the projection; those are counted as "opposite sign", not as a difference.

Models: a zoo name is the seed's architecture (``resnet101``: the features/head closed form at its default layer,
as the enhance job runs it), any other name a
torchvision classifier with random weights and 2 classes (the forward-hook path), its layer the last module of
``features`` unless ``--layer`` names one. BatchNorm is calibrated and the head scaled on X-ray-like images so
activations are realistic; speed does not depend on the weights otherwise. Every parameter requires grad, as in a
freshly built or loaded model (pytorch-grad-cam's backward then runs through the whole network). Rounds are
interleaved (ours, theirs, then theirs, ours, ...): other processes on a shared machine slow both alike; figures are
medians. Score-CAM and Ablation-CAM cost a forward pass per channel and image (2048 x N for ResNet-101): they run on
the first ``--perturb-images`` images of the batch, ``--perturb-iters`` rounds.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's per-image progress bars (read at tqdm's import)

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine
from pgc_reference import reference_classes

from enhancer.explain.cam import METHODS, PERTURBATION_METHODS, CamSettings, upsample
from enhancer.explain.compute import compute_cam
from enhancer.models.demo import build_demo_model, calibrate_batchnorm, scale_head_to_unit_logits, xray_like_batch
from enhancer.models.registry import zoo_target_layer
from enhancer.models.zoo import ZOO

FLOORS = {m: 2.5 for m in ("gradcam", "hirescam", "gradcam++", "xgradcam", "layercam")}  # resnet101, CPU, batch 16


def build(arch: str, size: int, layer_name: str | None) -> tuple[nn.Module, str, bool, int]:
    """(calibrated model in eval mode, target layer name, whether the features/head halves apply, input channels)."""
    if arch in ZOO:
        model = build_demo_model(arch, input_size=size, n_calibration=8)
        default = zoo_target_layer(arch)
        return model, layer_name or default, layer_name in (None, default), 1 if not arch.startswith("tv-") else 3
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=2)
    calibrate_batchnorm(model, [xray_like_batch(8, size, in_chans=3, seed=1)])
    scale_head_to_unit_logits(model, xray_like_batch(8, size, in_chans=3, seed=2))
    if layer_name is None:
        layer_name = f"features.{list(dict(model.features.named_children()))[-1]}"
    return model, layer_name, False, 3


def ours(model: nn.Module, layer: nn.Module, closed_form: bool, x: torch.Tensor, settings: CamSettings) -> torch.Tensor:
    """compute_cam + what pytorch-grad-cam returns: min-max, resized to the input, min-max again, on the host."""
    r = compute_cam(model, x, layer=layer, split=model if closed_form else None, settings=settings)
    up = upsample(r.cam, x.shape[-2:])
    low, high = up.flatten(1).amin(1)[:, None, None], up.flatten(1).amax(1)[:, None, None]
    return ((up - low) / (high - low + 1e-7)).cpu()


def theirs(cls: type, model: nn.Module, layer: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    # reshape_transform=clone: on the CPU pytorch-grad-cam keeps the layer's output tensor itself, which an in-place
    # op after the layer (DenseNet's final ReLU) overwrites; the copy costs little and makes the maps comparable.
    kwargs = {"batch_size": batch} if cls.__name__ == "AblationCAM" else {}
    with cls(model=model, target_layers=[layer], reshape_transform=torch.clone, **kwargs) as cam:
        cam.batch_size = batch  # ScoreCAM's masked copies per forward
        out = torch.from_numpy(cam(input_tensor=x, targets=None))
    model.zero_grad(set_to_none=True)
    return out


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def forward_only(
    arch: str, layer_name: str, model: nn.Module, x: torch.Tensor, args: argparse.Namespace, device: torch.device
) -> dict:
    """The ceiling: ``model(x)`` under inference_mode, same batch and rounds."""

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(x).cpu()

    t = [timed(run, device)[0] for _ in range(args.warmup + args.iters)][args.warmup :]
    ips = len(x) / statistics.median(t)
    row = {"arch": arch, "layer": layer_name, "method": "forward only", "images": len(x), "rounds": len(t)}
    return {
        **row,
        "ours_images_per_s": ips,
        "theirs_images_per_s": None,
        "ratio": None,
        "max_abs_diff": None,
        "opposite_sign": 0,
    }


def bench_arch(arch: str, methods: list[str], args: argparse.Namespace, device: torch.device) -> list[dict]:
    model, layer_name, closed_form, in_chans = build(arch, args.size, args.layer)
    # every parameter requires grad, as in a freshly built or loaded torchvision / timm model (the zoo's builder
    # freezes the seed's untrained groups, which would stop pytorch-grad-cam's backward early; ours never needs it)
    model = model.to(device).requires_grad_(True)
    layer = model.get_submodule(layer_name)
    x_all = xray_like_batch(args.batch, args.size, in_chans=in_chans, seed=5).to(device)
    classes = reference_classes()
    rows = [forward_only(arch, layer_name, model, x_all, args, device)]
    for method in methods:
        slow = method in PERTURBATION_METHODS
        x = x_all[: args.perturb_images] if slow else x_all
        rounds = args.perturb_iters if slow else args.warmup + args.iters
        warmup = 0 if slow else args.warmup
        settings = CamSettings(
            method=method, score="logit", channel_reduce="sum", normalize="minmax", scorecam_batch=args.scorecam_batch
        )
        runs = {
            "ours": lambda x=x, s=settings: ours(model, layer, closed_form, x, s),
            "theirs": lambda x=x, m=method: theirs(classes[m], model, layer, x, args.scorecam_batch),
        }
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        maps: dict[str, torch.Tensor] = {}
        for r in range(rounds):
            for name in ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours"):
                seconds, maps[name] = timed(runs[name], device)
                if r >= warmup:
                    times[name].append(seconds)
        ips = {name: len(x) / statistics.median(t) for name, t in times.items()}
        per_image = (maps["ours"] - maps["theirs"]).abs().amax((1, 2))
        # pytorch-grad-cam's eigen maps keep LAPACK's arbitrary sign (ours: largest magnitude positive), so an
        # image can come out as the other half of the projection: counted apart, not as a difference
        compared = per_image[per_image <= 0.5] if method.startswith("eigen") else per_image
        flipped = len(per_image) - len(compared)
        diff = float(compared.max()) if len(compared) else None  # None: every image came out with the other sign
        rows.append(
            {
                "arch": arch,
                "layer": layer_name,
                "method": method,
                "images": len(x),
                "rounds": len(times["ours"]),
                "ours_images_per_s": ips["ours"],
                "theirs_images_per_s": ips["theirs"],
                "ratio": ips["ours"] / ips["theirs"],
                "max_abs_diff": diff,
                "opposite_sign": flipped,
            }
        )
        print(
            f"  {arch} {method}: {_rate(ips['ours'])} vs {_rate(ips['theirs'])} images/s, max |diff| {_diff(diff)}",
            flush=True,
        )
    return rows


def _rate(images_per_s: float) -> str:
    """Two decimals, three significant digits below 1 (Score-CAM's thousandths of an image per second)."""
    return f"{images_per_s:.2f}" if images_per_s >= 1 else f"{images_per_s:#.3g}"


def _diff(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1e}"


def table(rows: list[dict]) -> str:
    lines = [
        "| arch (layer) | method | images | ours images/s | pytorch-grad-cam images/s | ratio | max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["theirs_images_per_s"] is None:
            lines.append(
                f"| {r['arch']} (`{r['layer']}`) | {r['method']} | {r['images']} | "
                f"{_rate(r['ours_images_per_s'])} | | | |"
            )
            continue
        lines.append(
            f"| {r['arch']} (`{r['layer']}`) | {r['method']} | {r['images']} | {_rate(r['ours_images_per_s'])} | "
            f"{_rate(r['theirs_images_per_s'])} | {r['ratio']:.2f}x | {_diff(r['max_abs_diff'])}"
            + (f" ({r['opposite_sign']} of {r['images']} opposite sign)" if r["opposite_sign"] else "")
            + " |"
        )
    return "\n".join(lines)


def floors_met(rows: list[dict], device: torch.device, batch: int) -> str | None:
    """The acceptance line (resnet101, CPU, batch 16), or None when this run is not that configuration."""
    checked = [r for r in rows if r["arch"] == "resnet101" and r["method"] in FLOORS]
    if not checked or device.type != "cpu" or batch != 16:
        return None
    ok = all(r["ratio"] >= FLOORS[r["method"]] for r in checked)
    names = ", ".join(f"{r['method']} {r['ratio']:.2f}x" for r in checked)
    return f"resnet101 >= 2.5x pytorch-grad-cam ({names}): {'yes' if ok else 'NO'}"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--method", default="all", help=f"comma-separated, or all: {', '.join(METHODS)} (default: all)")
    p.add_argument("--arch", default="resnet101,densenet121", help="comma-separated (default: resnet101,densenet121)")
    p.add_argument("--layer", default=None, help="target layer (default: the zoo's, or the last of `features`)")
    p.add_argument("--size", type=int, default=224, help="input side in pixels (default: 224)")
    p.add_argument("--batch", type=int, default=16, help="images per batch (default: 16)")
    p.add_argument("--iters", type=int, default=3, help="timed rounds per method (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    p.add_argument("--perturb-images", type=int, default=1, help="scorecam/ablationcam images (default: 1)")
    p.add_argument("--perturb-iters", type=int, default=1, help="scorecam/ablationcam timed rounds (default: 1)")
    p.add_argument("--scorecam-batch", type=int, default=64, help="copies per forward, both sides (default: 64)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file ('-': stdout)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    methods = list(METHODS) if args.method == "all" else args.method.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--method: unknown {unknown}; valid: all, {', '.join(METHODS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    header = machine()
    print(header, flush=True)
    rows = [row for arch in args.arch.split(",") for row in bench_arch(arch, methods, args, device)]
    config = (
        f"device {device}, {args.size}x{args.size}, batch {args.batch} ({args.warmup} warm-up + {args.iters} timed "
        f"interleaved rounds, median); scorecam/ablationcam: {args.perturb_images} image(s), {args.perturb_iters} "
        f"round(s), {args.scorecam_batch} copies per forward; float32"
    )
    print(config)
    print(table(rows))
    verdict = floors_met(rows, device, args.batch)
    if verdict:
        print(verdict)
    if args.json:
        report = {"machine": header, "command": " ".join(sys.argv), "config": config, "results": rows}
        text = json.dumps({**report, "verdict": verdict}, indent=2)
        if str(args.json) == "-":
            print(text)
        else:
            args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
