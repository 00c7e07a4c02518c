"""The research cycle end to end on the real samples: enhance -> train on the enhanced data -> evaluate, summary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from enhancer.cli import main
from enhancer.cycle import markdown_table


@pytest.fixture(scope="module")
def split_samples(tmp_path_factory, kermany_dir) -> tuple[Path, Path]:
    """The 16 real images as a training folder (5 + 5) and a held-out test folder (3 + 3)."""
    root = tmp_path_factory.mktemp("cycle-data")
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((kermany_dir / cls).iterdir())
        for part, chosen in (("train", files[:5]), ("test", files[5:])):
            (root / part / cls).mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, root / part / cls / f.name)
    return root / "train", root / "test"


def test_one_round_on_the_real_samples(tmp_path, split_samples):
    from enhancer.models.demo import save_demo_checkpoint

    train, test = split_samples
    start = save_demo_checkpoint(str(tmp_path / "demo-tinyvgg.pt"), "tinyvgg")  # not the shared fixture: no ResNet
    out = tmp_path / "cycle"
    args = [
        "cycle",
        "--data",
        str(train),
        "--test",
        str(test),
        "--checkpoint",
        str(start),
        "--out",
        str(out),
        "--rounds",
        "1",
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.num_workers=0",
        "--set",
        "train.device=cpu",
        "--set",
        "train.val_fraction=0.2",
        "--set",
        "enhance.batch_size=8",
        "--set",
        "enhance.device=cpu",
        "--set",
        "enhance.loader=torch",
        "--set",
        "enhance.num_threads=0",
        "--set",
        "audit_samples=3",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / "round-1" / "enhanced" / "manifest.json").is_file()
    assert (out / "round-1" / "train" / "best.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rounds"]
    assert [r["round"] for r in rows] == [0, 1]
    assert all(sum(map(sum, r["confusion_matrix"])) == 6 for r in rows)  # the 6 held-out images each round
    assert rows[1]["checkpoint"].endswith("round-1/train/best.pt") and rows[1]["best_epoch"] == 1
    ck_meta = json.loads((out / "round-1" / "eval.json").read_text())
    assert ck_meta["checkpoint"] == rows[1]["checkpoint"]
    md = (out / "summary.md").read_text()
    assert "| round |" in md and md.count("\n| ") >= 3 and "| 1 |" in md
    assert "| round | test loss | acc %" in result.output
    # the quick audit of the maps round 1 trained on: its verdicts in the summary
    audit = json.loads((out / "round-1" / "audit" / "audit.json").read_text())
    assert audit["samples"] == 3 and audit["dataset"] == str(out / "round-1" / "enhanced")
    assert rows[1]["audit"] == audit["verdict"] in ("pass", "fail") and rows[1]["audit_verdicts"] == audit["verdicts"]
    assert "maps audit" in md and f"- round 1: randomisation {audit['verdicts']['randomisation']}" in md

    # A rerun finds every step done: the enhanced data is kept, the training run is already complete.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    rerun = json.loads((out / "summary.json").read_text())["rounds"]
    assert rerun[1]["accuracy"] == rows[1]["accuracy"]


def test_summary_table_undefined_values():
    table = markdown_table(
        [
            {
                "round": 0,
                "loss": 0.5,
                "accuracy": 1.0,
                "sensitivity": None,
                "specificity": 1.0,
                "auroc": None,
                "best_epoch": None,
                "checkpoint": "a.pt",
            }
        ]
    )
    assert table.splitlines()[2] == "| 0 | 0.5000 | 100.00 | n/a | 100.00 | n/a | n/a | a.pt |"


@pytest.mark.parametrize(
    "setting",
    [
        "enhance.labels=labels.csv",
        "train.labels=labels.csv",
        "enhance.head=sigmoid",
        "enhance.explain=all",
        "train.loss=bce",
    ],
)
def test_multi_label_settings_are_refused_with_what_to_run_instead(tmp_path, setting):
    """The cycle's rounds are single-label (a softmax model, one map per image): a multi-label setting is exit 2
    naming it, before anything runs."""
    args = ["cycle", "--data", str(tmp_path), "--test", str(tmp_path), "--checkpoint", str(tmp_path / "x.pt")]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out"), "--set", setting])
    assert result.exit_code == 2, result.output
    assert f"{setting.split('=')[0]} is a multi-label setting" in result.output
    assert "train --loss bce, evaluate and audit one by one" in result.output
    assert not (tmp_path / "out").exists()
