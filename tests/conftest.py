"""Shared pytest fixtures, and the suite's one rule about skips.

The rule: under ``CI=true`` a skipped test fails (CI must run everything it can), except tests marked ``gpu``, which
skip wherever there is no CUDA device. Locally a skip says how to get what is missing (``tests/tools/missing.py``).
Long variants (marked ``extended``) are deselected unless ``--runslow`` is given.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow",
        action="store_true",
        help="also run the long variants (marked extended, e.g. the large fuzz); without it they are deselected",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Deselected, not skipped: under CI=true a skip fails, and the long variants are a choice, not a missing tool.
    if not config.getoption("--runslow"):
        extended = [item for item in items if item.get_closest_marker("extended")]
        if extended:
            config.hook.pytest_deselected(items=extended)
            items[:] = [item for item in items if not item.get_closest_marker("extended")]
    import torch

    if torch.cuda.is_available():
        return
    no_cuda = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(no_cuda)


def _fail_skip_in_ci(report: pytest.TestReport | pytest.CollectReport, allowed: bool) -> None:
    if IN_CI and report.skipped and not allowed and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which runs every test but the gpu ones: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    _fail_skip_in_ci(outcome.get_result(), allowed=item.get_closest_marker("gpu") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    outcome = yield
    _fail_skip_in_ci(outcome.get_result(), allowed=False)  # a whole module skipped at import


@pytest.fixture(scope="session")
def kermany_dir() -> Path:
    """The 16 real validation X-rays (ImageFolder: NORMAL/, PNEUMONIA/) in the user cache, fetched the way users get
    them (``enhancer fetch-samples``: the PyPI wheel, sha256-checked) on first use; offline from $ENHANCER_SAMPLES."""
    from enhancer.data.samples import cached_samples

    return cached_samples()


@pytest.fixture(scope="session")
def demo_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Demonstration checkpoints (random weights, calibrated BatchNorm) at 224: ``resnet101`` (the product's main
    architecture) and ``tinyvgg`` (fast, for tests that run the job many times)."""
    from enhancer.models.demo import save_demo_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: Path(save_demo_checkpoint(str(root / f"demo-{arch}.pt"), arch)) for arch in ("resnet101", "tinyvgg")}
