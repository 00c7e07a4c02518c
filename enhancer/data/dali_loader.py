"""DALI loader: ``readers.file`` -> ``decoders.image`` (GRAY) -> resize -> normalise, on the GPU or CPU threads.

Usage::

    from enhancer.data import make_loader
    loader = make_loader(samples, preprocessing, loader="dali", device="cpu", num_threads=2)
    for batch in loader: ...
    loader.rejected        # files that failed to decode, each isolated by bisecting its batch

One pipeline per pass over the (already validated, already sharded) sample list. ``labels`` of the file reader
carry ``Sample.index``, so every output row is tied to its exact path. The reader pads the last batch
(``pad_last_batch``) and the loader returns it PARTIAL, so every file arrives exactly once.

DALI facts this relies on (DALI 2.4): the decoder must be asked for GRAY explicitly (``ANY_DATA`` crashes on
greyscale JPEGs); 16-bit PNG / TIFF are scaled to 8 bit as ``round(v / 257)``; PNG decoding stays on the CPU even
with ``device="mixed"``; a corrupt file fails its whole batch (no skip option) but the error is reported for that
iteration and the pipeline goes on, so the loader re-decodes just that batch in halves until the bad file is alone.
Some corrupt JPEGs crash the process instead (SIGSEGV; e.g. a zeroed Huffman table in a batch of 32 or more, found
by tests/fuzz): the enhance job lets only files that PIL has decoded reach DALI (``validate = "auto"``).
Paths that are not valid UTF-8 cannot cross into DALI: they are read through symlinks with safe names.

On a GPU, DALI decodes with nvJPEG and resizes on the device (parity with the seed's PIL preprocessing: ~0.1/255
mean, the outermost row and column up to ~24/255, as DALI treats the image edge differently). On CPU threads DALI
only reads and decodes; the two resizes (model input and crop source) run in torch's uint8 antialiased kernel,
because DALI's CPU resize costs ~2.5x Pillow's per image while torch's matches Pillow in speed and output (within
1/255, borders included; see ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from enhancer.data.batch import Batch, Loader, normalise, resize_grey
from enhancer.data.decode import classify_decode_error
from enhancer.data.scan import Sample
from enhancer.data.validate import Rejection
from enhancer.preprocessing import Preprocessing

log = logging.getLogger(__name__)

_DALI_DTYPES = {torch.float32: "FLOAT", torch.float16: "FLOAT16"}


def dali_available() -> bool:
    """Whether NVIDIA DALI can be imported here."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _build_pipeline(
    files: list[str],
    labels: list[int],
    *,
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    preprocessing: Preprocessing,
    source_size: int,
    dtype: torch.dtype,
) -> Any:
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None
    height, width = preprocessing.size
    mean = [255.0 * m for m in preprocessing.mean]
    std = [255.0 * s for s in preprocessing.std]

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=2)
    def pipeline() -> tuple[Any, ...]:
        encoded, index = fn.readers.file(
            files=files, labels=labels, random_shuffle=False, pad_last_batch=True, name="reader"
        )
        shape = fn.peek_image_shape(encoded, adjust_orientation=False)  # (H, W, C) of the original file
        grey = fn.decoders.image(
            encoded, device="mixed" if gpu else "cpu", output_type=types.GRAY, adjust_orientation=False
        )
        if not gpu:
            # On CPU threads DALI decodes only: its CPU resize costs ~2.5x Pillow's per image, while torch's uint8
            # antialiased resize matches Pillow in speed and output; the loader resizes with it (resize_grey).
            return grey, shape, index
        # Linear + antialias matches PIL's bilinear Resize (which always antialiases when downscaling); resizing
        # to uint8 rounds like PIL does, so parity holds in [0, 255] units before normalisation.
        model = fn.resize(
            grey, resize_x=width, resize_y=height, interp_type=types.INTERP_LINEAR, antialias=True, dtype=types.UINT8
        )
        if preprocessing.in_chans == 3:
            model = fn.cat(model, model, model, axis=2)
        image = fn.crop_mirror_normalize(
            model, dtype=getattr(types, _DALI_DTYPES[dtype]), output_layout="CHW", mean=mean, std=std
        )
        source = fn.resize(
            grey,
            resize_x=source_size,
            resize_y=source_size,
            interp_type=types.INTERP_LINEAR,
            antialias=True,
            dtype=types.UINT8,
        )
        # (S, S, 1) HWC has the same memory layout as (1, S, S) CHW: the loader only reshapes, no transpose op
        return image, source, shape, index

    pipe = pipeline()
    pipe.build()
    return pipe


def _to_torch(tensor_list: Any, device: torch.device) -> torch.Tensor:
    """Copy a uniform DALI TensorList (CPU or GPU) into a new torch tensor, then place it on ``device``."""
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
    from nvidia.dali.tensors import TensorGPU

    dense = tensor_list.as_tensor()
    on_gpu = isinstance(dense, TensorGPU)
    where = device if on_gpu else torch.device("cpu")
    out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=where)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(where) if on_gpu else None)
    return out.to(device, non_blocking=True)


class DaliLoader(Loader):
    """Batches from a DALI pipeline; ``device="cuda"`` decodes with nvJPEG (``mixed``) and resizes on the GPU."""

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
    ) -> None:
        if dtype not in _DALI_DTYPES:
            raise ValueError(f"the DALI loader outputs {list(_DALI_DTYPES)}; got {dtype}")
        super().__init__(
            samples, preprocessing, batch_size=batch_size, device=device, source_size=source_size, dtype=dtype
        )
        self.device_id: int | None = self.device.index if self.device.type == "cuda" else None
        self.name = "dali-gpu" if self.device_id is not None else "dali-cpu"
        self.num_threads = max(1, num_threads)  # DALI needs at least one worker thread
        self._labels = {s.index: s.label for s in self.samples}
        self._alias_dir: tempfile.TemporaryDirectory[str] | None = None

    # -- paths -------------------------------------------------------------------------------------------------
    def _dali_paths(self, samples: Sequence[Sample]) -> list[str]:
        """Paths DALI can open: non-UTF-8 names (surrogateescape str) become symlinks with safe names."""
        out = []
        for s in samples:
            try:
                s.path.encode("utf-8")
                out.append(s.path)
            except UnicodeEncodeError:
                if self._alias_dir is None:
                    self._alias_dir = tempfile.TemporaryDirectory(prefix="enhancer-dali-")
                alias = os.path.join(
                    self._alias_dir.name, f"{s.index}{os.path.splitext(s.path)[1].encode('ascii', 'replace').decode()}"
                )
                if not os.path.lexists(alias):
                    os.symlink(os.fsencode(os.path.abspath(s.path)), os.fsencode(alias))
                out.append(alias)
        return out

    def _pipeline(self, samples: Sequence[Sample], batch_size: int, *, cpu: bool = False) -> Any:
        return _build_pipeline(
            self._dali_paths(samples),
            [s.index for s in samples],
            batch_size=batch_size,
            num_threads=self.num_threads,
            device_id=None if cpu else self.device_id,
            preprocessing=self.preprocessing,
            source_size=self.source_size,
            dtype=self.dtype,
        )

    # -- batches -----------------------------------------------------------------------------------------------
    def _batch(self, outputs: Any, expected: Sequence[Sample]) -> Batch:
        n = len(expected)
        if len(outputs) == 3:  # CPU pipeline: decoded images of any size, resized here
            grey_tl, shape_tl, index_tl = outputs
            image, source = self._resize_on_host(grey_tl, n)
        else:
            image_tl, source_tl, shape_tl, index_tl = outputs
            image = _to_torch(image_tl, self.device)[:n]
            source = _to_torch(source_tl, self.device)[:n].view(n, 1, self.source_size, self.source_size)
        index = _to_torch(index_tl, torch.device("cpu")).view(-1)[:n].to(torch.int64)
        got, want = index.numpy(), np.array([s.index for s in expected], dtype=np.int64)  # host bookkeeping: numpy
        if not np.array_equal(got, want):
            raise RuntimeError(f"DALI returned samples {got[:8].tolist()}... but {want[:8].tolist()}... were expected")
        shape = _to_torch(shape_tl, torch.device("cpu"))[:n, :2].to(torch.int64)
        batch = Batch(
            image=image,
            source=source,
            orig_size=shape.contiguous(),
            index=index,
            label=torch.tensor([self._labels[i] for i in got.tolist()], dtype=torch.int64),
        )
        if self.device.type == "cuda":
            # DALI may reuse its output buffers on the next run(): finish the copies out of them first
            torch.cuda.current_stream(self.device).synchronize()
        return batch

    def _resize_on_host(self, grey_tl: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Model input (normalised) and crop source (uint8) from the CPU pipeline's decoded (H, W, 1) images, resized
        on ``num_threads`` threads (torch releases the GIL in the resize) while DALI decodes the next batch."""
        size, square = tuple(self.preprocessing.size), (self.source_size, self.source_size)

        def both(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            grey = torch.from_numpy(np.asarray(grey_tl[i])).permute(2, 0, 1)  # a view: done before the next run()
            return resize_grey(grey, size), resize_grey(grey, square)

        with ThreadPoolExecutor(self.num_threads) as pool:
            models, sources = zip(*pool.map(both, range(n)), strict=True)
        model, source = torch.stack(models), torch.stack(sources)
        return normalise(model, self.preprocessing, self.dtype).to(self.device), source.to(self.device)

    def _try_decode(self, group: Sequence[Sample], *, cpu: bool = False) -> Batch | Exception:
        try:
            return self._batch(self._pipeline(group, len(group), cpu=cpu).run(), group)
        except Exception as exc:
            return exc

    def _decode_group(self, group: Sequence[Sample]) -> Iterator[Batch]:
        """Decode ``group`` in one small pipeline; on failure split it in halves until each bad file is alone."""
        result = self._try_decode(group)
        if isinstance(result, Batch):
            yield result
            return
        if len(group) > 1:
            half = len(group) // 2
            yield from self._decode_group(group[:half])
            yield from self._decode_group(group[half:])
            return
        if self.device_id is not None:  # nvJPEG may refuse what libjpeg-turbo reads: try the CPU operators
            retry = self._try_decode(group, cpu=True)
            if isinstance(retry, Batch):
                yield retry
                return
            log.debug("%s: CPU retry of %s failed too: %s", self.name, group[0].path, retry)
        code, message = classify_decode_error(result, group[0].path)
        rejection = Rejection.of(group[0], code, message)
        log.warning("%s: rejected %s at decode time: %s (%s)", self.name, rejection.path, code, message)
        self.rejected.append(rejection)

    def __iter__(self) -> Iterator[Batch]:
        self.rejected = []
        self.n_loaded = 0
        if not self.samples:
            return
        pipe = self._pipeline(self.samples, self.batch_size)
        try:
            n_batches = math.ceil(len(self.samples) / self.batch_size)
            for b in range(n_batches):
                expected = self.samples[b * self.batch_size : (b + 1) * self.batch_size]
                try:
                    batch = self._batch(pipe.run(), expected)
                except Exception as exc:
                    log.info("%s: batch %d failed (%s); bisecting it", self.name, b, str(exc).splitlines()[0][:200])
                    for part in self._decode_group(expected):
                        self.n_loaded += len(part)
                        yield part
                    continue
                self.n_loaded += len(batch)
                yield batch
        finally:
            del pipe
            # Pipelines caught in reference cycles (e.g. through the tracebacks of isolated bad files) must be freed
            # here, while their threads exist: freed later in a forked child (a DataLoader worker) they hang.
            gc.collect()
            if self._alias_dir is not None:
                self._alias_dir.cleanup()
                self._alias_dir = None
