"""The contenders of ``e2e_bench.py``: one pass each over an ImageFolder, and the outputs each leaves behind so that
the harness can check every timed run against the classic pipeline's.

(a) ``enhance``: ``run_enhance`` (what ``enhancer enhance`` calls) with the shipped defaults (loader, batch size,
    channels_last rule, fields, compression) except the Grad-CAM settings: pytorch-grad-cam's (logit score, channel
    sum, min-max), so its maps can be compared with the classic ones (the speed does not depend on them). Timed from
    the checkpoint file to the closed shard.
(b) ``classic``: ``classic_pipeline.run_classic`` with every parameter requiring grad (a model built and loaded in a
    script, as users run pytorch-grad-cam: the backward runs through the whole network);
(b') ``classic-frozen``: the same with the trunk frozen (only layer4 and the head require grad, as enhancer's
    checkpoint loader leaves a ResNet): the backward stops after layer4. Both timed from the checkpoint file.
(c) ``forward-eager`` / ``forward-cl`` / ``forward-compiled``: our loader feeding ``model(x)`` under inference mode,
    nothing stored: eager NCHW (what a user writes), channels_last, and ``torch.compile`` of the channels_last model.
    The model is loaded (and compiled) in the warm-up pass; the timed pass runs the loader and the model: the ceiling.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

CONTENDERS = {
    "enhance": "(a) enhancer enhance",
    "classic": "(b) classic pipeline, all parameters require grad",
    "classic-frozen": "(b') classic pipeline, frozen trunk",
    "forward-eager": "(c) forward only, eager NCHW",
    "forward-cl": "(c') forward only, channels_last",
    "forward-compiled": "(c'') forward only, torch.compile + channels_last",
}
CLASSIC = ("classic", "classic-frozen")
FORWARD = ("forward-eager", "forward-cl", "forward-compiled")
OUTPUTS = "outputs.npz"  # what a contender leaves for the output check: path, pred (+ heatmap, crop_box)


@dataclass(frozen=True)
class Options:
    batch_size: int | None  # None: each contender's own default (enhance: the shipped one; others: 16 / 256)
    device: str
    threads: int
    loader: str


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_contender(
    name: str, data: Path, checkpoint: Path, out: Path, opts: Options, state: dict[str, Any]
) -> tuple[int, float, str]:
    """One pass of ``name`` over ``data``: (images done, seconds, loader name); its outputs end in ``out/OUTPUTS``.
    ``state`` carries what a warm-up pass prepared for the timed one (the forward contenders' model)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _sync(opts.device)
    if name == "enhance":
        return _enhance(data, checkpoint, out, opts)
    if name in CLASSIC:
        return _classic(name, data, checkpoint, out, opts)
    if name in FORWARD:
        return _forward(name, data, checkpoint, out, opts, state)
    raise ValueError(f"unknown contender {name!r}; valid: {', '.join(CONTENDERS)}")


def _enhance(data: Path, checkpoint: Path, out: Path, opts: Options) -> tuple[int, float, str]:
    from classic_pipeline import PYTORCH_GRAD_CAM_SETTINGS

    from enhancer.enhance import run_enhance
    from enhancer.specs import EnhanceSpec

    spec = EnhanceSpec(
        data=str(data),
        out=str(out / "shard"),
        checkpoint=str(checkpoint),
        batch_size=opts.batch_size,
        device=opts.device,
        num_threads=opts.threads,
        amp=opts.device.startswith("cuda"),
        loader=opts.loader,
        cam=PYTORCH_GRAD_CAM_SETTINGS,
    )
    start = time.perf_counter()
    summary = run_enhance(spec, progress=False)
    _sync(opts.device)
    seconds = time.perf_counter() - start
    with h5py.File(summary.shard, "r") as f:
        np.savez(
            out / OUTPUTS,
            path=np.array([p.decode() for p in f["path"][:]]),
            **{k: f[k][:] for k in ("pred", "heatmap", "crop_box")},
        )
    return summary.n_written, seconds, summary.loader


def _classic(name: str, data: Path, checkpoint: Path, out: Path, opts: Options) -> tuple[int, float, str]:
    from classic_pipeline import run_classic

    start = time.perf_counter()
    n = run_classic(
        data,
        checkpoint,
        out / "classic.h5",
        batch_size=opts.batch_size or (256 if opts.device.startswith("cuda") else 16),
        workers=opts.threads,
        device=opts.device,
        grads="all" if name == "classic" else "as-loaded",
    )
    _sync(opts.device)
    seconds = time.perf_counter() - start
    with h5py.File(out / "classic.h5", "r") as f:
        np.savez(
            out / OUTPUTS,
            path=np.array([p.decode() for p in f["path"][:]]),
            **{k: f[k][:] for k in ("pred", "heatmap", "crop_box")},
        )
    (out / "classic.h5").unlink()
    return n, seconds, "torchvision ImageFolder"


def _forward_model(name: str, checkpoint: Path, device: str) -> tuple[Any, Any]:
    """(model, preprocessing) of a forward contender: eager NCHW, channels_last, or compiled channels_last."""
    from enhancer.models.checkpoints import load_checkpoint

    ck = load_checkpoint(checkpoint)
    model = ck.model.to(device).eval()
    if name != "forward-eager":
        model = model.to(memory_format=torch.channels_last)
    if name == "forward-compiled":
        model = torch.compile(model)
    return model, ck.preprocessing


def _forward(
    name: str, data: Path, checkpoint: Path, out: Path, opts: Options, state: dict[str, Any]
) -> tuple[int, float, str]:
    from contextlib import nullcontext

    from enhancer.data import make_loader, scan

    if "model" not in state:  # the warm-up pass: load (and compile) once
        state["model"], state["preprocessing"] = _forward_model(name, checkpoint, opts.device)
    model, cuda = state["model"], opts.device.startswith("cuda")
    memory = torch.channels_last if name != "forward-eager" else torch.contiguous_format
    start = time.perf_counter()
    samples = list(scan(data).samples)
    loader = make_loader(
        samples,
        state["preprocessing"],
        batch_size=opts.batch_size or (256 if cuda else 16),
        loader=opts.loader,
        device=opts.device,
        num_threads=opts.threads,
    )
    preds, index = [], []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    with torch.inference_mode(), autocast:
        for batch in loader:
            preds.append(model(batch.image.contiguous(memory_format=memory)).argmax(1))
            index.append(batch.index)
        pred = torch.cat(preds).cpu().numpy()  # the host needs the predictions: this also waits for the device
    seconds = time.perf_counter() - start
    paths = {s.index: s.path for s in samples}
    np.savez(out / OUTPUTS, path=np.array([paths[int(i)] for i in torch.cat(index)]), pred=pred)
    return len(pred), seconds, loader.name


def _by_path(out: Path) -> dict[str, dict[str, np.ndarray]]:
    with np.load(out / OUTPUTS) as z:
        arrays = {k: z[k] for k in z.files}
    return {
        os.path.abspath(p): {k: v[i] for k, v in arrays.items() if k != "path"} for i, p in enumerate(arrays["path"])
    }


def _rescaled(heat: np.ndarray) -> np.ndarray:
    """A stored heatmap min-max scaled to [0, 255] (pytorch-grad-cam scales its maps again after resizing them)."""
    h = heat.astype(np.float64)
    return (h - h.min()) / max(h.max() - h.min(), 1e-12) * 255


def compare_outputs(contender: Path, classic: Path) -> dict[str, Any]:
    """A timed contender's outputs against the timed classic run's, file by file: predictions, and for the Grad-CAM
    contenders the heatmaps (in grey levels, both min-max scaled) and crop boxes."""
    ours, theirs = _by_path(contender), _by_path(classic)
    if set(ours) != set(theirs):
        return {"same_files": False, "n": len(ours)}
    paths = sorted(theirs)
    result: dict[str, Any] = {
        "same_files": True,
        "n": len(paths),
        "pred_agreement": float(np.mean([int(ours[p]["pred"]) == int(theirs[p]["pred"]) for p in paths])),
    }
    if "heatmap" in ours[paths[0]]:
        diffs = np.stack([np.abs(_rescaled(ours[p]["heatmap"]) - _rescaled(theirs[p]["heatmap"])) for p in paths])
        box = np.stack([np.abs(ours[p]["crop_box"].astype(np.int64) - theirs[p]["crop_box"]) for p in paths])
        result.update(
            heatmap_mean_levels=float(diffs.mean()),
            heatmap_p999_levels=float(np.quantile(diffs, 0.999)),
            heatmap_max_levels=float(diffs.max()),
            crop_box_median_px=float(np.median(box.max(1))),
        )
    return result
