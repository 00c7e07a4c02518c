"""``enhancer audit`` on datasets of maps per class (multi-label): a TinyVGG with 3 sigmoid outputs on 8 synthetic
images, enhanced with ``--explain all`` and with ``--explain bottom``. Each class is audited on its own maps with its
sigmoid probability and its findings' boxes; a class's figures equal those of the dataset holding that class alone;
``--class`` selects classes and names the valid ones (a dataset of one map per image: tests/test_audit_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from enhancer.audit.faithfulness import Scorer
from enhancer.cli import main
from enhancer.models.checkpoints import load_checkpoint
from enhancer.models.demo import to_model_input
from tests.test_train_multilabel import CLASSES
from tests.tools.sigmoid_case import SIZE, enhance_case, sigmoid_case


def _audit(dataset: Path, case, out: Path, *extra: str) -> dict:
    args = ["audit", str(dataset), "--checkpoint", str(case.checkpoint), "--out", str(out), "--device", "cpu"]
    done = CliRunner().invoke(main, [*args, "--samples", "0", "--no-progress", "--set", "resamples=200", *extra])
    assert done.exit_code == 0, done.output
    return json.loads((out / "audit.json").read_text())


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("per-class")
    made = sigmoid_case(root / "case", n=8)
    every = enhance_case(made, root / "all", "--explain", "all", "--fields", "image,cam,heatmap")
    one = enhance_case(made, root / "bottom", "--explain", "bottom", "--fields", "image,cam,heatmap")
    audits = {
        "all": _audit(every, made, root / "audit-all", "--boxes", str(made.boxes)),
        "bottom": _audit(one, made, root / "audit-bottom", "--boxes", str(made.boxes)),
    }
    return made, every, one, audits, root


def _without_timing(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "seconds"}


def _stored(dataset: Path, *names: str) -> dict[str, np.ndarray]:
    [shard] = sorted(dataset.glob("shard-*.h5"))
    with h5py.File(shard, "r") as f:
        return {n: f[n][:] for n in names}


def test_every_explained_class_is_audited_with_the_documented_keys(case) -> None:
    made, every, _, audits, root = case
    stored = _stored(every, "cam")["cam"]
    assert (stored.reshape(8, 3, -1).max(2) > 0).mean() > 0.6, "trivial maps"
    doc = audits["all"]
    assert list(doc["classes"]) == list(CLASSES) and doc["classes_not_audited"] == {}
    assert doc["activation"] == "sigmoid" and doc["score"] == "prob"
    assert doc["samples"] == 8 and doc["indices"] == list(range(8))
    for c, name in enumerate(CLASSES):
        part = doc["classes"][name]
        assert part["class_id"] == c and part["samples"] == 8 and part["indices"] == list(range(8))
        assert set(part["verdicts"]) == {"randomisation", "deletion", "insertion", "road", "confidence", "localisation"}
        assert part["verdict"] == ("pass" if all(v == "pass" for v in part["verdicts"].values()) else "fail")
        assert part["randomisation"]["stages"] and part["deletion"]["score"] == "prob"
        assert all(f.startswith(f"class-{name}/") and (root / "audit-all" / f).is_file() for f in part["figures"])
        # localisation against that finding's boxes only: the images positive for it
        loc = part["localisation"]
        assert loc["finding"] == name and loc["n"] == int(made.targets[:, c].sum())
        assert list(loc["by_class"]) == [name]
    assert doc["verdicts"] == {n: doc["classes"][n]["verdict"] for n in CLASSES}
    assert doc["verdict"] == ("pass" if all(v == "pass" for v in doc["verdicts"].values()) else "fail")
    assert doc["figures"] == [f for n in CLASSES for f in doc["classes"][n]["figures"]]
    text = (root / "audit-all" / "audit.md").read_text()
    assert [line for line in text.splitlines() if line.startswith("## ")] == [f"## {n}" for n in CLASSES]
    assert text.count("| check | figure | value | 95% CI | baseline | verdict |") == 3


def test_a_class_audit_equals_the_audit_of_a_dataset_of_that_class_alone(case) -> None:
    _, every, one, audits, _ = case
    c = CLASSES.index("bottom")
    both = _stored(every, "cam", "explained")
    alone = _stored(one, "cam", "explained")
    assert (alone["explained"] == c).all() and (both["explained"][:, c] == c).all()
    assert np.array_equal(alone["cam"][:, 0], both["cam"][:, c])  # the same maps, so the same audit
    assert list(audits["bottom"]["classes"]) == ["bottom"]
    ours, theirs = audits["all"]["classes"]["bottom"], audits["bottom"]["classes"]["bottom"]
    assert _without_timing(ours) == _without_timing(theirs)
    assert ours["randomisation"]["stages"][-1]["ssim"] == theirs["randomisation"]["stages"][-1]["ssim"]


def test_the_score_is_the_sigmoid_probability_of_the_class(case) -> None:
    made, every, _, audits, _ = case
    ck = load_checkpoint(str(made.checkpoint))
    stored = _stored(every, "image")
    x = to_model_input(torch.from_numpy(stored["image"]).float() / 255, ck.preprocessing)
    model = ck.model.eval()
    with torch.no_grad():
        logits = model(x)
    for c, name in enumerate(CLASSES):
        curve = audits["all"]["classes"][name]["deletion"]["curve"]
        # fraction 0 deletes nothing: the mean score of the unperturbed images
        assert curve[0] == pytest.approx(float(logits[:, c].sigmoid().mean()), abs=1e-6)
        assert curve[0] != pytest.approx(float(logits.softmax(1)[:, c].mean()), abs=1e-3)
    target = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    picked = logits.gather(1, target[:, None])[:, 0]
    assert torch.equal(Scorer(model, target, activation="sigmoid")(x), picked.sigmoid())
    assert torch.equal(Scorer(model, target)(x), logits.softmax(1).gather(1, target[:, None])[:, 0])
    assert torch.equal(Scorer(model, target, score="logit", activation="sigmoid")(x), picked)
    assert x.shape[-1] == SIZE


def test_class_option_selects_and_names_the_valid_classes(case, tmp_path) -> None:
    made, every, _, _, _ = case
    doc = _audit(every, made, tmp_path / "left", "--class", "left", "--checks", "faithfulness")
    assert list(doc["classes"]) == ["left"] and doc["spec"]["classes"] == ["left"]
    assert set(doc["classes"]["left"]["verdicts"]) == {"deletion", "insertion", "road", "confidence"}
    args = ["audit", str(every), "--checkpoint", str(made.checkpoint), "--out", str(tmp_path / "x")]
    bad = CliRunner().invoke(main, [*args, "--class", "Effusion"])
    assert bad.exit_code == 2
    assert "no class 'Effusion'" in bad.output and "its classes: top, bottom, left" in bad.output
    assert not (tmp_path / "x").exists()


def test_a_class_with_too_few_maps_is_named(case, tmp_path) -> None:
    made, _, one, _, _ = case
    args = ["audit", str(one), "--checkpoint", str(made.checkpoint), "--out", str(tmp_path / "x")]
    bad = CliRunner().invoke(main, [*args, "--class", "top"])
    assert bad.exit_code == 2
    assert "class 'top' has 0 map(s)" in bad.output and "audit a class with maps: bottom" in bad.output
