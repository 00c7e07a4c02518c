"""What the audit reads from an enhanced dataset: a seeded subset of samples with their model inputs, stored maps,
explained classes and annotations' keys.

Usage::

    from enhancer.audit.inputs import read_inputs
    inputs = read_inputs("enhanced/", preprocessing, samples=64, seed=0, device="cpu")
    inputs.x, inputs.maps, inputs.target        # (N, C, H, W) model input, (N, H, W) maps in [0, 1], (N,) classes
    # a dataset of maps per class (multi-label): the inputs of each class, its own maps, the class as the target
    by_class = read_class_inputs("enhanced/", preprocessing, [1, 4], samples=64, seed=0)

The model input comes from the stored ``image`` field (the model-resolution greyscale input, 8 bits) or, for a
dataset stored without it, from the original files under ``data_root`` (``--data``) through the torch loader. The
maps are the stored raw ``cam`` normalised as the dataset's Grad-CAM settings say and upsampled to the input size
(or the stored ``heatmap`` / 255 without ``cam``). The explained class follows the dataset's Grad-CAM target:
the stored prediction, the label, or a fixed class. In a dataset of maps per class (``explained`` (sample, slot)
holds the class of each map), each class is audited on the samples that have a map of it, that map, explaining
that class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


def _open(dataset_dir: str | os.PathLike[str], extra: tuple[str, ...] = ()) -> tuple[EnhancedDataset, list[str]]:
    """The dataset opened with the fields the audit reads, and which of the image and map fields it stores."""
    probe = EnhancedDataset(dataset_dir, fields=NEEDED)
    stored = [f for f in ("image", "cam", "heatmap") if f in probe.manifest.fields]
    probe.close()
    return EnhancedDataset(dataset_dir, fields=(*NEEDED, *stored, *extra)), stored


def _read_rows(ds: EnhancedDataset, chosen: list[int], fields: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], list]:
    """The ``fields`` of the samples at ``chosen`` stacked (N, ...), and their stored paths."""
    try:
        rows = [ds[i] for i in chosen]  # one HDF5 chunk per field and sample: the store's unit of reading
    finally:
        ds.close()
    return {f: torch.stack([r[f] for r in rows]) for f in fields if f != "path"}, [r["path"] for r in rows]


def _model_input(
    stack: dict[str, torch.Tensor], paths: list[str], labels: torch.Tensor, preprocessing: Preprocessing
) -> torch.Tensor:
    """(N, C, H, W) normalised model input: the stored image field, or the original files."""
    if "image" in stack:
        return to_model_input(stack["image"].float() / 255, preprocessing)
    return _load_originals(paths, labels, preprocessing, "cpu")


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
    ds, stored = _open(dataset_dir)
    prov = ds.manifest.provenance
    cam = CamSettings.from_dict(prov.get("gradcam", {}))
    root = data_root or prov.get("data_root")
    chosen = select(len(ds), samples, seed)
    class_names = list(ds.class_names)
    if not chosen:
        ds.close()
        raise StoreError(f"{dataset_dir} holds no samples to audit")
    stack, stored_paths = _read_rows(ds, chosen, (*NEEDED, *stored))
    labels, pred = stack["label"].long(), stack["pred"].long()
    paths = [_absolute(p, root) for p in stored_paths]
    x = _model_input(stack, paths, labels, preprocessing)
    maps, feature_size = _maps(stack, cam, tuple(preprocessing.size))
    return AuditInputs(
        x=x.to(device),
        maps=maps.to(device),
        feature_size=feature_size,
        target=_explained(cam, pred, labels).to(device),
        labels=labels.to(device),
        orig_size=stack["orig_size"].long().to(device),
        paths=paths,
        indices=chosen,
        class_names=class_names,
        cam=cam,
        data_root=str(Path(root).resolve()) if root else None,
    )


def maps_per_class(dataset_dir: str | os.PathLike[str]) -> dict[int, int]:
    """Class id -> the number of samples with a map of it, in a dataset of maps per class (classes without a map
    left out)."""
    ds = EnhancedDataset(dataset_dir, fields=("explained",))
    try:
        explained = ds.read_column("explained").astype(np.int64)
    finally:
        ds.close()
    counts = {c: int((explained == c).any(1).sum()) for c in range(len(ds.class_names))}
    return {c: n for c, n in counts.items() if n}


def _class_picks(explained: np.ndarray, classes: list[int], samples: int, seed: int) -> dict[int, list[int]]:
    """Per class: a seeded subset of ``samples`` of the samples with a map of it (all with 0), dataset positions."""
    picks = {}
    for c in classes:
        with_map = np.flatnonzero((explained == c).any(1))
        picks[c] = [int(with_map[k]) for k in select(len(with_map), samples, seed)]
    return picks


def read_class_inputs(
    dataset_dir: str | os.PathLike[str],
    preprocessing: Preprocessing,
    classes: list[int],
    *,
    samples: int = 0,
    seed: int = 0,
    data_root: str | None = None,
    device: str = "cpu",
) -> dict[int, AuditInputs]:
    """The audited samples of each of ``classes`` (ids) in a dataset of maps per class: per class, a seeded subset of
    ``samples`` (all with 0) of the samples that have a map of it, with that map and the class as the target. Each
    sample is read once, whatever the number of classes it has maps of; a class without maps is left out."""
    ds, stored = _open(dataset_dir, ("explained",))
    prov = ds.manifest.provenance
    cam = CamSettings.from_dict(prov.get("gradcam", {}))
    root = data_root or prov.get("data_root")
    class_names, per_class = list(ds.class_names), set(ds.per_class)
    picks = _class_picks(ds.read_column("explained").astype(np.int64), classes, samples, seed)
    at = sorted({i for chosen in picks.values() for i in chosen})
    stack, stored_paths = _read_rows(ds, at, (*NEEDED, *stored, "explained"))
    labels = stack["label"].long()
    paths = [_absolute(p, root) for p in stored_paths]
    x = _model_input(stack, paths, labels, preprocessing)
    row = {i: k for k, i in enumerate(at)}
    out = {}
    for c, chosen in picks.items():
        if not chosen:
            continue
        r = torch.tensor([row[i] for i in chosen])
        slot = (stack["explained"][r] == c).long().argmax(1)  # the slot that holds the class's map
        own = {f: stack[f][r] for f in ("cam", "heatmap") if f in stack}
        own = {f: v[torch.arange(len(r)), slot] if f in per_class else v for f, v in own.items()}
        maps, feature_size = _maps(own, cam, tuple(preprocessing.size))
        out[c] = AuditInputs(
            x=x[r].to(device),
            maps=maps.to(device),
            feature_size=feature_size,
            target=torch.full((len(r),), c, dtype=torch.long, device=device),
            labels=labels[r].to(device),
            orig_size=stack["orig_size"][r].long().to(device),
            paths=[paths[k] for k in r.tolist()],
            indices=chosen,
            class_names=class_names,
            cam=cam,
            data_root=str(Path(root).resolve()) if root else None,
        )
    return out
