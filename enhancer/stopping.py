"""Clean stops: a stop signal becomes ``Preempted`` where the work can stop without damage.

Usage::

    from enhancer.stopping import Preempted, batch_boundaries
    with batch_boundaries() as stop_point:      # a stop signal is held until the batch in flight is done
        for batch in loader:
            ...                                 # compute, hand the results to the writer
            stop_point()                        # raises Preempted(signum) if a stop was asked for meanwhile

The command line installs the signal handler (``enhancer.run.jobs.stop_on_signals``), which calls ``request_stop``:
inside a ``batch_boundaries`` block the first request is held and raised at the next ``stop_point()``, so the batch
being loaded, computed and queued finishes first; outside such a block, and at a second signal, it is raised at
once. Either way ``Preempted`` then unwinds through the shard writer, which discards its ``.tmp``. Stdlib only, so
every package may import it.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Preempted(BaseException):
    """The process was asked to stop (SIGTERM from a cancel/requeue or a plain ``kill``, SIGINT from Ctrl-C,
    SIGUSR1 before a SLURM time limit).

    A ``BaseException`` like ``KeyboardInterrupt``: the loaders isolate bad files with ``except Exception``, and a
    stop request caught there would be retried or, worse, recorded as rejected images."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class _State:
    depth = 0  # open batch_boundaries blocks (of the main thread, where Python runs signal handlers)
    pending: int | None = None  # the signal held until the next stop point


def request_stop(signum: int) -> bool:
    """Called by a signal handler: True when the stop is held for the next stop point, False when the caller must
    raise ``Preempted`` now (no ``batch_boundaries`` block, or a stop is already held: a second signal insists)."""
    if _State.depth == 0 or _State.pending is not None:
        return False
    _State.pending = signum
    log.warning(
        "%s received: stopping after the current batch (send it again to stop at once)", signal.Signals(signum).name
    )
    return True


def _stop_point() -> None:
    signum, _State.pending = _State.pending, None
    if signum is not None:
        raise Preempted(signum)


@contextmanager
def batch_boundaries() -> Iterator[Callable[[], None]]:
    """Hold stop signals while the block runs; the function it yields raises the held one (see the module
    docstring). A stop still held when the block ends is raised there; one held when the block ends by an
    exception is dropped (that exception already stops the work)."""
    _State.depth += 1
    finished = False
    try:
        yield _stop_point
        finished = True
    finally:
        _State.depth -= 1
        if _State.depth == 0 and not finished:
            _State.pending = None
    if _State.depth == 0:
        _stop_point()
