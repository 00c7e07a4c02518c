"""Load ahead: a loader's next batches are decoded (and copied in) in a background thread while the caller computes.

Usage::

    from enhancer.data.prefetch import Prefetcher
    with Prefetcher(loader, depth=2, prepare=lambda b: {"paths": ...}) as batches:
        for batch, extra in batches:   # batch k+1 decodes while the caller computes batch k
            ...

On CUDA the thread works on a stream of its own: the loader's device work (nvJPEG decode, resize, DALI's copies) and
the copies in of CPU-decoded images (``non_blocking`` from pinned memory) run beside the caller's compute, and one
event per batch makes the caller's stream wait for exactly that batch (no host synchronisation). The CPU bookkeeping
tensors (``label``, ``orig_size``, ``index``) are pinned there, so the caller's ``.to(device, non_blocking=True)``
does not block either. On the CPU the same thread decodes ahead; streams, events and pinning are skipped.
``prepare(batch)`` runs in the thread too, for per-batch host work the caller needs (file names, annotation look-ups);
tensors it returns are best pinned with ``pinned``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Self

import torch

from enhancer.data.batch import Batch, Loader

_DONE = object()
_PUT_POLL_S = 0.1


def pinned(t: torch.Tensor) -> torch.Tensor:
    """``t`` in pinned host memory when CUDA is present (so a later ``.to(cuda, non_blocking=True)`` is async), else
    ``t`` itself."""
    if t.device.type != "cpu" or not torch.cuda.is_available() or t.is_pinned():
        return t
    return t.pin_memory()


class Prefetcher:
    """Iterate ``loader`` ``depth`` batches ahead in a background thread; yields ``(batch, prepare(batch))``.

    Use it as a context manager (or call ``close``): leaving early stops the thread after the batch it is loading.
    An exception in the loader or in ``prepare`` is re-raised by the iteration, in order."""

    def __init__(
        self, loader: Loader, *, depth: int = 2, prepare: Callable[[Batch], Any] | None = None, name: str = "prefetch"
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.loader = loader
        self.prepare = prepare
        self.device = loader.device
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[Batch, Any]]:
        if self._started:
            raise RuntimeError("a Prefetcher iterates its loader once; make a new one for another pass")
        self._started = True
        self._thread.start()
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            batch, extra, ready = item
            if ready is not None:
                self._adopt(batch, extra, ready)
            yield batch, extra

    def close(self) -> None:
        """Stop the thread (it finishes the batch it is decoding) and wait for it."""
        self._stop.set()
        if not self._started:
            return
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=_PUT_POLL_S)  # unblock a thread waiting to put
        self._thread.join()

    def _run(self) -> None:
        try:
            with self._device_context() as stream:
                for batch in self.loader:
                    if self._stop.is_set():
                        return
                    batch = self._pin(batch) if stream is not None else batch
                    extra = self.prepare(batch) if self.prepare is not None else None
                    ready = torch.cuda.Event() if stream is not None else None
                    if ready is not None:
                        ready.record(stream)
                    if not self._put((batch, extra, ready)):
                        return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
            return
        self._put(_DONE)

    @contextlib.contextmanager
    def _device_context(self) -> Iterator[torch.cuda.Stream | None]:
        if self.device.type != "cuda":
            yield None
            return
        with torch.cuda.device(self.device):
            stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(stream):
                yield stream

    def _pin(self, batch: Batch) -> Batch:
        """CPU tensors pinned; CPU-decoded images copied to the device on this thread's stream."""
        moved = {}
        for f in dataclasses.fields(batch):
            t = getattr(batch, f.name)
            if f.name in ("image", "source") and t.device != self.device:
                t = pinned(t).to(self.device, non_blocking=True)
            moved[f.name] = pinned(t) if t.device.type == "cpu" else t
        return Batch(**moved)

    def _adopt(self, batch: Batch, extra: Any, ready: torch.cuda.Event) -> None:
        """The caller's stream waits for the batch's event, and owns its device memory from now on."""
        current = torch.cuda.current_stream(self.device)
        current.wait_event(ready)
        for t in (batch.image, batch.source, *_tensors(extra)):
            if t.device.type == "cuda":
                t.record_stream(current)  # not reused by the loader's stream while the caller still reads it

    def _put(self, item: Any) -> bool:
        """Queue ``item`` unless the consumer has gone; False when it has."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False


def _tensors(extra: Any) -> list[torch.Tensor]:
    """The tensors directly inside what ``prepare`` returned (a tensor, a mapping or a sequence of them)."""
    if isinstance(extra, torch.Tensor):
        return [extra]
    values = extra.values() if isinstance(extra, dict) else extra if isinstance(extra, list | tuple) else ()
    return [v for v in values if isinstance(v, torch.Tensor)]
