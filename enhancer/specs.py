"""Job specs: TOML -> frozen, typed dataclasses -> explicit arguments of the library functions.

Usage::

    spec = load_spec(EnhanceSpec, "jobs/enhance-kermany.toml", overrides={"batch_size": 32, "cam.score": "logit"})

One precedence rule everywhere: command line > ``ENHANCER_*`` environment > job file > defaults. Unknown keys,
wrong types and missing required fields are errors that name the key, the file and the valid choices.
A job file holds one table per job kind (``[enhance]``, ``[train]``, ...) plus optional ``[slurm]`` resources.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from enhancer.settings import CROP_FROM, HEADS, CamSettings, CropSettings, EnhanceSettings, ExplainPolicy

T = TypeVar("T")
ENV_PREFIX = "ENHANCER_"
REQUIRED = "<required>"  # marker default of required string fields, so that any table can omit them until merged
DEVICES = ("auto", "cpu", "cuda")  # "cuda:N" names one GPU
LOADERS = ("auto", "dali", "torch")
COMPRESSIONS = ("auto", "gzip", "lzf", "none")  # codec of the fields without their own; auto: measured defaults
# Fields that take a codec, and those that may be stored as JPEG: the store's own lists (enhancer.store.codecs),
# repeated here because specs must not import the store; tests/test_store_codecs.py keeps them equal.
CODEC_FIELDS = (
    *("index", "label", "pred", "prob", "orig_size", "image", "cam", "heatmap", "crop", "crop_box", "enhanced"),
    *("lung_mask", "lung_energy", "lung_hit", "box_energy", "box_hit", "box_iou", "targets", "explained"),
)
JPEG_FIELDS = ("image", "crop", "enhanced")
_CODEC_NAME = re.compile(r"^(none|lzf|gzip[1-9]?|jpeg(100|[1-9][0-9]?)?)$")
VALIDATE_LEVELS = ("auto", "header", "full")
IMAGE_FIELDS = ("enhanced", "crop", "image")  # the image fields of an enhanced dataset a model can train on
# Label files (enhancer.data.labels; repeated here because specs must not import the data layer, and
# tests/test_labels.py keeps them equal).
LABEL_FORMATS = ("auto", "nih", "chexpert", "mimic", "rsna", "csv")
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
VIEWS = ("all", "frontal", "lateral")
LOSSES = ("auto", "ce", "bce")  # auto: bce for multi-label data, ce (the seed's cross-entropy) otherwise
CLASS_WEIGHTS = ("equal", "prevalence")
# Settings of label files and of maps per class. A shard records them in its ``spec`` attribute only when one of
# them is set (EnhanceSpec.shard_dict): a single-label job's shards stay byte-identical to those written before
# label files existed, and a reader takes a missing key as its default.
CLASS_MAP_SETTINGS = (
    "labels",
    "label_format",
    "uncertain",
    "view",
    "label_metadata",
    "head",
    "explain",
    "threshold",
    "crop_from",
)
LABEL_CHOICES: dict[str, tuple[str, ...]] = {
    "label_format": LABEL_FORMATS,
    "uncertain": UNCERTAIN_POLICIES,
    "view": VIEWS,
}


class SpecError(ValueError):
    """A job spec is not valid; the message names the key and source, and how to fix it."""


@dataclass(frozen=True)
class InputSpec:
    """Overrides of the model's own preprocessing (unset: what its library, or its checkpoint, says)."""

    size: int | None = None  # square input side, e.g. 224
    mean: tuple[float, ...] = ()  # per channel, or one value for every channel
    std: tuple[float, ...] = ()
    channels: int | None = None  # 1 or 3; greyscale X-rays are replicated to 3 channels

    def __post_init__(self) -> None:
        if self.size is not None and self.size < 8:
            raise SpecError(f"input.size must be >= 8, got {self.size}")
        if self.channels not in (None, 1, 3):
            raise SpecError(f"input.channels must be 1 or 3, got {self.channels}")
        if any(s <= 0 for s in self.std):
            raise SpecError(f"input.std values must be positive, got {list(self.std)}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


@dataclass(frozen=True)
class EnhanceSpec:
    """Settings of ``enhancer enhance`` (one shard of the enhanced dataset)."""

    data: str = REQUIRED  # ImageFolder root or a path,label CSV
    out: str = REQUIRED  # output directory of the enhanced dataset
    checkpoint: str | None = None  # required to run; `enhancer demo-model` makes one for trying the tool
    arch: str | None = None  # override architecture detection (zoo names; `model` takes every kind)
    model: str | None = None  # zoo name, tv:NAME, timm:NAME or package.module:callable; None: detected (zoo)
    num_classes: int | None = None  # classes of a model from outside the zoo; None: what the weights say
    target_layer: str | None = None  # dotted module path of the CAM layer; None: the model family's default
    input: InputSpec = field(default_factory=InputSpec)  # overrides of the model's own preprocessing
    shard_id: int = 0
    num_shards: int = 1
    batch_size: int | None = None  # None: by device (enhance.default_batch_size: 16 on the CPU, 256 on CUDA)
    device: str = "auto"  # auto | cpu | cuda
    loader: str = "auto"  # auto | dali | torch
    num_threads: int = 2  # DALI CPU threads / torch DataLoader workers
    amp: bool = False  # bf16 autocast for the trunk on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the trunk: faster batches after a compile at start (cached on disk)
    fields: tuple[str, ...] = ("image", "cam", "heatmap", "crop", "crop_box", "enhanced")
    codec: dict[str, str] = field(default_factory=dict)  # [enhance.codec] field = "none" | "gzip1".."gzip9" | "jpeg95"
    compression: str = "auto"  # codec of the fields not in `codec`: auto (measured defaults) | gzip | lzf | none
    write_threads: int | None = None  # threads compressing shard chunks; None: the cores left after num_threads
    # auto | header | full: how deeply files are checked before the loader decodes them. auto: full (a PIL decode)
    # when DALI or nvJPEG decode (they crash the process on some corrupt files), header when PIL decodes anyway
    validate: str = "auto"
    # larger images are rejected (too_large) from their header, never allocated; = data.validate.DEFAULT_MAX_PIXELS
    max_pixels: int = 10_000 * 10_000
    decode_timeout_s: float = 60.0  # a file whose decoding takes longer is rejected (timeout); 0: no limit
    force_claim: bool = False  # take over a shard's claim that another process seems to hold (store.claims)
    source_size: int = 512  # resolution of the crop source (crops are cut from it, not from the model input)
    queue_size: int = 4  # batches waiting for the writer thread
    lung_model: str | None = None  # lung-segmentation U-Net (VGG11 encoder) state_dict: lung_mask + lung metrics
    lung_mask_in_enhanced: bool = False  # enhanced = image x heat weight x lung weight (enhance.mask_floor outside)
    boxes: str | None = None  # box CSV (RSNA patientId,x,y,width,height,Target or path,x0,y0,x1,y1): box metrics
    labels: str | None = None  # label file (nih, chexpert, mimic, rsna, csv) of the images under `data`
    label_format: str = "auto"  # auto (from the label file's header) | nih | chexpert | mimic | rsna | csv
    uncertain: str = "ignore"  # chexpert/mimic/csv -1 values: ignore (masked) | zeros | ones
    view: str = "all"  # all | frontal | lateral: the label file's rows of other views are rejected (filtered)
    label_metadata: str | None = None  # MIMIC-CXR-JPG mimic-cxr-2.0.0-metadata.csv(.gz): images and views per study
    head: str = "auto"  # output activation: auto (what the checkpoint records, else softmax) | softmax | sigmoid
    explain: str = "auto"  # classes with a map: auto | pred | label | all | top:K | CLASS[,CLASS] (ExplainPolicy)
    threshold: float = 0.5  # probability from which a class counts as predicted (explain = pred, multi-label)
    crop_from: str = "union"  # crops and enhanced images of per-class maps: from the union of the maps | each map
    cam: CamSettings = field(default_factory=CamSettings)
    crop: CropSettings = field(default_factory=CropSettings)
    enhance: EnhanceSettings = field(default_factory=EnhanceSettings)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "device": DEVICES,
        "loader": LOADERS,
        "compression": COMPRESSIONS,
        "validate": VALIDATE_LEVELS,
        **LABEL_CHOICES,
        "head": HEADS,
        "crop_from": CROP_FROM,
    }

    def __post_init__(self) -> None:
        _check_class_settings(self.explain, self.threshold)
        if self.lung_mask_in_enhanced and not self.lung_model:
            raise SpecError("lung_mask_in_enhanced needs lung_model (--lung-model FILE, the lung U-Net's weights)")
        if not 0 <= self.shard_id < self.num_shards:
            raise SpecError(f"shard_id {self.shard_id} must be in [0, num_shards={self.num_shards})")
        for name in ("batch_size", "source_size", "queue_size", "max_pixels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.decode_timeout_s < 0:
            raise SpecError(f"decode_timeout_s must be >= 0 (0: no limit), got {self.decode_timeout_s}")
        if self.num_threads < 0:
            raise SpecError(f"num_threads must be >= 0, got {self.num_threads}")
        if self.num_classes is not None and self.num_classes < 1:
            raise SpecError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.write_threads is not None and self.write_threads < 1:
            raise SpecError(f"write_threads must be >= 1 (or left out: the cores left), got {self.write_threads}")
        for name, codec in self.codec.items():
            check_codec(name, codec)
        _check_choices(self)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def shard_dict(self) -> dict[str, Any]:
        """The spec as a shard stores it: ``to_dict`` without the ``CLASS_MAP_SETTINGS`` when all hold defaults."""
        plain = self.to_dict()
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in CLASS_MAP_SETTINGS}
        if all(plain[name] == default for name, default in defaults.items()):
            return {k: v for k, v in plain.items() if k not in defaults}
        return plain


@dataclass(frozen=True)
class TrainSpec:
    """Settings of ``enhancer train``: the seed recipe, early-stopped on a validation split of the training data."""

    data: str = REQUIRED  # ImageFolder root (its train/ sub-folder when there is one) or an enhanced dataset dir
    out: str = REQUIRED  # run directory: last.pt (resume), best.pt, metrics.csv/.jsonl, curves.png
    field: str = "enhanced"  # image field of an enhanced dataset: enhanced | crop | image
    labels: str | None = None  # label file (nih, chexpert, mimic, rsna, csv) of the images under `data`
    label_format: str = "auto"  # auto (from the label file's header) | nih | chexpert | mimic | rsna | csv
    uncertain: str = "ignore"  # chexpert/mimic/csv -1 values: ignore (masked out of the loss) | zeros | ones
    view: str = "all"  # all | frontal | lateral
    label_metadata: str | None = None  # MIMIC-CXR-JPG mimic-cxr-2.0.0-metadata.csv(.gz): images and views per study
    loss: str = "auto"  # auto: bce (one sigmoid per class) for multi-label data, else ce (softmax, the seed's)
    class_weights: str = "equal"  # bce: equal | prevalence (positives of class c weigh n_negative_c / n_positive_c)
    arch: str | None = None  # None: the init checkpoint's architecture, else resnet101 (the seed's best)
    head: str | None = None  # seed head of a fresh ResNet (220k, 10k, 15k); None: the architecture's default
    input_size: int | None = None  # None: the init checkpoint's, else 224
    init: str = "auto"  # auto (imagenet when the arch has weights, else random) | imagenet | random | CHECKPOINT
    unfreeze: tuple[str, ...] = ()  # trainable groups (head, fc, layer4, layer4[2], all); empty: arch default
    unfreeze_schedule: tuple[str, ...] = ()  # groups added one at a time, every `unfreeze_every` epochs
    unfreeze_every: int = 0  # e.g. 3 with ["layer4[2]", "layer4[1]", "layer4[0]"]: one more block every 3 epochs
    epochs: int = 20
    batch_size: int = 32  # global batch: split evenly over the DDP ranks
    lr: float = 1e-4  # RAdam
    weight_decay: float = 1e-3
    t_max: int = 15  # CosineAnnealingLR period in epochs (stepped per epoch, as the seed did)
    patience: int = 5  # early stopping on the validation loss, best weights restored
    min_delta: float = 0.001
    val_fraction: float = 0.1  # stratified, seeded validation split carved from the training data
    seed: int = 0
    augment: bool = True  # the seed's training augmentations (rotation, flip, jitter, affine, perspective, crop)
    crop_fraction: float = 0.75  # the seed's centre crop 168/224
    device: str = "auto"  # auto | cpu | cuda
    num_workers: int = 4  # DataLoader worker processes per rank (decode + augmentation)
    amp: bool = True  # bf16 autocast + channels_last on CUDA; ignored on CPU
    resume: bool | None = None  # None: resume when out/last.pt exists; true: require it; false: refuse an old run
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "field": IMAGE_FIELDS,
        "device": DEVICES,
        **LABEL_CHOICES,
        "loss": LOSSES,
        "class_weights": CLASS_WEIGHTS,
    }

    def __post_init__(self) -> None:
        if self.class_weights != "equal" and self.loss == "ce":
            raise SpecError("class_weights = prevalence applies to loss = bce (multi-label); drop it or use --loss bce")
        for name in ("epochs", "batch_size", "t_max"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("patience", "unfreeze_every", "num_workers"):
            if getattr(self, name) < 0:
                raise SpecError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise SpecError(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if not 0 < self.crop_fraction <= 1:
            raise SpecError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.unfreeze_schedule and not self.unfreeze_every:
            raise SpecError("unfreeze_schedule needs unfreeze_every (epochs between two unfreezing steps) >= 1")
        _check_choices(self)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


@dataclass(frozen=True)
class EvaluateSpec:
    """Settings of ``enhancer evaluate``: loss, accuracy, sensitivity, specificity, AUROC, confusion matrix."""

    data: str = REQUIRED  # ImageFolder root (its test/ sub-folder when there is one) or an enhanced dataset dir
    checkpoint: str = REQUIRED  # the research notebook's .pth files work unchanged
    arch: str | None = None  # override architecture detection
    model: str | None = None  # zoo name, tv:NAME, timm:NAME or package.module:callable; None: detected (zoo)
    num_classes: int | None = None  # classes of a model from outside the zoo; None: what the weights say
    input: InputSpec = field(default_factory=InputSpec)  # overrides of the model's own preprocessing
    field: str = "enhanced"  # image field of an enhanced dataset
    labels: str | None = None  # label file (nih, chexpert, mimic, rsna, csv) of the images under `data`
    label_format: str = "auto"  # auto (from the label file's header) | nih | chexpert | mimic | rsna | csv
    uncertain: str = "ignore"  # chexpert/mimic/csv -1 values: ignore (masked out of the metrics) | zeros | ones
    view: str = "all"  # all | frontal | lateral
    label_metadata: str | None = None  # MIMIC-CXR-JPG mimic-cxr-2.0.0-metadata.csv(.gz): images and views per study
    head: str = "auto"  # output activation: auto (what the checkpoint records, else softmax) | softmax | sigmoid
    threshold: float = 0.5  # sigmoid: probability from which a class counts as predicted (counts, sensitivity)
    batch_size: int = 64
    device: str = "auto"
    num_workers: int = 2
    json: str | None = None  # also write the report as JSON to this file
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "field": IMAGE_FIELDS,
        "device": DEVICES,
        **LABEL_CHOICES,
        "head": HEADS,
    }

    def __post_init__(self) -> None:
        _check_class_settings("auto", self.threshold)
        if self.batch_size < 1 or self.num_workers < 0:
            raise SpecError(f"batch_size must be >= 1 and num_workers >= 0, got {self.batch_size}, {self.num_workers}")
        _check_choices(self)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


AUDIT_CHECKS = ("randomisation", "faithfulness", "repeatability", "localisation")


@dataclass(frozen=True)
class AuditSpec:
    """Settings of ``enhancer audit``: sanity, faithfulness and localisation checks of an enhanced dataset's maps."""

    dataset: str = REQUIRED  # merged enhanced dataset (its manifest names the Grad-CAM settings)
    checkpoint: str = REQUIRED  # the model that made the dataset's maps
    out: str = REQUIRED  # audit.json, audit.md and the PNG figures
    data: str | None = None  # the original ImageFolder, needed when the dataset stores no image field
    masks: str | None = None  # folder of lesion masks, one <stem>.png per image (nonzero = lesion)
    boxes: str | None = None  # lesion boxes: RSNA CSV (patientId,x,y,width,height,Target) or path,x0,y0,x1,y1
    second_checkpoint: str | None = None  # another seed or round of the model: repeatability of the maps
    # audited samples, a seeded random subset (0: all); not "samples": ENHANCER_SAMPLES names the sample X-rays' folder
    n_samples: int = 64
    seed: int = 0  # subset, randomisation, random maps, tie orders and bootstrap
    resamples: int = 1000  # bootstrap resamples of every 95% interval
    batch_size: int = 16
    device: str = "auto"  # auto | cpu | cuda
    steps: int = 10  # deletion / insertion: fractions 0, 1/steps, ..., 1 of the pixels
    baseline: str = "blur"  # what deleted pixels show: blur | mean
    score: str = "prob"  # faithfulness score of the explained class: prob | logit
    checks: tuple[str, ...] = AUDIT_CHECKS  # repeatability needs second_checkpoint, localisation masks or boxes
    # a dataset of maps per class (multi-label): the classes audited, by name; empty: every class that has maps
    classes: tuple[str, ...] = ()
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "device": DEVICES,
        "baseline": ("blur", "mean"),
        "score": ("prob", "logit"),
    }

    def __post_init__(self) -> None:
        if self.masks and self.boxes:
            raise SpecError("give either masks (a folder of PNG masks) or boxes (a box CSV), not both")
        for name in ("resamples", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_samples < 0 or self.n_samples == 1:
            raise SpecError(f"n_samples must be 0 (all) or >= 2 (random pairs need two maps), got {self.n_samples}")
        _check_choices(self)
        for check in self.checks:
            _check_choice("checks", check, AUDIT_CHECKS)

    def to_dict(self) -> dict[str, Any]:
        """The spec as audit.json records it; ``classes`` only when set (an audit of one map per image records the
        same spec as before the setting existed)."""
        plain = to_plain(self)
        if not self.classes:
            del plain["classes"]
        return plain


@dataclass(frozen=True)
class CycleSpec:
    """Settings of ``enhancer cycle``: K rounds of enhance -> train on the enhanced data -> evaluate.
    ``[cycle.enhance]`` and ``[cycle.train]`` tune the steps; their data/out/checkpoint/init are set per round."""

    data: str = REQUIRED  # ImageFolder the rounds enhance and train on (its train/ sub-folder when there is one)
    test: str = REQUIRED  # held-out ImageFolder evaluated after every round (never used for training)
    checkpoint: str = REQUIRED  # the model of round 0
    out: str = REQUIRED  # round-1/, round-2/, ... and summary.md / summary.json
    rounds: int = 1
    enhance_test: bool = False  # also evaluate on the test set enhanced by the round's starting model (train.field)
    audit_samples: int = 16  # a quick `enhancer audit` of each round's enhanced data on this many samples (0: none)
    enhance: EnhanceSpec = dataclasses.field(default_factory=EnhanceSpec)
    train: TrainSpec = dataclasses.field(default_factory=TrainSpec)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise SpecError(f"rounds must be >= 1, got {self.rounds}")
        if self.audit_samples < 0 or self.audit_samples == 1:
            raise SpecError(f"audit_samples must be 0 (no audit) or >= 2, got {self.audit_samples}")
        multi_label = {
            "enhance.labels": self.enhance.labels,
            "train.labels": self.train.labels,
            "enhance.head": self.enhance.head == "sigmoid",
            "enhance.explain": self.enhance.explain != "auto",
            "train.loss": self.train.loss == "bce",
        }
        given = [k for k, v in multi_label.items() if v]
        if given:
            raise SpecError(
                f"{given[0]} is a multi-label setting: enhancer cycle runs single-label rounds only (an ImageFolder, "
                "a softmax model, one map per image); for multi-label data run enhance --labels, train --loss bce, "
                "evaluate and audit one by one (README: Multi-label datasets)"
            )

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


def check_codec(field_name: str, codec: str) -> None:
    """A ``codec`` entry: a field that has a codec, and a codec that field accepts."""
    if field_name not in CODEC_FIELDS:
        raise SpecError(f"codec.{field_name}: no such field; fields with a codec: {', '.join(CODEC_FIELDS)}")
    jpeg = field_name in JPEG_FIELDS
    if not isinstance(codec, str) or not _CODEC_NAME.match(codec) or (codec.startswith("jpeg") and not jpeg):
        choices = "none, gzip, gzip1..gzip9, lzf" + (", jpeg, jpeg1..jpeg100" if jpeg else "")
        only = "" if jpeg else f" (jpeg only for {', '.join(JPEG_FIELDS)})"
        raise SpecError(f"codec.{field_name} = {codec!r} is not valid; choose one of {choices}{only}")


def _check_class_settings(explain: str, threshold: float) -> None:
    """``explain`` parses (``ExplainPolicy``) and ``threshold`` is a probability."""
    try:
        ExplainPolicy.parse(explain)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    if not 0.0 < threshold < 1.0:
        raise SpecError(f"threshold = {threshold} must be a probability in (0, 1), e.g. 0.5")


def _check_choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise SpecError(f"{name} = {value!r} is not valid; choose one of {', '.join(valid)}")


def _check_choices(spec: Any) -> None:
    """Every field named in the spec's ``CHOICES`` (the command line offers the same choices)."""
    for name, valid in spec.CHOICES.items():
        value = getattr(spec, name)
        _check_choice(name, value.split(":")[0] if name == "device" else value, valid)


def to_plain(obj: Any) -> Any:
    """A spec as plain TOML/JSON-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    return obj


def parse_value(text: str) -> Any:
    """A command-line or environment string as a TOML value when it is one (``32``, ``true``, ``[1, 2]``),
    else the string itself (``resnet101``, ``/data/x``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _convert(value: Any, hint: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, key, source)
            except SpecError as exc:
                errors.append(str(exc))
        raise SpecError(errors[0] if len(errors) == 1 else f"{key} ({source}): {value!r} fits none of {hint}")
    if origin is dict:
        if not isinstance(value, Mapping):
            raise SpecError(f"{key} ({source}) must be a table of name = value pairs, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise SpecError(f"{key} ({source}) must be a table of settings, got {value!r}")
        return _build(hint, value, source, prefix=f"{key}.")
    if origin is tuple:
        if isinstance(value, str) and args and args[-1] is Ellipsis:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise SpecError(f"{key} ({source}) must be a list, got {value!r}")
        item_hints = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(item_hints) != len(value):
            raise SpecError(f"{key} ({source}) must have {len(item_hints)} items, got {value!r}")
        pairs = enumerate(zip(value, item_hints, strict=True))
        return tuple(_convert(v, h, f"{key}[{i}]", source) for i, (v, h) in pairs)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise SpecError(f"{key} ({source}) must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SpecError(f"{key} ({source}) must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise SpecError(f"{key} ({source}) must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise SpecError(f"{key} ({source}) must be a string, got {value!r}")
    raise SpecError(f"{key} ({source}): unsupported setting type {hint}")


def _convert_fields(cls: type, values: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """Check the keys of one layer of settings and convert their values to the declared types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        valid = ", ".join(prefix + n for n in names)
        raise SpecError(f"unknown key {prefix}{unknown[0]} ({source}); valid keys: {valid}")
    return {k: _convert(v, hints[k], prefix + k, source) for k, v in values.items()}


def _build(cls: type[T], values: Mapping[str, Any], source: str, prefix: str = "") -> T:
    kwargs = _convert_fields(cls, values, source, prefix)
    try:
        return cls(**kwargs)
    except SpecError as exc:
        raise SpecError(f"{exc} ({source})") from None
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{prefix.rstrip('.') or cls.__name__} ({source}): {exc}") from None


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"cam.score": "logit"}`` -> ``{"cam": {"score": "logit"}}``."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SpecError(f"{key}: {p} is a value, not a table of settings")
        node[leaf] = value
    return nested


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def read_job_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such job file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from None


def environment_overrides(cls: type, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``ENHANCER_BATCH_SIZE=32`` -> ``{"batch_size": 32}``; nested keys with a double underscore
    (``ENHANCER_CAM__SCORE=logit``). Only names of the spec's own fields are read."""
    environ = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        if key.split(".")[0] in {f.name for f in dataclasses.fields(cls)}:
            found[key] = parse_value(text)
    return found


def load_spec(
    cls: type[T],
    job_file: str | os.PathLike[str] | None = None,
    *,
    table: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Defaults < ``[table]`` of the job file < ``ENHANCER_*`` environment < ``overrides`` (the command line;
    dotted keys for nested settings). Required fields still missing after merging are an error."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if job_file is not None:
        document = read_job_file(job_file)
        if table is not None:
            if table not in document:
                raise SpecError(f"{job_file}: has no [{table}] table (found: {', '.join(document) or 'nothing'})")
            document = document[table]
        layers.append((str(job_file), document))
    layers.append(("environment", _nest(environment_overrides(cls, environ))))
    layers.append(("command line", _nest(dict(overrides or {}))))
    merged: dict[str, Any] = {}
    for source, values in layers:
        _convert_fields(cls, values, source)  # check each layer on its own, so an error names where it came from
        merged = _deep_merge(merged, values)
    spec = _build(cls, merged, " < ".join(s for s, v in layers if v) or "defaults")
    missing = [f.name for f in dataclasses.fields(cls) if getattr(spec, f.name) == REQUIRED]
    if missing:
        raise SpecError(f"missing required setting(s): {', '.join(missing)} (give them in the job file or as options)")
    return spec


def dump_toml(table: str, values: Mapping[str, Any]) -> str:
    """A minimal TOML writer for resolved specs (strings, numbers, booleans, lists, nested tables)."""
    scalars = {k: v for k, v in values.items() if not isinstance(v, Mapping) and v is not None}
    tables = {k: v for k, v in values.items() if isinstance(v, Mapping)}
    lines = [f"[{table}]"] + [f"{k} = {toml_value(v)}" for k, v in scalars.items()]
    for name, sub in tables.items():
        lines += ["", dump_toml(f"{table}.{name}", sub)]
    return "\n".join(lines)


def toml_value(v: Any) -> str:
    """One value as TOML writes it (and as ``--set key=VALUE`` parses it back): ``"text"``, ``32``, ``[224, 224]``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)
