"""What the audit reads from an enhanced dataset: a seeded subset of samples with their model inputs, stored maps,
explained classes and annotations' keys.

Usage::

    from enhancer.audit.inputs import read_inputs
    inputs = read_inputs("enhanced/", preprocessing, samples=64, seed=0, device="cpu")
    inputs.x, inputs.maps, inputs.target        # (N, C, H, W) model input, (N, H, W) maps in [0, 1], (N,) classes

The model input comes from the stored ``image`` field (the model-resolution greyscale input, 8 bits) or, for a
dataset stored without it, from the original files under ``data_root`` (``--data``) through the torch loader. The
maps are the stored raw ``cam`` normalised as the dataset's Grad-CAM settings say and upsampled to the input size
(or the stored ``heatmap`` / 255 without ``cam``). The explained class follows the dataset's Grad-CAM target:
the stored prediction, the label, or a fixed class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from enhancer.audit.maps import normalise_maps, to_input_size
from enhancer.data import Sample, make_loader
from enhancer.models.demo import to_model_input
from enhancer.preprocessing import Preprocessing
from enhancer.settings import CamSettings
from enhancer.store import EnhancedDataset, StoreError

NEEDED = ("label", "pred", "path", "orig_size")


@dataclass
class AuditInputs:
    """One batch of audited samples, on the audit's device (paths and names on the host)."""

    x: torch.Tensor  # (N, C, H, W) normalised model input
    maps: torch.Tensor  # (N, H, W) in [0, 1], the stored maps at the input's resolution
    feature_size: tuple[int, int] | None  # (h, w) of the stored raw maps; None: only the heatmap is stored
    target: torch.Tensor  # (N,) the class each map explains
    labels: torch.Tensor  # (N,)
    orig_size: torch.Tensor  # (N, 2) original (height, width)
    paths: list[str]  # absolute paths of the original files
    indices: list[int]  # positions in the enhanced dataset
    class_names: list[str]
    cam: CamSettings  # the dataset's Grad-CAM settings
    data_root: str | None  # where the dataset was enhanced from


def select(n_total: int, samples: int, seed: int) -> list[int]:
    """Sorted dataset positions of a seeded random subset of ``samples`` (all when samples <= 0 or >= n_total)."""
    if samples <= 0 or samples >= n_total:
        return list(range(n_total))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_total, generator=g)[:samples].tolist())


def _explained(cam: CamSettings, pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if cam.target == "predicted":
        return pred
    if cam.target == "label":
        return labels
    return torch.full_like(pred, int(cam.target))


def _absolute(path: str, root: str | None) -> str:
    return path if os.path.isabs(path) or root is None else os.path.normpath(os.path.join(root, path))


def _load_originals(paths: list[str], labels: torch.Tensor, preprocessing: Preprocessing, device: str) -> torch.Tensor:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise StoreError(
            f"{missing[0]} (and {len(missing) - 1} more) not found; the dataset has no image field, so the audit "
            "reads the original files: pass --data ROOT, the folder the dataset was enhanced from"
        )
    samples = [Sample(i, p, int(label)) for i, (p, label) in enumerate(zip(paths, labels.tolist(), strict=True))]
    loader = make_loader(samples, preprocessing, batch_size=32, loader="torch", device=device, num_threads=0)
    return torch.cat([b.image for b in loader])


def _maps(
    stack: dict[str, torch.Tensor], cam: CamSettings, size: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, int] | None]:
    if "cam" in stack:
        raw = stack["cam"].float()
        if cam.normalize == "minmax":
            raw = raw - raw.flatten(1).amin(1)[:, None, None]
        return to_input_size(normalise_maps(raw), size), tuple(raw.shape[-2:])
    if "heatmap" in stack:
        heat = stack["heatmap"].float() / 255
        return to_input_size(heat, size), None
    raise StoreError("the dataset stores neither cam nor heatmap; enhance it with --fields cam (or heatmap)")


def read_inputs(
    dataset_dir: str | os.PathLike[str],
    preprocessing: Preprocessing,
    *,
    samples: int = 0,
    seed: int = 0,
    data_root: str | None = None,
    device: str = "cpu",
) -> AuditInputs:
    """Read a seeded subset of ``samples`` samples (all with 0) of the enhanced dataset at ``dataset_dir``."""
    probe = EnhancedDataset(dataset_dir, fields=NEEDED)
    stored = [f for f in ("image", "cam", "heatmap") if f in probe.manifest.fields]
    ds = EnhancedDataset(dataset_dir, fields=(*NEEDED, *stored))
    prov = ds.manifest.provenance
    cam = CamSettings.from_dict(prov.get("gradcam", {}))
    root = data_root or prov.get("data_root")
    chosen = select(len(ds), samples, seed)
    if not chosen:
        raise StoreError(f"{dataset_dir} holds no samples to audit")
    try:
        rows = [ds[i] for i in chosen]  # one HDF5 chunk per field and sample: the store's unit of reading
    finally:
        ds.close()
        probe.close()
    stack = {f: torch.stack([r[f] for r in rows]) for f in (*NEEDED, *stored) if f != "path"}
    labels, pred = stack["label"].long(), stack["pred"].long()
    paths = [_absolute(r["path"], root) for r in rows]
    size = tuple(preprocessing.size)
    if "image" in stack:
        x = to_model_input(stack["image"].float() / 255, preprocessing)
    else:
        x = _load_originals(paths, labels, preprocessing, "cpu")
    maps, feature_size = _maps(stack, cam, size)
    return AuditInputs(
        x=x.to(device),
        maps=maps.to(device),
        feature_size=feature_size,
        target=_explained(cam, pred, labels).to(device),
        labels=labels.to(device),
        orig_size=stack["orig_size"].long().to(device),
        paths=paths,
        indices=chosen,
        class_names=list(ds.class_names),
        cam=cam,
        data_root=str(Path(root).resolve()) if root else None,
    )
