"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

KERMANY_DIR = Path(__file__).resolve().parents[2] / "shared/data/kermany-val"


@pytest.fixture(scope="session")
def kermany_dir() -> Path:
    """The 16 real validation X-rays (ImageFolder: NORMAL/, PNEUMONIA/), expected at ../shared/data/kermany-val."""
    if not (KERMANY_DIR / "NORMAL").is_dir():
        raise FileNotFoundError(f"sample data missing: {KERMANY_DIR} (the repository expects ../shared next to it)")
    return KERMANY_DIR
