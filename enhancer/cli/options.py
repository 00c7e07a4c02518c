"""Click options made from the fields of the job specs, so that ``--help`` shows the defaults the specs really have.

Usage::

    @main.command()
    @spec_option(EnhanceSpec, "batch_size", "Images per batch.")   # --batch-size INTEGER ... [default: 64]
    def enhance(**options): ...

The option's name, type and choices come from the field; its help text ends with the dataclass default. The click
default stays None: an option not given is left out of the overrides (``cli.app.overrides``), so ``ENHANCER_*``
variables and the job file still apply. A field's default of None or ``()`` shows as ``none``; the help text says
what that means (e.g. "none: the checkpoint's").
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import click

from enhancer.specs import REQUIRED

F = TypeVar("F", bound=Callable[..., Any])
_CLICK_TYPES: dict[Any, click.ParamType] = {int: click.INT, float: click.FLOAT, str: click.STRING}


def shown_default(value: Any) -> str | None:
    """A spec default as ``--help`` shows it: ``64``, ``0.0001``, ``auto``, ``on``/``off`` for switches, a tuple
    comma-separated as the option takes it, ``none`` for None or an empty tuple; None for a required field."""
    if value == REQUIRED:
        return None
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _field_type(spec_cls: type, name: str) -> Any:
    """The field's declared type without ``| None`` (an unset option is None anyway)."""
    hint = typing.get_type_hints(spec_cls)[name]
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return hint


def spec_option(spec_cls: type, name: str, help: str, *, flag: str | None = None) -> Callable[[F], F]:
    """A click option for field ``name`` of ``spec_cls``: ``--name-with-dashes`` (a ``--x/--no-x`` switch for a
    boolean), ``click.Choice`` where the spec lists choices in ``CHOICES``, the field's type otherwise (tuples are
    given comma-separated), and ``help`` followed by ``[default: ...]`` from the dataclass. ``flag`` names the
    option when it differs from the field's name (``--samples`` for ``n_samples``)."""
    field = next((f for f in dataclasses.fields(spec_cls) if f.name == name), None)
    if field is None:
        raise ValueError(f"{spec_cls.__name__} has no field {name!r}")
    if field.default is dataclasses.MISSING:
        raise ValueError(f"{spec_cls.__name__}.{name} has no plain default to show (a nested table?)")
    flag = flag or "--" + name.replace("_", "-")
    kind = _field_type(spec_cls, name)
    shown = shown_default(field.default)
    text = f"{help}  [default: {shown}]" if shown is not None else help
    if kind is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=text)
    choices = getattr(spec_cls, "CHOICES", {}).get(name)
    param_type = click.Choice(choices) if choices else _CLICK_TYPES.get(kind, click.STRING)
    return click.option(flag, name, type=param_type, default=None, help=text)


def set_option(help: str = "Any other spec setting.") -> Callable[[F], F]:
    """``--set KEY=VALUE``, repeatable: spec settings without an option of their own, passed to the command as
    ``settings`` (a tuple of ``KEY=VALUE`` strings, parsed by ``cli.app.overrides``). ``help``: the command's
    examples."""
    return click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help=help)


def label_options(spec_cls: type) -> Callable[[F], F]:
    """``--labels``, ``--format``, ``--uncertain``, ``--view`` and ``--label-metadata``: a label file of the images
    under ``--data``."""
    options = [
        spec_option(
            spec_cls,
            "labels",
            "Label file of the images under --data: NIH Data_Entry_2017.csv, CheXpert train.csv, MIMIC-CXR-JPG "
            "mimic-cxr-2.0.0-chexpert.csv, RSNA stage_2_train_labels.csv, or a csv of path + one 0/1 column per class.",
        ),
        spec_option(spec_cls, "label_format", "Format of --labels; auto: from its header.", flag="--format"),
        spec_option(spec_cls, "uncertain", "Uncertain (-1) labels: ignore (masked out), zeros or ones."),
        spec_option(spec_cls, "view", "Keep only rows of this view (the others are rejected as filtered)."),
        spec_option(
            spec_cls,
            "label_metadata",
            "MIMIC-CXR-JPG's image list, mimic-cxr-2.0.0-metadata.csv(.gz): each study's images and their "
            "ViewPosition. Without it a study's images are the JPEGs in its folder; --view uses the list found "
            "beside --labels.",
        ),
    ]

    def apply(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return apply
