"""The options that choose a model, its target layer and its preprocessing, shared by the commands that load one
(enhance, inspect, evaluate): ``--model``, ``--num-classes``, ``--target-layer``, ``--input-size``, ``--mean``,
``--std``, ``--channels``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

MODEL_HELP = (
    "Model: a zoo name (see `enhancer models`), tv:NAME (a torchvision classifier, e.g. tv:densenet121), timm:NAME "
    "(timm installed) or package.module:callable (your builder, called with num_classes=); none: detected from the "
    "weights (zoo)."
)
NUM_CLASSES_HELP = "Classes of a tv:/timm:/callable model; none: what the weights say."
TARGET_LAYER_HELP = (
    "CAM layer, a dotted module path (e.g. features.norm5); `enhancer inspect CHECKPOINT --layers` lists them; "
    "none: the model family's last convolutional stage."
)


def _floats(_ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    """``0.485,0.456,0.406`` -> a list of floats."""
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not comma-separated numbers, e.g. 0.485,0.456,0.406") from None


def _plain_option(name: str, help: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option("--" + name.replace("_", "-"), name, help=f"{help}  [default: none]", **kwargs)


def model_options(spec_cls: type | None = None, *, target_layer: bool = True) -> Callable[[F], F]:
    """Add the model-choosing options to a command (values None when not given). With ``spec_cls`` the options of
    its fields (model, num_classes, target_layer) are made from the spec (``cli.options.spec_option``)."""
    from enhancer.cli.options import spec_option

    def field(name: str, help: str, **kwargs: Any) -> Callable[[F], F]:
        return spec_option(spec_cls, name, help) if spec_cls is not None else _plain_option(name, help, **kwargs)

    options = [
        field("model", MODEL_HELP),
        field("num_classes", NUM_CLASSES_HELP, type=click.IntRange(min=1)),
        click.option(
            "--input-size",
            type=click.IntRange(min=8),
            help="Square input side.  [default: the model's library: 224 for torchvision, timm's pretrained_cfg]",
        ),
        click.option(
            "--mean",
            callback=_floats,
            help="Normalisation mean, per channel or one value.  [default: the library's (ImageNet for torchvision)]",
        ),
        click.option(
            "--std", callback=_floats, help="Normalisation std, per channel or one value.  [default: the library's]"
        ),
        click.option(
            "--channels",
            type=click.Choice(["1", "3"]),
            help="Input channels (greyscale X-rays replicated to 3).  [default: the model's library: 3 for "
            "torchvision, 1 for the seed's models]",
        ),
    ]
    if target_layer:
        options.append(field("target_layer", TARGET_LAYER_HELP))

    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def model_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """Pop the model options from a command's ``options`` and return them as spec keys (``input.size``, ...)."""
    found = {
        "model": options.pop("model", None),
        "num_classes": options.pop("num_classes", None),
        "target_layer": options.pop("target_layer", None),
        "input.size": options.pop("input_size", None),
        "input.mean": options.pop("mean", None),
        "input.std": options.pop("std", None),
        "input.channels": options.pop("channels", None),
    }
    if found["input.channels"] is not None:
        found["input.channels"] = int(found["input.channels"])
    return {k: v for k, v in found.items() if v is not None}
