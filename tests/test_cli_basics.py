"""The command line's basics: help, version, the zoo listing, inspect, and exit code 2 on bad input."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import typing

import click
import pytest
import torch
from click.testing import CliRunner

from enhancer import __version__
from enhancer.cli import main
from enhancer.cli.app import overrides
from enhancer.models.zoo import build_model
from enhancer.settings import METHODS, CamSettings
from enhancer.specs import REQUIRED, AuditSpec, CycleSpec, EnhanceSpec, EvaluateSpec, TrainSpec, parse_value
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


SPEC_COMMANDS = {
    "enhance": EnhanceSpec,
    "train": TrainSpec,
    "evaluate": EvaluateSpec,
    "cycle": CycleSpec,
    "audit": AuditSpec,
}
NOT_SPEC_FIELDS = {
    "job_file",
    "settings",
    "progress",
    "workers",
    "help",
    "codecs",
    "class_names",
}  # the command's own (codecs: --codec FIELD=CODEC -> [codec]; class_names: audit's --class NAME -> classes)
INPUT_OPTIONS = {"input_size", "mean", "std", "channels"}  # cli/model_options.py: fields of the nested [input] table
CAM_OPTIONS = {"enhance": {"method", "scorecam_batch"}}  # cli/enhance_commands.py: fields of the nested [enhance.cam]


def _read_back(shown: str, default: object) -> object:
    """What a user reads in ``[default: ...]``, as a spec value."""
    if shown == "none":
        return () if isinstance(default, tuple) else None
    if isinstance(default, bool):
        return {"on": True, "off": False}[shown]
    if isinstance(default, tuple):
        return tuple(shown.split(","))
    return parse_value(shown)


@pytest.mark.parametrize("command", SPEC_COMMANDS)
def test_help_shows_the_spec_defaults(command):
    """Every option of a spec field (or of the spec's nested CAM settings) shows the dataclass default, offers the
    spec's choices and defaults to None."""
    spec_cls, cmd = SPEC_COMMANDS[command], main.commands[command]
    owner = {f.name: spec_cls for f in dataclasses.fields(spec_cls)}
    owner |= {name: CamSettings for name in CAM_OPTIONS.get(command, ())}
    nested = INPUT_OPTIONS - set(owner)
    options = [p for p in cmd.params if isinstance(p, click.Option) and p.name not in NOT_SPEC_FIELDS | nested]
    assert {p.name for p in options} <= set(owner), "every other option is a spec field"
    assert len(options) >= {"enhance": 19, "train": 22, "evaluate": 8, "cycle": 5, "audit": 11}[command]
    ctx = click.Context(cmd, info_name=command)
    arguments = ["."] if command == "audit" else []  # audit's DATASET is an argument (an existing folder)
    unset = cmd.make_context(command, arguments).params
    for option in options:
        cls = owner[option.name]
        default = {f.name: f for f in dataclasses.fields(cls)}[option.name].default
        help_text = option.get_help_record(ctx)[1]
        shown = re.findall(r"\[default: ([^\]]*)\]", help_text)
        assert unset[option.name] is None, option.name  # not given: the environment and the job file still apply
        if default == REQUIRED:
            assert shown == [], option.name
            continue
        assert len(shown) == 1, (option.name, help_text)
        value = _read_back(shown[0], default)
        assert value == default and type(value) is type(default), (option.name, shown[0], default)
        choices = getattr(cls, "CHOICES", {}).get(option.name)
        if choices:
            assert tuple(option.type.choices) == choices, option.name
        hint = typing.get_type_hints(cls)[option.name]
        assert option.is_flag == (bool in (hint, *typing.get_args(hint))), option.name  # --amp/--no-amp


def test_cam_options_set_the_cam_table_and_list_the_methods():
    from enhancer.cli.enhance_commands import cam_overrides

    params = main.commands["enhance"].make_context("enhance", ["--method", "gradcam++", "--scorecam-batch", "8"]).params
    assert cam_overrides(params) == {"cam.method": "gradcam++", "cam.scorecam_batch": 8}
    assert "method" not in params and "scorecam_batch" not in params  # the rest are EnhanceSpec's own fields
    result = CliRunner().invoke(main, ["enhance", "--method", "gradcam+"])
    assert result.exit_code == 2 and all(repr(m) in result.output for m in METHODS), result.output


def test_options_not_given_leave_the_environment_and_the_job_file_in_charge():
    cmd = main.commands["train"]
    params = cmd.make_context("train", ["--data", "d", "--no-amp", "--unfreeze", "layer4,fc", "--lr", "0.01"]).params
    given = overrides({k: v for k, v in params.items() if k not in NOT_SPEC_FIELDS}, ())
    assert given == {"data": "d", "amp": False, "unfreeze": "layer4,fc", "lr": 0.01}
    params = main.commands["evaluate"].make_context("evaluate", ["--json", "r.json"]).params
    assert overrides({k: v for k, v in params.items() if k not in NOT_SPEC_FIELDS}, ()) == {"json": "r.json"}


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
