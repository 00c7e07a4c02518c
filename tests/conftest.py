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


@pytest.fixture(scope="session")
def demo_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Demonstration checkpoints (random weights, calibrated BatchNorm) at 224: ``resnet101`` (the product's main
    architecture) and ``tinyvgg`` (fast, for tests that run the job many times)."""
    from enhancer.demo_model import save_demo_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: Path(save_demo_checkpoint(str(root / f"demo-{arch}.pt"), arch)) for arch in ("resnet101", "tinyvgg")}
