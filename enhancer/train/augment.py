"""The seed's image transforms for training and evaluation, on uint8 greyscale tensors ``(1, H, W)``.

Usage::

    from enhancer.train.augment import train_transform, eval_transform
    t = train_transform(preprocessing)          # preprocessing from the checkpoint (size, channels, mean, std)
    x = t(torch.zeros(1, 512, 512, dtype=torch.uint8))   # -> (in_chans, 224, 224) float32, normalised

Training (the notebook's, in its order): rotation +-20 deg, horizontal flip, small colour jitter, random affine
translate (0.05, 0.3) with p=0.5, random perspective 0.2 with p=0.5, then resize to the input size -> centre crop
0.75 of it (168 at 224) -> resize back. Evaluation: resize only. Inputs are squash-resized to the model size first
(PIL bilinear for files, as the seed's ``Resize((224, 224))``), so the random geometry runs on small images.
Randomness comes from torch's global generator (in DataLoader workers: the worker's seeded generator), which the
training recipe seeds per epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from enhancer.preprocessing import Preprocessing

CROP_FRACTION = 0.75  # the seed's 168 / 224 centre crop
JITTER = {"brightness": 0.1, "contrast": 0.1}  # "small colour jitter": the notebook's values were not recorded

Transform = Callable[[torch.Tensor], torch.Tensor]


def _finish(preprocessing: Preprocessing) -> list[v2.Transform]:
    """uint8 -> float [0, 1] -> normalised, greyscale replicated for 3-channel models."""
    steps: list[v2.Transform] = [v2.ToDtype(torch.float32, scale=True)]
    if preprocessing.in_chans == 3:
        steps.append(v2.Lambda(lambda x: x.expand(3, -1, -1)))
    steps.append(v2.Normalize(list(preprocessing.mean), list(preprocessing.std)))
    return steps


def train_transform(preprocessing: Preprocessing, *, crop_fraction: float = CROP_FRACTION) -> Transform:
    """The seed's training augmentations followed by the model's normalisation."""
    size = tuple(preprocessing.size)
    crop = (round(size[0] * crop_fraction), round(size[1] * crop_fraction))
    return v2.Compose(
        [
            v2.Resize(size, antialias=True),
            v2.RandomRotation(20),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(**JITTER),
            v2.RandomApply([v2.RandomAffine(degrees=0, translate=(0.05, 0.3))], p=0.5),
            v2.RandomPerspective(distortion_scale=0.2, p=0.5),
            v2.Resize(size, antialias=True),
            v2.CenterCrop(crop),
            v2.Resize(size, antialias=True),
            *_finish(preprocessing),
        ]
    )


def eval_transform(preprocessing: Preprocessing) -> Transform:
    """Resize to the model size and normalise (the seed's test/val transform)."""
    return v2.Compose([v2.Resize(tuple(preprocessing.size), antialias=True), *_finish(preprocessing)])
