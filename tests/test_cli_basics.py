"""The command line's basics: help, version, the zoo listing, inspect, and exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from click.testing import CliRunner

from enhancer import __version__
from enhancer.cli import main
from enhancer.models.zoo import build_model
from tests.seed_reference import NotebookResNet, save_seed_checkpoint


def test_help_and_version():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "Grad-CAM enhancement" in result.output and "inspect" in result.output
    assert runner.invoke(main, ["--version"]).output.strip() == f"enhancer, version {__version__}"


def test_help_does_not_import_torch():
    code = "import sys; from enhancer.cli import main; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True).stdout.strip()
        == "False"
    )


def test_models_lists_the_zoo():
    output = CliRunner().invoke(main, ["models"]).output
    for arch in ("tinyvgg", "vgg16", "resnet50", "resnet101", "resnet152", "tv-resnet50"):
        assert f"\n{arch} " in f"\n{output}"
    assert "220k" in output


def test_inspect_a_seed_checkpoint(tmp_path):
    torch.manual_seed(0)
    save_seed_checkpoint(NotebookResNet(101), tmp_path / "seed.pth")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "seed.pth"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["architecture"] == "resnet101" and report["head"] == "220k" and report["format"] == "seed"
    assert report["parameters"] == {"total": 44_772_798, "trainable_default": 17_234_238, "head": 220_502}
    assert report["input"] == {"size": [224, 224], "in_chans": 1, "mean": [0.485], "std": [0.229]}
    assert report["meta"]["test_acc"] == 91.56
    text = CliRunner().invoke(main, ["inspect", str(tmp_path / "seed.pth")]).output
    assert "resnet101  head 220k" in text and "44,772,798 total" in text


def test_bad_checkpoints_exit_2_with_one_line(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    torch.save(build_model("tinyvgg", input_size=32).state_dict(), tmp_path / "tiny.pt")
    for args in (["inspect", str(empty)], ["inspect", str(tmp_path / "tiny.pt"), "--arch", "resnet50"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1
        assert "Traceback" not in result.output
