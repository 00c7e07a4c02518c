"""Classifiers from outside the zoo: torchvision builders (``tv:NAME``), timm models (``timm:NAME``, when timm is
installed) and users' own builders (``package.module:callable``), built with random weights for a class count.

Usage::

    from enhancer.models.external import build_external, parse_model_name
    model = build_external("tv:densenet121", num_classes=2)       # torchvision's builder, weights=None
    model = build_external("mypkg.nets:make_net", num_classes=3)  # calls mypkg.nets.make_net(num_classes=3)

Nothing is ever downloaded here: weights come from the checkpoint the model is loaded with.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from dataclasses import dataclass

from torch import nn

from enhancer.models.zoo import ZOO, ModelError

KINDS = ("zoo", "tv", "timm", "callable")
TIMM_INSTALL = "pip install 'enhancer[timm]'"


@dataclass(frozen=True)
class ModelName:
    """A parsed ``--model`` value: ``kind`` is one of ``KINDS``; ``text`` is the canonical spelling."""

    kind: str
    name: str

    @property
    def text(self) -> str:
        return f"{self.kind}:{self.name}" if self.kind in ("tv", "timm") else self.name


def parse_model_name(text: str) -> ModelName:
    """``resnet101`` (zoo), ``tv:densenet121``, ``timm:resnet18`` or ``package.module:callable``."""
    text = text.strip()
    if text in ZOO:
        return ModelName("zoo", text)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in ("tv", "timm") and rest:
        return ModelName(prefix, rest)
    if sep and rest and all(part.isidentifier() for part in (*prefix.split("."), *rest.split("."))):
        return ModelName("callable", text)
    near = difflib.get_close_matches(text, list(ZOO), n=3)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    raise ModelError(
        f"unknown model {text!r}{hint}; give a zoo name ({', '.join(ZOO)}), tv:NAME (a torchvision classifier, "
        "e.g. tv:densenet121), timm:NAME (timm installed) or package.module:callable (your builder)"
    )


def torchvision_names() -> list[str]:
    """The classification builders of torchvision (``torchvision.models.list_models``)."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


def _unknown(kind: str, name: str, valid: list[str], where: str) -> ModelError:
    near = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    hint = f"; nearest: {', '.join(f'{kind}:{n}' for n in near)}" if near else ""
    return ModelError(f"{kind}:{name} is not a {where}{hint}")


def _build_torchvision(name: str, num_classes: int) -> nn.Module:
    import torchvision

    valid = torchvision_names()
    if name not in valid:
        raise _unknown("tv", name, valid, "torchvision classification model (torchvision.models.list_models())")
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"tv:{name} cannot be built with num_classes={num_classes}: {exc}") from None


def _build_timm(name: str, num_classes: int, in_chans: int | None) -> nn.Module:
    if not timm_available():
        raise ModelError(f"timm:{name} needs timm, which is not installed: {TIMM_INSTALL}")
    import timm

    valid = timm.list_models()
    if name not in valid:
        raise _unknown("timm", name, valid, "timm model (timm.list_models())")
    extra = {} if in_chans is None else {"in_chans": in_chans}
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **extra)


def _build_callable(text: str, num_classes: int) -> nn.Module:
    module_name, _, attr = text.partition(":")
    try:
        target = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"{text}: cannot import {module_name} ({exc}); is it on PYTHONPATH / installed?") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelError(f"{text}: {module_name} has no {attr!r}; give package.module:callable")
        target = getattr(target, part)
    if not callable(target):
        raise ModelError(f"{text}: {attr} is a {type(target).__name__}, not a callable that builds a model")
    try:
        model = target(num_classes=num_classes)
    except TypeError as exc:
        raise ModelError(f"{text}: calling it with num_classes={num_classes} failed ({exc})") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{text}: returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def build_external(text: str, *, num_classes: int, in_chans: int | None = None) -> nn.Module:
    """A model named ``tv:NAME``, ``timm:NAME`` or ``package.module:callable`` with random weights, in train mode.
    ``in_chans`` applies to timm models only (torchvision builders and users' builders fix their own stem)."""
    if num_classes < 1:
        raise ModelError(f"num_classes must be at least 1, got {num_classes}")
    parsed = parse_model_name(text)
    if parsed.kind == "tv":
        return _build_torchvision(parsed.name, num_classes)
    if parsed.kind == "timm":
        return _build_timm(parsed.name, num_classes, in_chans)
    if parsed.kind == "callable":
        return _build_callable(parsed.name, num_classes)
    raise ModelError(f"{text} is a zoo architecture; build it with enhancer.models.zoo.build_model")
