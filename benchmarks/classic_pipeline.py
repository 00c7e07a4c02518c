"""The classic way to build a Grad-CAM dataset, as people write it today: contender (b) of ``e2e_bench.py``.

Usage::

    .venv/bin/python benchmarks/classic_pipeline.py DATA CHECKPOINT OUT.h5            # run it, print images/s
    .venv/bin/python benchmarks/classic_pipeline.py DATA CHECKPOINT --check           # compare with enhancer

torchvision ``ImageFolder`` + ``DataLoader`` (2 workers) with the seed's transform (Grayscale, Resize((224, 224)),
ToTensor, Normalize, all read from the checkpoint's preprocessing); ``pytorch_grad_cam.GradCAM`` on the target layer
one batch at a time, explaining the predicted class (hooks + a backward pass through the whole network, see
``GRADS``); then per
image on the host: a box from the thresholded heatmap with numpy (``CropSettings``' threshold / margin / min_size /
square rules), the crop cut with PIL from the original file, the enhanced image with numpy, and one h5py
``dataset[i] = ...`` per sample per field (per-sample chunks and HDF5's deflate filter where enhancer's default
codecs deflate: both sides pay the same compression).

It stores what enhancer stores except the raw ``cam`` (pytorch-grad-cam only returns the normalised, resized map).
``compare_with_enhancer`` checks that both produce the same heatmaps, so the speed comparison is like for like.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from enhancer.explain.cam import CamSettings, CropSettings, EnhanceSettings
from enhancer.models.checkpoints import LoadedCheckpoint, load_checkpoint
from enhancer.models.demo import hook_target
from enhancer.preprocessing import Preprocessing
from enhancer.store.codecs import resolve_codecs

# enhancer's Grad-CAM settings that reproduce pytorch-grad-cam's map: logit score, channel sum, min-max scaling
PYTORCH_GRAD_CAM_SETTINGS = CamSettings(score="logit", channel_reduce="sum", normalize="minmax")
HEATMAP_ATOL = 1e-3
# Which parameters require grad, hence how far pytorch-grad-cam's backward runs. "all": a model built and loaded in a
# script (every parameter requires grad; the seed's Grad-CAM did this full backward), the classic case. "as-loaded":
# as enhancer's checkpoint loader leaves them (the seed's fine-tuning state: layer4 + head of a ResNet), which stops the
# backward after layer4. The maps are the same either way; only the cost differs.
GRADS = ("all", "as-loaded")


def h5py_filters(field: str) -> dict[str, Any]:
    """h5py's filter arguments that store ``field`` as enhancer's default codec does (``DEFAULT_CODECS``: the heatmap
    deflated at level 1, the rest raw), so that both pipelines pay the same compression."""
    codec = resolve_codecs((field,))[field]
    if codec.kind == "none":
        return {}
    if codec.kind != "gzip":
        raise ValueError(
            f"enhancer's default codec of {field!r} is {codec.name}; the classic pipeline writes gzip or raw"
        )
    return {"compression": "gzip", "compression_opts": codec.level, "shuffle": codec.shuffle}


def seed_transform(pre: Preprocessing) -> transforms.Compose:
    """The seed notebook's evaluation transform, parameterised by the checkpoint's preprocessing."""
    return transforms.Compose(
        [
            transforms.Grayscale(pre.in_chans),
            transforms.Resize(pre.size),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )


def box_from_heatmap(heat: np.ndarray, orig_hw: tuple[int, int], s: CropSettings) -> tuple[int, int, int, int]:
    """xyxy crop box in original pixels (x2/y2 exclusive) from one heatmap (H, W) in [0, 1] at model resolution:
    hot pixels >= threshold * max, their extent mapped to the original, grown by margin, min_size and square."""
    if s.largest_region:
        raise ValueError(
            "the classic pipeline does not implement largest_region; use CropSettings(largest_region=False)"
        )
    h_m, w_m = heat.shape
    oh, ow = orig_hw
    peak = float(heat.max())
    mask = heat >= s.threshold * peak

    def extent(hit: np.ndarray, n_model: int, n_orig: int) -> tuple[int, int]:
        idx = np.flatnonzero(hit)
        lo, hi = (idx[0] * n_orig / n_model, (idx[-1] + 1) * n_orig / n_model) if peak > 0 else (0.0, float(n_orig))
        pad = s.margin * (hi - lo)
        return max(0, math.floor(lo - pad)), min(math.ceil(hi + pad), n_orig)

    x1, x2 = extent(mask.any(0), w_m, ow)
    y1, y2 = extent(mask.any(1), h_m, oh)
    bw, bh = max(x2 - x1, math.ceil(s.min_size * ow)), max(y2 - y1, math.ceil(s.min_size * oh))
    if s.square:
        bw = bh = max(bw, bh)
    bw, bh = min(bw, ow), min(bh, oh)
    x1 = min(max(x1 - (bw - (x2 - x1)) // 2, 0), ow - bw)
    y1 = min(max(y1 - (bh - (y2 - y1)) // 2, 0), oh - bh)
    return x1, y1, x1 + bw, y1 + bh


def enhance_np(image01: np.ndarray, heat: np.ndarray, s: EnhanceSettings) -> np.ndarray:
    """image (H, W) in [0, 1] weighted by floor + (1 - floor) * heat**gamma -> uint8 (H, W)."""
    out = image01 * (s.floor + (1 - s.floor) * np.clip(heat, 0, 1) ** s.gamma)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


@dataclass
class ClassicSample:
    """One image's outputs, as the classic loop holds them just before writing."""

    path: str
    label: int
    pred: int
    prob: np.ndarray  # (C,) float32
    heat: np.ndarray  # (H, W) float32 in [0, 1]: pytorch-grad-cam's map
    image: np.ndarray  # (H, W) uint8: the model input, un-normalised
    crop_box: tuple[int, int, int, int]
    crop: np.ndarray  # (Hc, Wc) uint8
    enhanced: np.ndarray  # (H, W) uint8
    orig_size: tuple[int, int]  # (h, w)


def classic_samples(
    model: nn.Module,
    data: str | os.PathLike[str],
    pre: Preprocessing,
    *,
    batch_size: int = 16,
    workers: int = 2,
    device: str = "cpu",
    crop: CropSettings | None = None,
    enhance: EnhanceSettings | None = None,
    grads: str = "all",
) -> Iterator[ClassicSample]:
    """Run the classic loop over the ImageFolder ``data``, yielding every image's outputs in dataset order
    (``crop`` / ``enhance``: the settings' defaults when None; ``grads``: see ``GRADS``)."""
    if grads not in GRADS:
        raise ValueError(f"grads={grads!r} is not valid; choose one of {', '.join(GRADS)}")
    crop, enhance = crop or CropSettings(), enhance or EnhanceSettings()
    if grads == "all":
        model.requires_grad_(True)
    from pytorch_grad_cam import GradCAM  # optional: absent on a bare GPU machine (the harness then skips this)

    dataset = datasets.ImageFolder(os.path.abspath(data), transform=seed_transform(pre))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    model = model.to(device).eval()
    mean, std = pre.mean[0], pre.std[0]
    done = 0
    with GradCAM(model=model, target_layers=[hook_target(model)]) as gc:
        for x, y in loader:
            # targets=None: pytorch-grad-cam explains the argmax with ClassifierOutputTarget, i.e. the predicted class
            heat = gc(input_tensor=x.to(device), targets=None)
            logits = gc.outputs.detach().float().cpu()
            probs, preds = logits.softmax(1).numpy(), logits.argmax(1).numpy()
            images = (x[:, 0].numpy() * std + mean).clip(0, 1)
            for i in range(len(y)):
                path = dataset.samples[done + i][0]
                with Image.open(path) as im:
                    grey = im.convert("L")
                box = box_from_heatmap(heat[i], (grey.height, grey.width), crop)
                hc, wc = crop.size
                cut = np.asarray(grey.crop(box).resize((wc, hc), Image.BILINEAR))
                yield ClassicSample(
                    path=path,
                    label=int(y[i]),
                    pred=int(preds[i]),
                    prob=probs[i],
                    heat=heat[i],
                    image=np.rint(images[i] * 255).astype(np.uint8),
                    crop_box=box,
                    crop=cut,
                    enhanced=enhance_np(images[i], heat[i], enhance),
                    orig_size=(grey.height, grey.width),
                )
            done += len(y)


def run_classic(
    data: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    batch_size: int = 16,
    workers: int = 2,
    device: str = "cpu",
    grads: str = "all",
) -> int:
    """The whole classic job: checkpoint + ImageFolder -> one HDF5 file, written sample by sample. Returns the
    number of samples written."""
    ck = load_checkpoint(checkpoint)
    pre = ck.preprocessing
    n = len(datasets.ImageFolder(os.path.abspath(data)).samples)
    h, w = pre.size
    crop = CropSettings()
    shapes = {
        "image": ((1, h, w), np.uint8),
        "heatmap": ((h, w), np.uint8),
        "crop": ((1, *crop.size), np.uint8),
        "crop_box": ((4,), np.int32),
        "enhanced": ((1, h, w), np.uint8),
        "label": ((), np.int16),
        "pred": ((), np.int16),
        "prob": ((ck.config.num_classes,), np.float32),
        "orig_size": ((2,), np.int32),
    }
    written = 0
    with h5py.File(out, "w") as f:
        ds = {
            name: f.create_dataset(
                name,
                shape=(n, *shape),
                dtype=dtype,
                chunks=(1, *shape),
                **h5py_filters(name),
            )
            for name, (shape, dtype) in shapes.items()
        }
        ds["path"] = f.create_dataset("path", shape=(n,), dtype=h5py.string_dtype("utf-8"))
        for i, s in enumerate(
            classic_samples(
                ck.model, data, pre, batch_size=batch_size, workers=workers, device=device, crop=crop, grads=grads
            )
        ):
            ds["image"][i] = s.image[None]
            ds["heatmap"][i] = np.rint(s.heat * 255).astype(np.uint8)
            ds["crop"][i] = s.crop[None]
            ds["crop_box"][i] = s.crop_box
            ds["enhanced"][i] = s.enhanced[None]
            ds["label"][i] = s.label
            ds["pred"][i] = s.pred
            ds["prob"][i] = s.prob
            ds["orig_size"][i] = s.orig_size
            ds["path"][i] = s.path
            written += 1
    return written


@dataclass
class Comparison:
    """Classic outputs against enhancer's on the same images (enhancer run with ``PYTORCH_GRAD_CAM_SETTINGS``)."""

    n: int
    n_nonempty: int  # maps with positive evidence: the check means nothing on all-zero maps
    heatmap_max_abs: float  # float heatmaps, both min-max scaled after upsampling as pytorch-grad-cam does
    heatmap_max_abs_shipped_loader: float | None  # the same with enhancer's default loader (DALI on CPU): for info
    labels_equal: bool
    preds_equal: bool
    crop_box_max_px: int  # boxes: same rules, float32 (ours) vs float64 (numpy) rounding and PIL vs DALI inputs
    enhanced_max_levels: int  # enhanced uint8 images, in grey levels
    crop_mean_levels: float  # crops: PIL from the original file vs roi_align from the 512 px source

    @property
    def passed(self) -> bool:
        return (
            self.heatmap_max_abs <= HEATMAP_ATOL
            and self.labels_equal
            and self.preds_equal
            and self.n_nonempty >= max(1, self.n // 2)
        )

    def line(self) -> str:
        shipped = (
            ""
            if self.heatmap_max_abs_shipped_loader is None
            else (f" (with the default loader: {self.heatmap_max_abs_shipped_loader:.2g}, input resampling differs)")
        )
        return (
            f"{'PASS' if self.passed else 'FAIL'}: classic vs enhancer on {self.n} images ({self.n_nonempty} "
            f"non-empty maps): heatmap max |diff| {self.heatmap_max_abs:.2g} (<= {HEATMAP_ATOL:g}){shipped}; "
            f"labels {'equal' if self.labels_equal else 'DIFFER'}, predictions "
            f"{'equal' if self.preds_equal else 'DIFFER'}; crop boxes within {self.crop_box_max_px} px, enhanced "
            f"within {self.enhanced_max_levels} levels, crops {self.crop_mean_levels:.1f} levels apart on average"
        )


def _rescale(up: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's second min-max scaling, after its resize (on (N, H, W))."""
    low, high = up.flatten(1).amin(1)[:, None, None], up.flatten(1).amax(1)[:, None, None]
    return (up - low) / (high - low + 1e-7)


def _enhancer_side(
    ck: LoadedCheckpoint, data: str, loader: str, batch_size: int, device: str
) -> dict[str, dict[str, np.ndarray]]:
    """Per path: enhancer's heatmap (float), crop box, enhanced, crop, label, pred, through ``compute_outputs``."""
    from enhancer.data import make_loader, scan
    from enhancer.enhance.batch_outputs import compute_outputs
    from enhancer.enhance.job_settings import output_settings
    from enhancer.explain import cam
    from enhancer.specs import EnhanceSpec

    # the job's own settings resolution: default fields, crop and enhance settings, pytorch-grad-cam's Grad-CAM
    settings = output_settings(EnhanceSpec(cam=PYTORCH_GRAD_CAM_SETTINGS), ck, device)
    samples = list(scan(data).samples)
    paths = {s.index: s.path for s in samples}
    out: dict[str, dict[str, np.ndarray]] = {}
    model = ck.model.to(device).eval()
    for batch in make_loader(
        samples, ck.preprocessing, batch_size=batch_size, loader=loader, device=device, num_threads=0
    ):
        r = cam.grad_cam(model, batch.image, PYTORCH_GRAD_CAM_SETTINGS)
        heat = _rescale(cam.upsample(r.cam, batch.image.shape[-2:])).cpu().numpy()
        o = {k: v.cpu().numpy() for k, v in compute_outputs(model, batch, settings).items()}
        for j, idx in enumerate(batch.index.tolist()):
            out[os.path.abspath(paths[idx])] = {
                "heat": heat[j],
                "empty": bool(r.empty[j]),
                **{k: v[j] for k, v in o.items()},
            }
    return out


def compare_with_enhancer(
    data: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    batch_size: int = 16,
    shipped_loader: bool = True,
) -> Comparison:
    """Run the classic loop and enhancer's hot path (``compute_outputs``, with pytorch-grad-cam's Grad-CAM settings)
    on the images of ``data`` on the CPU, and compare. Inputs: enhancer's torch loader decodes and resizes with PIL
    exactly as the seed transform does, so both sides see the same tensors; ``shipped_loader`` also reports the
    difference through the default loader (DALI resamples slightly differently at the image edge)."""
    from enhancer.data.dali_loader import dali_available

    data = os.path.abspath(data)
    ck = load_checkpoint(checkpoint)
    model = ck.model.eval()
    theirs = {
        os.path.abspath(s.path): s
        for s in classic_samples(model, data, ck.preprocessing, batch_size=batch_size, workers=0)
    }
    model.zero_grad(set_to_none=True)
    ours = _enhancer_side(ck, data, "torch", batch_size, "cpu")
    if set(ours) != set(theirs):
        raise AssertionError(f"the two sides saw different files: {sorted(set(ours) ^ set(theirs))[:5]}")
    shipped = None
    if shipped_loader and dali_available():
        dali = _enhancer_side(ck, data, "auto", batch_size, "cpu")
        shipped = max(float(np.abs(dali[p]["heat"] - theirs[p].heat).max()) for p in theirs)
    pairs = [(ours[p], theirs[p]) for p in sorted(theirs)]
    return Comparison(
        n=len(pairs),
        n_nonempty=sum(not o["empty"] for o, _ in pairs),
        heatmap_max_abs=max(float(np.abs(o["heat"] - t.heat).max()) for o, t in pairs),
        heatmap_max_abs_shipped_loader=shipped,
        labels_equal=all(int(o["label"]) == t.label for o, t in pairs),
        preds_equal=all(int(o["pred"]) == t.pred for o, t in pairs),
        crop_box_max_px=max(int(np.abs(o["crop_box"].astype(np.int64) - np.array(t.crop_box)).max()) for o, t in pairs),
        enhanced_max_levels=max(int(np.abs(o["enhanced"][0].astype(np.int16) - t.enhanced).max()) for o, t in pairs),
        crop_mean_levels=float(np.mean([np.abs(o["crop"][0].astype(np.float32) - t.crop).mean() for o, t in pairs])),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="ImageFolder root")
    parser.add_argument("checkpoint", type=Path, help="model checkpoint (any format enhancer loads)")
    parser.add_argument("out", type=Path, nargs="?", help="HDF5 file to write (not with --check)")
    parser.add_argument("--check", action="store_true", help="compare the outputs with enhancer's instead")
    parser.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument(
        "--grads",
        default="all",
        choices=GRADS,
        help="parameters requiring grad: how far the backward runs (default: %(default)s)",
    )
    args = parser.parse_args()
    if args.check:
        result = compare_with_enhancer(args.data, args.checkpoint, batch_size=args.batch_size)
        print(result.line())
        sys.exit(0 if result.passed else 1)
    if args.out is None:
        parser.error("give OUT.h5 to write, or --check")
    start = time.perf_counter()
    n = run_classic(
        args.data,
        args.checkpoint,
        args.out,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        grads=args.grads,
    )
    seconds = time.perf_counter() - start
    print(f"{n} samples in {seconds:.1f} s: {n / seconds:.2f} images/s -> {args.out}")


if __name__ == "__main__":
    main()
