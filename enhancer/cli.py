"""The ``enhancer`` command line: thin click commands that parse options and call one library function each.

Usage: ``enhancer --help``; ``enhancer inspect ResNet-101_GradCAM_Cropped_v4.pth``; ``enhancer models``.
Heavy imports (torch, DALI) happen inside the commands so that ``enhancer --help`` is instant.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from enhancer import __version__

F = TypeVar("F", bound=Callable[..., Any])


class EnhancerError(click.ClickException):
    """A user-facing error: one clear message, exit code 2 (bad input), no traceback."""

    exit_code = 2


def reports_errors(func: F) -> F:
    """Turn the library's input errors (which carry the file and the fix in their message) into exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from enhancer.checkpoints import CheckpointError
        from enhancer.models import ModelError

        try:
            return func(*args, **kwargs)
        except (CheckpointError, ModelError) as exc:
            raise EnhancerError(str(exc)) from None

    return wrapper  # type: ignore[return-value]


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


@main.command()
def models() -> None:
    """List the model zoo: architectures, heads, input and Grad-CAM target layer."""
    from enhancer.models import ZOO

    for name, info in ZOO.items():
        heads = f" heads: {', '.join(info.heads)} (default {info.default_head})" if info.heads else ""
        p = info.preprocessing
        click.echo(f"{name:<13} {info.description}")
        click.echo(f"{'':<13} input {p.in_chans}ch mean {list(p.mean)} std {list(p.std)};{heads}")


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=str))
@click.option("--arch", default=None, help="Architecture, when detection from the weights is not wanted.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")
@reports_errors
def inspect(checkpoint: str, arch: str | None, as_json: bool) -> None:
    """Describe a checkpoint: architecture, parameters (total and trainable), head, input spec, metadata.

    Accepts the original research's files, bare state_dicts and enhancer's own format. Files are read with
    torch.load(weights_only=True): a checkpoint that would run pickled code is refused.
    """
    from enhancer.checkpoints import load_checkpoint
    from enhancer.models import ZOO, count_parameters

    ck = load_checkpoint(checkpoint, arch=arch)
    total, trainable = count_parameters(ck.model)
    head_params = sum(p.numel() for m in ck.model.param_groups()["head"] for p in m.parameters())
    report = {
        "path": ck.path,
        "sha256": ck.sha256,
        "format": ck.source_format,
        "architecture": ck.config.arch,
        "head": ck.config.head,
        "num_classes": ck.config.num_classes,
        "class_names": list(ck.class_names),
        "parameters": {"total": total, "trainable_default": trainable, "head": head_params},
        "default_trainable_groups": list(ZOO[ck.config.arch].default_trainable),
        "target_layer": ck.model.target_layer,
        "input": ck.preprocessing.to_dict(),
        "meta": ck.meta,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(f"{ck.path}  ({ck.source_format} format, sha256 {ck.sha256[:16]}...)")
    click.echo(f"  architecture   {ck.config.arch}" + (f"  head {ck.config.head}" if ck.config.head else ""))
    click.echo(f"  classes        {', '.join(ck.class_names)}")
    click.echo(f"  parameters     {total:,} total, {trainable:,} trainable by default "
               f"({'+'.join(report['default_trainable_groups'])}), head {head_params:,}")  # fmt: skip
    p = ck.preprocessing
    click.echo(f"  input          {p.in_chans}ch {p.size[0]}x{p.size[1]}, mean {list(p.mean)}, std {list(p.std)}")
    click.echo(f"  Grad-CAM layer {ck.model.target_layer}")
    for key, value in ck.meta.items():
        click.echo(f"  {key:<14} {value}")


if __name__ == "__main__":
    main()
