"""Checkpoint import and export: the seed notebook's files, bare state_dicts, and our own self-describing format.

Usage::

    from enhancer.models.checkpoints import load_checkpoint, save_checkpoint
    ck = load_checkpoint("ResNet-101_GradCAM_Cropped_v4.pth")   # architecture detected from the weights
    ck.model, ck.config, ck.preprocessing, ck.class_names, ck.meta
    save_checkpoint("run/best.pt", ck.model, preprocessing=ck.preprocessing, meta={"epoch": 3})

Every file is read with ``torch.load(weights_only=True)``: a checkpoint that needs arbitrary code to unpickle is
refused before any of it runs.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from enhancer import __version__
from enhancer.atomic import atomic_path
from enhancer.hashing import file_sha256
from enhancer.models.zoo import (
    DEFAULT_CLASS_NAMES,
    RESNET_BLOCKS,
    SEED_HEADS,
    ZOO,
    ModelConfig,
    ModelError,
    build_from_config,
    preprocessing_for,
    resolve_config,
)
from enhancer.preprocessing import Preprocessing

FORMAT = "enhancer.checkpoint"
FORMAT_VERSION = 1
# Keys of the seed notebook's checkpoint dict besides the weights; kept as metadata.
SEED_META_KEYS = ("test_loss", "test_acc", "epoch", "desc")


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file, the reason and the fix."""


@dataclass
class LoadedCheckpoint:
    model: nn.Module  # in eval mode, on the CPU
    config: ModelConfig
    preprocessing: Preprocessing
    class_names: tuple[str, ...]
    source_format: str  # "enhancer", "seed" or "state_dict"
    path: str
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # optimizer/scheduler state for resuming


def read_checkpoint_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` with one-sentence errors instead of tracebacks."""
    path = str(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint file; check the path")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); the download or copy did not finish")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported (?:global|operand)[^\n]*", text)
            detail = f" (it calls {found.group(1) if found.lastindex else found.group(0).strip()})" if found else ""
            raise CheckpointError(
                f"{path}: refused, loading it would run pickled code{detail}. Only tensors and plain data are "
                "accepted; re-save it from trusted code as torch.save({'model_state_dict': model.state_dict()}, "
                "path)"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, truncated or not a checkpoint file ({_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _state_dict_of(obj: Any, path: str) -> tuple[dict[str, torch.Tensor], str]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dict or a state_dict")
    if obj.get("format") == FORMAT:
        return obj["model_state_dict"], "enhancer"
    if isinstance(obj.get("model_state_dict"), dict):
        return obj["model_state_dict"], "seed"
    if isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"], "state_dict"
    if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return obj, "state_dict"
    raise CheckpointError(
        f"{path}: a dict without weights (keys: {', '.join(map(str, list(obj)[:8]))}); expected "
        "'model_state_dict' or a bare state_dict"
    )


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrappers' prefixes (DataParallel/DDP ``module.``, ``torch.compile``'s ``_orig_mod.``)."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _block_counts(state: dict[str, torch.Tensor], prefix: str) -> tuple[int, ...]:
    counts = []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}layer{i}\.(\d+)\.", k))}
        counts.append(max(idx) + 1 if idx else 0)
    return tuple(counts)


def _linear_widths(state: dict[str, torch.Tensor], prefix: str) -> list[tuple[int, int]]:
    """(index, out_features) of each Linear in an nn.Sequential, in order."""
    found = [
        (int(m.group(1)), v.shape[0])
        for k, v in state.items()
        if (m := re.fullmatch(rf"{re.escape(prefix)}(\d+)\.weight", k)) and v.ndim == 2
    ]
    return sorted(found)


def detect_config(state: dict[str, torch.Tensor]) -> ModelConfig | None:
    """Recognise a zoo architecture from parameter names and shapes; None when nothing matches."""
    w = state.get
    if "resnet.fc.weight" in state and "dense_neural_network.2.weight" in state:
        depth = {blocks: d for d, blocks in RESNET_BLOCKS.items() if d >= 50}.get(_block_counts(state, "resnet."))
        widths = [out for _, out in _linear_widths(state, "dense_neural_network.")]
        head = next((h for h, (hidden, _) in SEED_HEADS.items() if tuple(widths[:-1]) == hidden), None)
        if depth and head and widths:
            return resolve_config(f"resnet{depth}", head=head, num_classes=widths[-1])
    if "vgg.features.28.weight" in state and "dense_neural_network.3.weight" in state:
        return resolve_config("vgg16", num_classes=state["dense_neural_network.3.weight"].shape[0])
    if (fe := w("feature_extractor.0.weight")) is not None and (lin := w("dense_neural_network.2.weight")) is not None:
        width = fe.shape[0]
        side = (lin.shape[1] // width) ** 0.5
        if fe.ndim == 4 and side == int(side):
            return resolve_config("tinyvgg", width=width, input_size=int(side) * 4, num_classes=lin.shape[0])
    if "fc.weight" in state and "conv1.weight" in state:
        blocks = _block_counts(state, "")
        bottleneck = "layer1.0.conv3.weight" in state
        depth = next((d for d, b in RESNET_BLOCKS.items() if b == blocks and (d >= 50) == bottleneck), None)
        if depth and f"tv-resnet{depth}" in ZOO:
            return resolve_config(f"tv-resnet{depth}", num_classes=state["fc.weight"].shape[0])
    return None


def _closest_arch(keys: set[str]) -> tuple[str, set[str], set[str]]:
    """The zoo entry whose parameter names overlap most with ``keys``, with missing and unexpected names."""
    best: tuple[float, str, set[str]] = (-1.0, "", set())
    for arch in ZOO:
        with torch.device("meta"):
            ref = set(build_from_config(resolve_config(arch)).state_dict())
        score = len(ref & keys) / len(ref | keys)
        if score > best[0]:
            best = (score, arch, ref)
    _, arch, ref = best
    return arch, ref - keys, keys - ref


def _describe_keys(names: set[str], limit: int = 5) -> str:
    shown = sorted(names)[:limit]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown) + more if names else "none"


def _mismatch_error(path: str, state: dict[str, torch.Tensor], arch: str | None, exc: Exception | None) -> str:
    keys = set(state)
    closest, missing, unexpected = _closest_arch(keys)
    if arch:
        with torch.device("meta"):
            ref = set(build_from_config(resolve_config(arch)).state_dict())
        missing, unexpected = ref - keys, keys - ref
        head = f"{path}: does not fit architecture {arch}"
    else:
        head = f"{path}: weights match no architecture of the zoo"
    shapes = f"; {_first_line(exc)}" if exc is not None and not missing and not unexpected else ""
    return (
        f"{head} (missing keys: {_describe_keys(missing)}; unexpected keys: {_describe_keys(unexpected)}{shapes}). "
        f"Closest architecture: {closest}; pass --arch to choose one, see `enhancer models`"
    )


def _config_for(state: dict[str, torch.Tensor], path: str, arch: str | None, head: str | None) -> ModelConfig:
    """The architecture of a file without a header: detected, or as asked (keeping what detection says of the
    head and class count when it found the same architecture)."""
    detected = detect_config(state)
    if arch is None:
        if detected is None:
            raise CheckpointError(_mismatch_error(path, state, None, None))
        return detected
    same = detected is not None and detected.arch == arch
    try:
        return resolve_config(
            arch,
            head=head or (detected.head if same else None),
            num_classes=detected.num_classes if same else 2,
            input_size=detected.input_size if same else 224,
            width=detected.width if same else None,
        )
    except ModelError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    head: str | None = None,
) -> LoadedCheckpoint:
    """Load a checkpoint file into a zoo model (eval mode, CPU), strictly.

    Accepts our own format, the seed notebook's dict (``model_state_dict``, ``optimizer_state_dict``, ...,
    ``test_loss``, ``desc``) and a bare state_dict. The architecture comes from the file (our format), from
    ``arch``/``head`` when given, or is detected from the parameter names and shapes."""
    path = str(path)
    obj = read_checkpoint_file(path)
    state, source = _state_dict_of(obj, path)
    state = _strip_prefixes(state)
    if source == "enhancer":
        try:
            config = ModelConfig.from_dict(obj["model"])
            preprocessing = Preprocessing.from_dict(obj["preprocessing"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: damaged enhancer checkpoint header ({_first_line(exc)})") from None
        class_names = tuple(obj.get("class_names", DEFAULT_CLASS_NAMES))
        meta = dict(obj.get("meta", {}))
        if arch is not None and arch != config.arch:
            raise CheckpointError(f"{path}: holds a {config.arch} model, not {arch}; drop --arch or pick the file")
    else:
        config = _config_for(state, path, arch, head)
        preprocessing = preprocessing_for(config.arch, config.input_size)
        class_names = DEFAULT_CLASS_NAMES if config.num_classes == 2 else tuple(map(str, range(config.num_classes)))
        meta = {k: _plain(obj[k]) for k in SEED_META_KEYS if source == "seed" and k in obj}
    model = build_from_config(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(_mismatch_error(path, state, config.arch, exc)) from None
    model.eval()
    return LoadedCheckpoint(
        model=model,
        config=config,
        preprocessing=preprocessing,
        class_names=class_names,
        source_format=source,
        path=path,
        sha256=file_sha256(path),
        meta=meta,
        raw={} if source == "state_dict" else {k: v for k, v in obj.items() if k != "model_state_dict"},
    )


def _plain(value: Any) -> Any:
    """Seed metadata as plain Python (``test_loss`` is a 0-d tensor there)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    preprocessing: Preprocessing,
    class_names: tuple[str, ...] = DEFAULT_CLASS_NAMES,
    meta: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    scheduler_state: dict[str, Any] | None = None,
) -> None:
    """Write our self-describing format atomically (temporary name, then rename). ``meta`` must hold plain data
    (numbers, strings, lists, dicts) so that the file stays loadable with ``weights_only=True``."""
    config: ModelConfig = model.config
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "enhancer_version": __version__,
        "model": config.to_dict(),
        "preprocessing": preprocessing.to_dict(),
        "class_names": list(class_names),
        "model_state_dict": model.state_dict(),
        "meta": meta or {},
    }
    if optimizer_state is not None:
        payload["optimizer_state_dict"] = optimizer_state
    if scheduler_state is not None:
        payload["scheduler_state_dict"] = scheduler_state
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # torch names the records after the file less its last suffix: path.name
        torch.save(payload, tmp)
