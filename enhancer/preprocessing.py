"""The input contract between a checkpoint and the loaders: size, channels and normalisation.

It lives in its own module because both sides need it and neither may import the other: the model code
(``enhancer.models.zoo``) records it in checkpoints, and the loaders (``enhancer.data``) apply it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# The seed notebook's single-channel normalisation (ImageNet's red-channel statistics).
SEED_MEAN = (0.485,)
SEED_STD = (0.229,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input: squash-resize to ``size`` (aspect not kept, as the seed did),
    scale to [0, 1], then ``(x - mean) / std`` per channel. Greyscale sources are replicated to 3 channels
    when ``in_chans == 3``."""

    size: tuple[int, int] = (224, 224)
    in_chans: int = 1
    mean: tuple[float, ...] = SEED_MEAN
    std: tuple[float, ...] = SEED_STD

    def __post_init__(self) -> None:
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {self.in_chans}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per input channel ({self.in_chans})")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (height, width) with positive values, got {self.size}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        unknown = set(d) - {"size", "in_chans", "mean", "std"}
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; valid: size, in_chans, mean, std")
        return cls(
            size=tuple(int(v) for v in d.get("size", (224, 224))),
            in_chans=int(d.get("in_chans", 1)),
            mean=tuple(float(v) for v in d.get("mean", SEED_MEAN)),
            std=tuple(float(v) for v in d.get("std", SEED_STD)),
        )


SEED_PREPROCESSING = Preprocessing()
RGB_PREPROCESSING = Preprocessing(in_chans=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def override(
    p: Preprocessing,
    *,
    size: int | None = None,
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
    channels: int | None = None,
) -> Preprocessing:
    """``p`` with the given settings replaced (``size``: a square side). A new channel count without mean/std takes
    that count's usual statistics (1: the seed's, 3: ImageNet's); one mean or std value applies to every channel.
    Raises ValueError naming the bad value."""
    in_chans = channels or p.in_chans
    same = in_chans == p.in_chans
    base_mean, base_std = (
        (p.mean, p.std) if same else ((SEED_MEAN, SEED_STD) if in_chans == 1 else (IMAGENET_MEAN, IMAGENET_STD))
    )

    def per_channel(values: tuple[float, ...], base: tuple[float, ...], name: str) -> tuple[float, ...]:
        if not values:
            return base
        if len(values) == 1:
            return tuple(values) * in_chans
        if len(values) != in_chans:
            count = "1 value (one channel)" if in_chans == 1 else f"1 or {in_chans} values (one per channel)"
            raise ValueError(f"--{name} {','.join(map(str, values))} needs {count}")
        return tuple(values)

    return Preprocessing(
        size=(size, size) if size is not None else p.size,
        in_chans=in_chans,
        mean=per_channel(tuple(mean), base_mean, "mean"),
        std=per_channel(tuple(std), base_std, "std"),
    )
