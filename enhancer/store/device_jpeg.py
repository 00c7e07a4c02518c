"""JPEG-encoding image planes where they were computed (nvJPEG on the GPU), before they cross to the host.

Usage (in the enhance loop, on the device tensors of one batch)::

    from enhancer.store.device_jpeg import encode_jpeg_fields
    outputs = encode_jpeg_fields(outputs, writer.codecs)          # jpeg fields on CUDA -> DeviceJpegs
    host = {k: v.to_host() if isinstance(v, DeviceJpegs) else v.cpu().numpy() for k, v in outputs.items()}
    writer.put(host)                                               # EncodedPlanes are stored as they are

On CUDA ``torchvision.io.encode_jpeg`` encodes a list of planes in one call and ~15 KB per plane cross to the host
instead of 49 KB. It needs three channels, so a grey plane is encoded as R = G = B (4:4:4): the decoders read its
luma back, which equals the grey value. On the CPU the writer's thread pool encodes faster (one plane per thread
in parallel), so CPU tensors are left as they are. Imports torch: the rest of the store does not, and only the
job imports this module.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from enhancer.store.codecs import Codec, EncodedPlanes


@dataclass(frozen=True)
class DeviceJpegs:
    """The JPEG files of one batch as one flat uint8 tensor on the device, with their lengths (host ints)."""

    flat: torch.Tensor
    lengths: tuple[int, ...]
    codec: str
    shape: tuple[int, ...]

    def to_host(self, out: np.ndarray | None = None) -> EncodedPlanes:
        """One device-to-host copy (into ``out``, e.g. a pinned buffer's numpy view, when given) -> EncodedPlanes."""
        if out is None:
            flat = self.flat.cpu().numpy()
        else:
            flat = out[: len(self.flat)]
            torch.from_numpy(flat).copy_(self.flat)
        return EncodedPlanes.from_flat(flat, self.lengths, self.codec, self.shape)


def encode_jpeg_planes(planes: torch.Tensor, quality: int) -> DeviceJpegs:
    """(N, 1, H, W) uint8 planes -> their JPEG files at ``quality``, encoded on the planes' device."""
    if planes.dtype != torch.uint8 or planes.dim() != 4 or planes.shape[1] != 1:
        raise ValueError(f"need (N, 1, H, W) uint8 planes, got {tuple(planes.shape)} {planes.dtype}")
    from torchvision.io import encode_jpeg

    on_cuda = planes.device.type == "cuda"
    # nvJPEG encodes 3-channel images only; libjpeg on the CPU takes the grey plane as it is.
    images = [p.expand(3, -1, -1) if on_cuda else p for p in planes]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 marks its image codecs deprecated in favour of torchcodec
        encoded = encode_jpeg(images, quality=quality) if len(images) else []
    lengths = tuple(int(e.numel()) for e in encoded)  # sizes are host metadata: no device sync
    flat = torch.cat(encoded) if encoded else torch.empty(0, dtype=torch.uint8, device=planes.device)
    return DeviceJpegs(flat, lengths, f"jpeg{quality}", tuple(planes.shape[1:]))


def encode_jpeg_fields(
    outputs: Mapping[str, torch.Tensor], codecs: Mapping[str, Codec]
) -> dict[str, torch.Tensor | DeviceJpegs]:
    """``outputs`` with every JPEG-coded field that lives on a CUDA device replaced by its ``DeviceJpegs``."""
    out: dict[str, torch.Tensor | DeviceJpegs] = dict(outputs)
    for name, codec in codecs.items():
        value = outputs.get(name)
        if codec.kind == "jpeg" and isinstance(value, torch.Tensor) and value.device.type == "cuda":
            out[name] = encode_jpeg_planes(value, codec.level)
    return out
