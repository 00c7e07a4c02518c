"""Torch fallback loader: PIL decode in ``DataLoader`` workers on CPU; batched nvJPEG decode on a GPU.

Usage::

    from enhancer.data import make_loader
    loader = make_loader(samples, preprocessing, loader="torch", device="cpu", num_threads=2)  # 2 workers
    for batch in loader: ...

CPU (``torch-cpu``): each worker decodes with PIL and resizes with PIL's bilinear filter, i.e. exactly the seed's
``Grayscale -> Resize((224, 224))`` preprocessing; the main process normalises the uint8 batch.
GPU (``torch-gpu``, the path for GPU machines without DALI): workers only read the file bytes (and decode with PIL
the files nvJPEG cannot take: non-JPEG, CMYK); the main process decodes the JPEGs of a batch in one
``torchvision.io.decode_jpeg(device="cuda")`` call and resizes on the GPU (bilinear, antialiased). A file that fails
to decode is recorded in ``loader.rejected`` and its batch-mates go on. DICOM files (``.dcm``) are decoded on the CPU
with pydicom in both modes (``enhancer.data.dicom``); this is the only loader that reads them. PIL decodes under
``max_pixels`` and ``timeout_s`` (``enhancer.data.decode``): a file over either is rejected, the rest go on.

The workers ignore SIGINT and SIGTERM: Ctrl-C and SLURM signal the whole process group, and the main process
decides how to stop (it finishes its batch, then shuts the workers down), so a worker never dies under it.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from enhancer.data.batch import Batch, Loader, normalise, resize_grey
from enhancer.data.decode import classify_decode_error, load_grey, open_image, to_grey
from enhancer.data.dicom import is_dicom_path
from enhancer.data.scan import Sample
from enhancer.data.validate import Rejection
from enhancer.preprocessing import Preprocessing

log = logging.getLogger(__name__)

_NVJPEG_MODES = frozenset({"L", "RGB"})  # JPEG colour spaces nvJPEG decodes reliably to grey (not CMYK / YCCK)


class _CpuDataset(Dataset):
    """Item = dict with ``model``/``source`` uint8 HxW arrays, or ``error`` = (code, message)."""

    def __init__(self, samples: Sequence[Sample], size: tuple[int, int], source_size: int, limits: dict) -> None:
        self.samples, self.size, self.source_size, self.limits = list(samples), size, source_size, limits

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        try:
            grey = load_grey(s.path, **self.limits)
            height, width = self.size
            model = np.array(grey.resize((width, height), Image.BILINEAR))
            source = np.array(grey.resize((self.source_size, self.source_size), Image.BILINEAR))
            return {"i": i, "model": model, "source": source, "orig": (grey.height, grey.width)}
        except Exception as exc:
            return {"i": i, "error": classify_decode_error(exc, s.path)}


class _GpuDataset(Dataset):
    """Item = dict with ``jpeg`` (encoded bytes) or ``grey`` (CPU-decoded HxW uint8), or ``error``."""

    def __init__(self, samples: Sequence[Sample], limits: dict) -> None:
        self.samples, self.limits = list(samples), limits

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        try:
            if is_dicom_path(s.path):
                grey = load_grey(s.path, **self.limits)
                return {"i": i, "grey": torch.from_numpy(np.asarray(grey).copy()), "orig": (grey.height, grey.width)}
            with open_image(s.path, **self.limits) as im:
                if im.format == "JPEG" and im.mode in _NVJPEG_MODES:
                    with open(s.path, "rb") as fh:
                        data = np.frombuffer(fh.read(), dtype=np.uint8).copy()
                    return {"i": i, "jpeg": torch.from_numpy(data), "orig": (im.height, im.width)}
                grey = to_grey(im)
            return {"i": i, "grey": torch.from_numpy(np.asarray(grey).copy()), "orig": (grey.height, grey.width)}
        except Exception as exc:
            return {"i": i, "error": classify_decode_error(exc, s.path)}


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader worker start: leave SIGINT / SIGTERM to the main process (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class TorchLoader(Loader):
    """``torch-cpu`` (PIL in DataLoader workers) or ``torch-gpu`` (nvJPEG batch decode + GPU resize)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocessing: Preprocessing,
        *,
        batch_size: int = 64,
        device: str = "cpu",
        num_threads: int = 2,
        source_size: int = 512,
        dtype: torch.dtype = torch.float32,
        max_pixels: int | None = None,
        timeout_s: float | None = None,
    ) -> None:
        super().__init__(
            samples, preprocessing, batch_size=batch_size, device=device, source_size=source_size, dtype=dtype
        )
        self.name = "torch-gpu" if self.device.type == "cuda" else "torch-cpu"
        self.num_workers = max(0, num_threads)
        self.limits = {"max_pixels": max_pixels, "timeout_s": timeout_s}

    def _data_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            drop_last=False,
            num_workers=self.num_workers,
            collate_fn=_collate,
            prefetch_factor=2 if self.num_workers else None,
            worker_init_fn=_ignore_stop_signals if self.num_workers else None,
        )

    def _reject(self, sample: Sample, code: str, message: str) -> None:
        rejection = Rejection.of(sample, code, message)
        log.warning("%s: rejected %s at decode time: %s (%s)", self.name, rejection.path, code, message)
        self.rejected.append(rejection)

    def _finish(self, rows: list[tuple[Sample, torch.Tensor, torch.Tensor, tuple[int, int]]]) -> Batch:
        model = torch.stack([r[1] for r in rows])
        return Batch(
            image=normalise(model, self.preprocessing, self.dtype),
            source=torch.stack([r[2] for r in rows]),
            orig_size=torch.tensor([r[3] for r in rows], dtype=torch.int64).view(-1, 2),
            index=torch.tensor([r[0].index for r in rows], dtype=torch.int64),
            label=torch.tensor([r[0].label for r in rows], dtype=torch.int64),
        )

    def _cpu_rows(
        self, items: list[dict[str, Any]]
    ) -> list[tuple[Sample, torch.Tensor, torch.Tensor, tuple[int, int]]]:
        rows = []
        for item in items:
            s = self.samples[item["i"]]
            if "error" in item:
                self._reject(s, *item["error"])
                continue
            model = torch.from_numpy(item["model"]).unsqueeze(0)
            source = torch.from_numpy(item["source"]).unsqueeze(0)
            rows.append((s, model, source, tuple(item["orig"])))
        return rows

    def _decode_jpegs(self, jpegs: list[torch.Tensor], samples: list[Sample]) -> list[torch.Tensor | None]:
        """Decode on the GPU in one call; if the batch call fails, decode one by one to isolate the bad files."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if not jpegs:
            return []
        try:
            return list(decode_jpeg(jpegs, mode=ImageReadMode.GRAY, device=self.device))
        except Exception as exc:
            log.info("%s: batched GPU decode failed (%s); decoding one by one", self.name, exc)
        out: list[torch.Tensor | None] = []
        for data, s in zip(jpegs, samples, strict=True):
            try:
                out.append(decode_jpeg(data, mode=ImageReadMode.GRAY, device=self.device))
                continue
            except Exception as exc:
                gpu_error = exc
            try:
                grey = np.array(load_grey(s.path, **self.limits))
                out.append(torch.from_numpy(grey).to(self.device).unsqueeze(0))
            except Exception as exc:
                log.debug("%s: GPU decode of %s failed too: %s", self.name, s.path, gpu_error)
                self._reject(s, *classify_decode_error(exc, s.path))
                out.append(None)
        return out

    def _gpu_rows(
        self, items: list[dict[str, Any]]
    ) -> list[tuple[Sample, torch.Tensor, torch.Tensor, tuple[int, int]]]:
        jpeg_items = [it for it in items if "jpeg" in it]
        decoded = self._decode_jpegs([it["jpeg"] for it in jpeg_items], [self.samples[it["i"]] for it in jpeg_items])
        on_gpu = {it["i"]: g for it, g in zip(jpeg_items, decoded, strict=True)}
        size = tuple(self.preprocessing.size)
        rows = []
        for item in items:
            s = self.samples[item["i"]]
            if "error" in item:
                self._reject(s, *item["error"])
                continue
            if "jpeg" in item:
                grey = on_gpu[item["i"]]
                if grey is None:
                    continue
            else:
                grey = item["grey"].to(self.device, non_blocking=True).unsqueeze(0)
            model = resize_grey(grey, size)
            source = resize_grey(grey, (self.source_size, self.source_size))
            rows.append((s, model, source, (int(grey.shape[-2]), int(grey.shape[-1]))))
        return rows

    def __iter__(self) -> Iterator[Batch]:
        self.rejected = []
        self.n_loaded = 0
        gpu = self.device.type == "cuda"
        if gpu:
            dataset: Dataset = _GpuDataset(self.samples, self.limits)
        else:
            dataset = _CpuDataset(self.samples, tuple(self.preprocessing.size), self.source_size, self.limits)
        for items in self._data_loader(dataset):
            rows = self._gpu_rows(items) if gpu else self._cpu_rows(items)
            if rows:
                batch = self._finish(rows)
                self.n_loaded += len(batch)
                yield batch
