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
from enhancer.hashing import file_sha256_in_background
from enhancer.models.external import parse_model_name
from enhancer.models.registry import build, detect_config, library_preprocessing
from enhancer.models.zoo import (
    DEFAULT_CLASS_NAMES,
    ZOO,
    ModelConfig,
    ModelError,
    build_from_config,
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


def _describe_keys(kind: str, names: set[str] | list[str], limit: int = 5) -> str:
    """``3 missing keys: a, b, c`` (the first ``limit`` names, sorted), or ``no missing keys``."""
    if not names:
        return f"no {kind} keys"
    shown = sorted(names)[:limit]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} {kind} keys: " + ", ".join(shown) + more


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
        f"{head} ({_describe_keys('missing', missing)}; {_describe_keys('unexpected', unexpected)}{shapes}). "
        f"Closest architecture: {closest}; pass --model (or --arch) to choose one, see `enhancer models`"
    )


def key_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, other shape) parameter/buffer names of ``state`` against ``model``; the last as
    ``name checkpoint (2, 1024) vs model (3, 1024)``."""
    ref = model.state_dict()
    missing = sorted(set(ref) - set(state))
    unexpected = sorted(set(state) - set(ref))
    shapes = [
        f"{k} checkpoint {tuple(state[k].shape)} vs model {tuple(ref[k].shape)}"
        for k in sorted(set(ref) & set(state))
        if tuple(state[k].shape) != tuple(ref[k].shape)
    ]
    return missing, unexpected, shapes


def _load_external(path: str, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict load into a model from outside the zoo; every mismatch in one message."""
    missing, unexpected, shapes = key_mismatch(model, state)
    if missing or unexpected or shapes:
        config: ModelConfig = model.config
        more = f" and {len(shapes) - 3} more" if len(shapes) > 3 else ""
        shaped = f"; {len(shapes)} keys of another shape: {', '.join(shapes[:3])}{more}" if shapes else ""
        keys = f"{_describe_keys('missing', missing)}; {_describe_keys('unexpected', unexpected)}{shaped}"
        raise CheckpointError(
            f"{path}: does not fit {config.arch} with {config.num_classes} classes ({keys}). "
            "Check --model and --num-classes; "
            f"`enhancer inspect {path} --model {config.arch} --layers` shows the model's layers"
        )
    model.load_state_dict(state, strict=True)


def _config_for(
    state: dict[str, torch.Tensor], path: str, arch: str | None, head: str | None, num_classes: int | None = None
) -> ModelConfig:
    """The architecture of a file without a header: detected, or as asked (keeping what detection says of the
    head and class count when it found the same architecture)."""
    detected = detect_config(state)
    if arch is None:
        if detected is None:
            raise CheckpointError(_mismatch_error(path, state, None, None))
        if num_classes is not None and num_classes != detected.num_classes:
            raise CheckpointError(
                f"{path}: holds a {detected.arch} with {detected.num_classes} classes, not {num_classes}; "
                "drop --num-classes or pick the file"
            )
        return detected
    same = detected is not None and detected.arch == arch
    try:
        return resolve_config(
            arch,
            head=head or (detected.head if same else None),
            num_classes=num_classes or (detected.num_classes if same else 2),
            input_size=detected.input_size if same else 224,
            width=detected.width if same else None,
        )
    except ModelError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _inferred_shape_args(arch: str, state: dict[str, torch.Tensor]) -> tuple[int | None, int | None]:
    """(num_classes, in_chans) that the weights imply for a model from outside the zoo: the out_features of its
    last Linear and the in_channels of its first Conv2d, read from ``state`` by name (None where not found)."""
    try:
        with torch.device("meta"):
            probe = build(ModelConfig(arch=arch, num_classes=2))
    except (ModelError, RuntimeError, NotImplementedError, TypeError):
        return None, None
    modules = list(probe.named_modules())
    linear = [n for n, m in modules if isinstance(m, nn.Linear)]
    conv = next((n for n, m in modules if isinstance(m, nn.Conv2d)), None)
    classes = state.get(f"{linear[-1]}.weight") if linear else None
    stem = state.get(f"{conv}.weight") if conv is not None else None
    return (
        int(classes.shape[0]) if classes is not None and classes.ndim == 2 else None,
        int(stem.shape[1]) if stem is not None and stem.ndim == 4 else None,
    )


def _external_model(
    path: str, arch: str, state: dict[str, torch.Tensor], num_classes: int | None
) -> tuple[ModelConfig, nn.Module]:
    """Build ``arch`` (tv:/timm:/package.module:callable) for ``state``: the class count as given or as the weights
    say, then load strictly."""
    found_classes, in_chans = _inferred_shape_args(arch, state)
    config = ModelConfig(arch=arch, num_classes=num_classes or found_classes or 2)
    try:
        model = build(config, in_chans=in_chans if parse_model_name(arch).kind == "timm" else None)
    except ModelError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    _load_external(path, model, state)
    return config, model


def _header_of(obj: dict[str, Any], path: str, name: str | None) -> tuple[ModelConfig, Preprocessing]:
    try:
        config = ModelConfig.from_dict(obj["model"])
        preprocessing = Preprocessing.from_dict(obj["preprocessing"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged enhancer checkpoint header ({_first_line(exc)})") from None
    if name is not None and name != config.arch:
        raise CheckpointError(f"{path}: holds a {config.arch} model, not {name}; drop --model/--arch or pick the file")
    return config, preprocessing


def _model_name(path: str, arch: str | None, model: str | None) -> str | None:
    """The model asked for (``--model`` or the older ``--arch``), in its canonical spelling."""
    if arch is not None and model is not None and parse_model_name(arch).text != parse_model_name(model).text:
        raise CheckpointError(f"{path}: --arch {arch} and --model {model} disagree; give only --model")
    name = model or arch
    try:
        return parse_model_name(name).text if name is not None else None
    except ModelError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _build_and_load(
    path: str, name: str | None, state: dict[str, torch.Tensor], config: ModelConfig | None, num_classes: int | None
) -> tuple[ModelConfig, nn.Module]:
    if config is None and name is not None and parse_model_name(name).kind != "zoo":
        return _external_model(path, name, state, num_classes)
    assert config is not None
    if parse_model_name(config.arch).kind != "zoo":
        return _external_model(path, config.arch, state, config.num_classes)
    with torch.device("meta"):
        model = build_from_config(config)
    assign = _same_dtypes(model, state)
    if not assign:  # a float16 (or float64) file: copied into float32 parameters, as the model's own dtype
        model = build_from_config(config)
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:
        raise CheckpointError(_mismatch_error(path, state, config.arch, exc)) from None
    return config, model


def _same_dtypes(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether every tensor of ``model``'s state_dict has one of the same dtype in ``state``: then a zoo model built on
    the meta device takes the loaded tensors as they are (``load_state_dict(assign=True)``): no random initialisation
    (half a second for ResNet-101 on a 2-core CPU) and no second copy of the weights."""
    return all(k in state and state[k].dtype == v.dtype for k, v in model.state_dict().items())


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    head: str | None = None,
    model: str | None = None,
    num_classes: int | None = None,
) -> LoadedCheckpoint:
    """Load a checkpoint file into a model (eval mode, CPU), strictly.

    Accepts our own format, the seed notebook's dict (``model_state_dict``, ``optimizer_state_dict``, ...,
    ``test_loss``, ``desc``) and a bare state_dict (``module.`` prefixes removed). The model is ``model`` (a zoo
    name, ``tv:NAME``, ``timm:NAME`` or ``package.module:callable``; ``arch`` is the older zoo-only spelling), the
    one in the file's header (our format), or the zoo architecture detected from the parameter names and shapes.
    ``num_classes``: the class count (default: what the weights say). Key mismatches raise one CheckpointError."""
    path = str(path)
    name = _model_name(path, arch, model)
    sha256 = file_sha256_in_background(path)  # while the file is read and the model built (its errors: below)
    obj = read_checkpoint_file(path)
    state, source = _state_dict_of(obj, path)
    state = _strip_prefixes(state)
    config: ModelConfig | None = None
    preprocessing: Preprocessing | None = None
    meta: dict[str, Any] = {}
    if source == "enhancer":
        config, preprocessing = _header_of(obj, path, name)
        meta = dict(obj.get("meta", {}))
    else:
        meta = {k: _plain(obj[k]) for k in SEED_META_KEYS if source == "seed" and k in obj}
        if name is None or parse_model_name(name).kind == "zoo":
            config = _config_for(state, path, name, head, num_classes)
    config, net = _build_and_load(path, name, state, config, num_classes)
    net.eval()
    default_names = DEFAULT_CLASS_NAMES if config.num_classes == 2 else tuple(map(str, range(config.num_classes)))
    return LoadedCheckpoint(
        model=net,
        config=config,
        preprocessing=preprocessing or library_preprocessing(net),
        class_names=tuple(obj.get("class_names", default_names)) if source == "enhancer" else default_names,
        source_format=source,
        path=path,
        sha256=sha256(),
        meta=meta,
        raw={} if source == "state_dict" else {k: v for k, v in obj.items() if k != "model_state_dict"},
    )


ACTIVATIONS = ("softmax", "sigmoid")


def output_activation(ck: LoadedCheckpoint, asked: str = "auto") -> str:
    """``softmax`` or ``sigmoid``: ``asked`` when given, else what the checkpoint records (``meta["activation"]``,
    written by ``enhancer train``), else softmax (the seed's)."""
    if asked != "auto":
        if asked not in ACTIVATIONS:
            raise CheckpointError(f"head {asked!r} is not valid; choose auto, {', '.join(ACTIVATIONS)}")
        return asked
    recorded = ck.meta.get("activation")
    if recorded is not None and recorded not in ACTIVATIONS:
        raise CheckpointError(f"{ck.path}: records activation {recorded!r}; pass --head softmax or --head sigmoid")
    return recorded or "softmax"


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
