"""The suite's own rule (tests/conftest.py): under CI=true a skip is a failure, except for tests marked ``gpu``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

EXAMPLE = """
import pytest
from tests.tools.missing import require_module

def test_needs_a_missing_module():
    require_module("no_such_module_xyz", install="no-such-package==1.0")

@pytest.mark.gpu
def test_gpu_only():
    pytest.skip("no CUDA here")

def test_plain():
    assert True
"""


@pytest.fixture
def example(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest("from tests.conftest import *  # noqa: F403  (the suite's hooks, as they are)\n")
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs CUDA\n")
    pytester.makepyfile(test_example=EXAMPLE)
    return pytester


@pytest.mark.parametrize("ci", ["true", ""])
def test_skips_fail_under_ci_but_gpu_tests(example: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = example.runpytest_subprocess("-rA")
    output = result.stdout.str()
    if ci:
        result.assert_outcomes(passed=1, failed=1, skipped=1)
        assert "skipped under CI=true" in output and "no-such-package==1.0" in output  # names what to install
    else:
        result.assert_outcomes(passed=1, skipped=2)
        assert "pip install 'no-such-package==1.0'" in output  # locally: how to get it
