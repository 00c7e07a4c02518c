"""Skips that say how to get what is missing. Under ``CI=true`` the conftest turns every skip (except ``gpu`` tests)
into a failure, so these are the only way a test steps aside, and only on a developer's machine."""

from __future__ import annotations

import importlib
import shutil
from types import ModuleType

import pytest


def require_module(name: str, *, install: str) -> ModuleType:
    """Import ``name`` or skip, naming the package to install (``install``: the pip requirement)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.skip(
            f"Python module {name} missing ({exc}): .venv/bin/pip install '{install}' (or `make test`)",
            allow_module_level=True,
        )


def require_command(name: str, *, install: str) -> str:
    """The path of the command ``name`` or skip, saying how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"command {name} missing: {install}", allow_module_level=True)
    return path


def missing(what: str, *, how: str) -> None:
    """Skip because ``what`` is not available here; ``how`` says how to get it."""
    pytest.skip(f"{what}: {how}", allow_module_level=True)
