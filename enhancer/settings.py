"""Settings of the explain step (Grad-CAM, crop box, enhanced image): frozen dataclasses that validate themselves.

Usage::

    from enhancer.settings import CamSettings
    CamSettings(score="logit", channel_reduce="sum").to_dict()   # what the shard attributes record

Plain Python, no torch: the job specs (``enhancer.specs``) nest these, and parsing a TOML job must not pull in torch.
The tensor code that uses them (and the torch dtypes behind ``amp``) lives in ``enhancer.explain.cam``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

# Every CAM method, by what it needs: the target layer's activations A and the score's gradient G w.r.t. them
# (one head-only backward), A alone, or forward passes of perturbed inputs / activations (``scorecam_batch`` each).
# Definitions: enhancer.explain.methods.METHOD_NOTES (those of pytorch-grad-cam 1.5.7).
GRADIENT_METHODS = ("gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "gradcam-elementwise", "eigengradcam")
ACTIVATION_METHODS = ("eigencam",)
PERTURBATION_METHODS = ("scorecam", "ablationcam")
METHODS = (*GRADIENT_METHODS, *ACTIVATION_METHODS, *PERTURBATION_METHODS)
TARGETS = ("predicted", "label")
SCORES = ("prob", "logit")
CHANNEL_REDUCE = ("mean", "sum")
NORMALIZE = ("max", "minmax")
AMP_MODES = (None, "bf16", "fp16")  # autocast of the trunk; enhancer.explain.cam.AMP maps them to torch dtypes


@dataclass(frozen=True)
class CamSettings:
    """How the map is computed; the defaults reproduce the seed notebook.

    method: the CAM method (``METHODS``; default ``"gradcam"``), defined as in pytorch-grad-cam 1.5.7 (see
    ``enhancer.explain.methods``).
    target: ``"predicted"`` (argmax of the logits, seed), ``"label"`` (needs ``labels``) or a fixed class index.
    score: ``"prob"`` (softmax probability, seed; computed in its non-vanishing log-odds form, see
    ``enhancer.explain.cam.RAW_CAM_SCALE_NOTE``) or ``"logit"``.
    channel_reduce: ``"mean"`` (seed) or ``"sum"`` (the Grad-CAM paper / pytorch-grad-cam) over channels.
    normalize: ``"max"`` (divide by the max, seed) or ``"minmax"`` ((raw - min) / (max - min)).
    amp: ``None``, ``"bf16"`` or ``"fp16"`` autocast for the trunk, applied on CUDA only (CPU autocast is slower
    than float32 on most CPUs); the head always runs in float32.
    channels_last: channels_last input memory format for the trunk (the enhance job turns it on where it is faster:
    ``enhancer.explain.cam.prefers_channels_last``).
    scorecam_batch: perturbed copies (images x channels) per forward pass of scorecam and ablationcam; memory
    against speed, the maps do not depend on it.
    """

    method: str = "gradcam"
    target: str | int = "predicted"
    score: str = "prob"
    channel_reduce: str = "mean"
    normalize: str = "max"
    amp: str | None = None
    channels_last: bool = False
    scorecam_batch: int = 64
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"method": METHODS}  # the command line offers the same

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        if isinstance(self.target, bool) or not (
            self.target in TARGETS or (isinstance(self.target, int) and self.target >= 0)
        ):
            raise ValueError(f"target={self.target!r} is not valid; choose 'predicted', 'label' or a class index >= 0")
        _check_choice("score", self.score, SCORES)
        _check_choice("channel_reduce", self.channel_reduce, CHANNEL_REDUCE)
        _check_choice("normalize", self.normalize, NORMALIZE)
        _check_choice("amp", self.amp, AMP_MODES)
        if isinstance(self.scorecam_batch, bool) or not isinstance(self.scorecam_batch, int) or self.scorecam_batch < 1:
            raise ValueError(f"scorecam_batch={self.scorecam_batch!r} must be an integer >= 1 (copies per forward)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CamSettings:
        return cls(**_known_keys(cls, d))


@dataclass(frozen=True)
class CropSettings:
    """Grad-CAM-guided crop box.

    threshold: pixels with heat >= threshold * max(heat) are the hot region (default 0.5: half the peak).
    largest_region: keep only the largest 8-connected hot region (default: the box spans all hot pixels).
    margin: each side grows by this fraction of the box's width/height, then is clipped to the image.
    min_size: the box is at least this fraction of the original width/height; a box grown for ``min_size`` or
    ``square`` stays centred but slides to stay inside the image.
    square: grow the shorter side to the longer one (impossible, hence not square, when it exceeds the image).
    size: (height, width) of the resized crop.
    """

    threshold: float = 0.5
    largest_region: bool = False
    margin: float = 0.1
    min_size: float = 0.25
    square: bool = False
    size: tuple[int, int] = (224, 224)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold} must be in (0, 1] (a fraction of the map's max)")
        if self.margin < 0:
            raise ValueError(f"margin={self.margin} must be >= 0 (a fraction of the box size per side)")
        if not 0.0 <= self.min_size <= 1.0:
            raise ValueError(f"min_size={self.min_size} must be in [0, 1] (a fraction of the original side)")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size={self.size} must be (height, width) with positive values")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "size": list(self.size)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CropSettings:
        d = _known_keys(cls, d)
        if "size" in d:
            d["size"] = tuple(int(v) for v in d["size"])
        return cls(**d)


@dataclass(frozen=True)
class EnhanceSettings:
    """Enhanced image = image * (floor + (1 - floor) * heat**gamma) [* (mask_floor + (1 - mask_floor) * lung)].

    floor: brightness kept where the heat is 0 (0 blacks out cold regions, 1 leaves the image unchanged).
    gamma: > 1 narrows the emphasised regions, < 1 widens them.
    mask_floor: brightness kept outside the lung mask when one is supplied (0: outside is black).
    """

    floor: float = 0.3
    gamma: float = 1.0
    mask_floor: float = 0.0

    def __post_init__(self) -> None:
        for name in ("floor", "mask_floor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")
        if self.gamma <= 0:
            raise ValueError(f"gamma={self.gamma} must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnhanceSettings:
        return cls(**_known_keys(cls, d))


HEADS = ("auto", "softmax", "sigmoid")  # output activation: auto = what the checkpoint records, else softmax
CROP_FROM = ("union", "each")  # multi-label crops / enhanced images: from the union of the maps, or one per map
EXPLAIN_KINDS = ("auto", "pred", "label", "all")  # besides top:K and a list of classes


@dataclass(frozen=True)
class ExplainPolicy:
    """Which classes of each image get a map (``--explain``).

    auto: one map, of the class ``CamSettings.target`` names (the seed's single-label layout), for a softmax model;
    ``pred`` for a sigmoid one. pred: every class whose probability is >= the threshold, or the top one when none
    is. label: the classes the image's targets mark positive (its label for a single-label dataset), or the top
    predicted one when none is. all: every class. top:K: the K most probable classes. CLASS[,CLASS]: these classes,
    by name or id.

    Every map but auto's has a slot: ``slots`` per image, the explained class ids beside the maps (-1: an empty
    slot, for pred and label, which may explain fewer classes than there are slots).
    """

    kind: str  # auto | pred | label | all | top | classes
    k: int = 0  # top:K
    classes: tuple[str, ...] = ()  # names or ids, as given

    @classmethod
    def parse(cls, text: str) -> ExplainPolicy:
        text = text.strip()
        if text in EXPLAIN_KINDS:
            return cls(text)
        if text.startswith("top:"):
            k = text[4:]
            if not k.isdigit() or int(k) < 1:
                raise ValueError(f"explain = {text!r}: top:K needs a whole number K >= 1, e.g. top:3")
            return cls("top", k=int(k))
        classes = tuple(c.strip() for c in text.split(",") if c.strip())
        if not classes:
            raise ValueError(
                f"explain = {text!r} is not valid; choose {', '.join(EXPLAIN_KINDS)}, top:K or CLASS[,CLASS]"
            )
        return cls("classes", classes=classes)

    @property
    def per_class(self) -> bool:
        """Whether the maps have a class axis (every policy but auto on a softmax model)."""
        return self.kind != "auto"

    def slots(self, num_classes: int) -> int:
        """Maps per image: K for top:K, the listed classes' count, else every class (pred and label may fill fewer)."""
        if self.kind == "top":
            return min(self.k, num_classes)
        return len(self.classes) if self.kind == "classes" else num_classes

    def class_ids(self, class_names: tuple[str, ...] | list[str]) -> tuple[int, ...]:
        """The ids of the listed classes (names first, then ids); an error names the valid classes."""
        ids = []
        for c in self.classes:
            if c in class_names:
                ids.append(list(class_names).index(c))
            elif c.isdigit() and int(c) < len(class_names):
                ids.append(int(c))
            else:
                raise ValueError(f"explain: no class {c!r}; the model's classes are {', '.join(class_names)}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"explain: class {self.classes} listed twice")
        return tuple(ids)


def _known_keys(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    unknown = set(d) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}")
    return dict(d)


def _check_choice(name: str, value: Any, valid: tuple[Any, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, valid))}")
