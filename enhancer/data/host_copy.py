"""Copy a batch's results out to host memory without waiting for the device: pinned buffers, one event per batch.

Usage::

    started = device_mark(device)          # before the batch's work is queued (None off CUDA)
    ...                                    # queue the batch's work
    pending = copy_to_host(outputs, started=started)   # starts the copies; returns at once
    ...                                    # queue the next batch's work
    arrays = pending.wait()                # numpy arrays, valid once the batch's event has passed (then ``finish``)
    pending.device_seconds                 # device time from ``started`` to the end of the copies (0.0 off CUDA)

On CUDA every tensor is copied with ``non_blocking=True`` into a pinned host buffer (PyTorch's caching host allocator
reuses them once the arrays are dropped) and one event is recorded after the copies; ``wait`` blocks on that event
only. Called one batch late (after the next batch's work is queued) it never stalls the device. On the CPU the
tensors are the results already: ``wait`` returns their numpy views and there is no event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch


def device_mark(device: str | torch.device) -> torch.cuda.Event | None:
    """A timing event recorded now on ``device``'s current stream (None off CUDA): where a batch's device work
    starts, for ``PendingHostCopy.device_seconds``."""
    if torch.device(device).type != "cuda":
        return None
    mark = torch.cuda.Event(enable_timing=True)
    mark.record(torch.cuda.current_stream(device))
    return mark


class PendingHostCopy:
    """Host arrays whose copies may still be running; ``wait`` returns them once they are done."""

    def __init__(
        self,
        arrays: dict[str, Any],
        event: torch.cuda.Event | None,
        started: torch.cuda.Event | None = None,
        finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self._arrays = arrays
        self._event = event
        self._started = started
        self._finish = finish
        self.device_seconds = 0.0  # set by ``wait``: the batch's device time, its compute and its copies out

    def ready(self) -> bool:
        """Whether ``wait`` would return without blocking."""
        return self._event is None or self._event.query()

    def wait(self) -> dict[str, Any]:
        if self._event is not None:
            self._event.synchronize()
            if self._started is not None:
                self.device_seconds = self._started.elapsed_time(self._event) / 1000
            self._event = self._started = None
        if self._finish is not None:
            self._arrays, self._finish = self._finish(self._arrays), None
        return self._arrays


def copy_to_host(
    tensors: Mapping[str, torch.Tensor],
    extra: Mapping[str, Any] | None = None,
    *,
    started: torch.cuda.Event | None = None,
    finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> PendingHostCopy:
    """Start copying ``tensors`` (any devices) to numpy arrays; ``extra`` values (e.g. file names) pass through.
    ``started``: a ``device_mark`` from before the batch's work, to time it on the device. ``finish(arrays)``, when
    given, makes what ``wait`` returns from the finished arrays (e.g. splitting one flat byte copy into samples)."""
    arrays: dict[str, Any] = {}
    streams: dict[torch.device, torch.cuda.Stream] = {}
    for name, t in tensors.items():
        t = t.detach()
        if t.device.type == "cpu":
            arrays[name] = t.numpy() if t.is_contiguous() else np.ascontiguousarray(t.numpy())
            continue
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        arrays[name] = host.numpy()
        streams.setdefault(t.device, torch.cuda.current_stream(t.device))
    event = None
    if streams:
        if len(streams) > 1:
            raise ValueError(f"the tensors of one batch must share one CUDA device, got {sorted(map(str, streams))}")
        (stream,) = streams.values()
        event = torch.cuda.Event(enable_timing=started is not None)
        event.record(stream)
    return PendingHostCopy({**arrays, **(extra or {})}, event, started, finish)
