"""The ``enhancer`` click group and what every command shares: errors with exit code 2, ``--set`` overrides, SLURM
ids for provenance, clean stops on SIGTERM/SIGUSR1/SIGINT. The commands live in the ``*_commands`` modules beside
this one.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

import click

from enhancer import __version__

F = TypeVar("F", bound=Callable[..., Any])


class EnhancerError(click.ClickException):
    """A user-facing error: one clear message, exit code 2 (bad input), no traceback."""

    exit_code = 2


# The library's input errors (their messages carry the file and the fix), as (module, class).
USER_ERRORS = (
    ("enhancer.data.errors", "DataError"),
    ("enhancer.data.samples", "FetchError"),
    ("enhancer.models.checkpoints", "CheckpointError"),
    ("enhancer.models.zoo", "ModelError"),
    ("enhancer.specs", "SpecError"),
    ("enhancer.store.schema", "StoreError"),
    ("enhancer.train.distributed", "DistributedError"),
)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one of ``USER_ERRORS``. Looked up among the modules already loaded (an exception of a
    module never imported cannot occur), so that reporting an error never imports torch."""
    for module, name in USER_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            return True
    return False


def reports_errors(func: F) -> F:
    """Turn the library's input errors (which carry the file and the fix in their message) into exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except Exception as exc:
            if is_user_error(exc):
                raise EnhancerError(str(exc)) from None
            if isinstance(exc, OSError):  # a full disk, a permission: name the file, no traceback
                raise EnhancerError(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None
            raise

    return wrapper  # type: ignore[return-value]


@contextmanager
def heavy_imports() -> Iterator[None]:
    """Import torch and the job's modules with the cyclic garbage collector off, then freeze what they made. Those
    hundreds of thousands of objects live until the process ends; unfrozen, the collections during the import, the
    job and the final one at exit traverse them all again (``import torch`` and exit: 2.6 s -> 1.9 s on a 2-core
    x86 VM)."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "-V", "--version", prog_name="enhancer")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Grad-CAM enhancement of chest X-ray datasets, in large GPU batches, into HDF5 shards.

    Point it at an ImageFolder dataset and a trained classifier checkpoint (including the original research's
    ResNet-101 / ResNet-152 / VGG-16 / TinyVGG files); it writes heatmaps, Grad-CAM-guided crops and enhanced
    images for every image, and the same training code fine-tunes the model on the result.
    """
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def overrides(options: dict[str, Any], settings: tuple[str, ...]) -> dict[str, Any]:
    """Options given on the command line (None = not given) plus ``--set key=value`` pairs, as spec overrides."""
    from enhancer.specs import parse_value

    found = {k: v for k, v in options.items() if v is not None}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. cam.score=logit)", param_hint="--set")
        found[key.strip()] = parse_value(value.strip())
    return found


def slurm_ids() -> dict[str, Any]:
    """SLURM's job ids, for provenance (read here at the edge; library code never reads SLURM_* itself)."""
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_CLUSTER_NAME")
    found = {k.lower(): os.environ[k] for k in keys if k in os.environ}
    return {"slurm": found} if found else {}


def stoppable(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``func`` with SIGTERM/SIGUSR1 (SLURM's cancel, requeue and time-limit warning; a plain ``kill``) and SIGINT
    (Ctrl-C) turned into a clean stop: the enhance loop finishes the batch in flight, then the shard being written is
    discarded, never completed; exit code 128 + the signal. A second signal stops at once."""
    import signal

    from enhancer.run.jobs import Preempted, stop_on_signals
    from enhancer.run.launch import WorkerError

    try:
        with stop_on_signals((signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)):
            return func(*args, **kwargs)
    except Preempted as exc:
        click.echo(
            f"{exc}: the shard being written was discarded; run the command again (or let SLURM requeue "
            "the task) to write it; complete shards are skipped",
            err=True,
        )
        raise SystemExit(128 + exc.signum) from None
    except WorkerError as exc:
        raise click.ClickException(str(exc)) from None
