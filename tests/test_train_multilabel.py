"""Multi-label training and evaluation: masked BCE on a folder with a label file, prevalence weights, the
checkpoint's recorded sigmoid head, per-class AUROC equal to scikit-learn's on the same scores."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from enhancer.cli import main
from enhancer.models.checkpoints import load_checkpoint
from enhancer.specs import EvaluateSpec, SpecError, TrainSpec
from enhancer.train.augment import eval_transform
from enhancer.train.data import LabelSource, collate_skipping, open_source
from enhancer.train.loop import fit, run_evaluate, validation_split_by
from enhancer.train.objective import Objective, prevalence_weights
from tests.tools.missing import require_module

metrics = require_module("sklearn.metrics", install="scikit-learn==1.9.1")

SIZE = 16
CLASSES = ("top", "bottom", "left")


def _image(targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark noise, with a bright band for each positive class: top half, bottom half, left half."""
    x = rng.normal(50, 20, (32, 32))
    for c, region in enumerate((np.s_[:16, :], np.s_[16:, :], np.s_[:, :16])):
        if targets[c] == 1:
            x[region] += 120
    return x.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def multilabel_folder(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """40 images in one folder and a csv label file (path + 0/1/-1 columns); -1 cells are uncertain."""
    root = tmp_path_factory.mktemp("multilabel")
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 3)) < 0.4).astype(np.int8)
    (root / "images").mkdir()
    lines = ["path," + ",".join(CLASSES)]
    for i, t in enumerate(targets):
        Image.fromarray(_image(t, rng)).save(root / "images" / f"x{i:03d}.png")
        cells = ["-1" if (i + c) % 9 == 0 else str(v) for c, v in enumerate(t)]
        lines.append(f"images/x{i:03d}.png," + ",".join(cells))
    lines.append("images/missing.png,1,0,0")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root, root / "labels.csv", targets


def _spec(data: Path, labels: Path, out: Path, **kw) -> TrainSpec:
    settings = dict(arch="tinyvgg", input_size=SIZE, init="random", epochs=2, batch_size=8, lr=3e-3, num_workers=0)
    return TrainSpec(
        data=str(data), out=str(out), labels=str(labels), device="cpu", val_fraction=0.25, **{**settings, **kw}
    )


def test_masked_bce_and_prevalence_weights_by_hand() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    y = torch.tensor([[1, -1], [0, 1]])
    terms = [np.log1p(np.exp(-2.0)), np.log1p(np.exp(0.5)), np.log1p(np.exp(-3.0))]  # the three known targets
    assert Objective("bce").loss(logits, y).item() == pytest.approx(np.mean(terms), rel=1e-6)
    weights = prevalence_weights(np.array([[1, 0], [0, 0], [0, -1], [1, 1]]))
    assert weights.tolist() == [1.0, 2.0]  # class 0: 2 neg / 2 pos; class 1: 2 neg / 1 pos
    weighted = Objective("bce", pos_weight=weights).loss(logits, y).item()
    assert weighted == pytest.approx(np.mean([terms[0], terms[1], 2 * terms[2]]), rel=1e-6)
    right, decisions = Objective("bce").correct(logits, y)
    assert (right.item(), decisions.item()) == (2, 3)  # 2.0 > 0 right, 0.5 > 0 wrong, 3.0 > 0 right


def test_two_epochs_bce_then_evaluate_per_class_auroc_equals_sklearn(multilabel_folder, tmp_path) -> None:
    data, labels, _ = multilabel_folder
    result = fit(_spec(data, labels, tmp_path / "run", class_weights="prevalence"))
    assert result.epochs_run == 2
    last = result.history[-1]
    assert last["n_train"] + last["n_val"] == 40  # the row with the missing image is left out
    assert set(last["val_auroc_per_class"]) == set(CLASSES) and np.isfinite(last["val_loss"])
    ck = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ck.meta["activation"] == "sigmoid" and ck.config.num_classes == 3 and ck.class_names == CLASSES
    out = tmp_path / "eval.json"
    report = run_evaluate(
        EvaluateSpec(
            data=str(data), checkpoint=str(ck.path), labels=str(labels), device="cpu", num_workers=0, json=str(out)
        )
    )
    assert report["activation"] == "sigmoid" and json.loads(out.read_text())["metrics"] == report["metrics"]
    m = report["metrics"]
    # The same scores, computed here: the model on the evaluation transform of every listed image.
    src = open_source(data, split="test", labels=LabelSource(str(labels)))
    items = collate_skipping([src.dataset(eval_transform(ck.preprocessing), size=(SIZE, SIZE))[i] for i in range(40)])
    with torch.no_grad():
        scores = ck.model.eval()(items.images).sigmoid().double().numpy()
    y = items.labels.numpy()
    for c, name in enumerate(CLASSES):
        keep = y[:, c] >= 0
        assert abs(m["auroc_per_class"][name] - metrics.roc_auc_score(y[keep, c], scores[keep, c])) < 1e-9
        assert abs(m["ap_per_class"][name] - metrics.average_precision_score(y[keep, c], scores[keep, c])) < 1e-9
    assert m["masked"] == int((y == -1).sum()) > 0 and m["n"] == 40


def test_a_label_file_naming_patients_is_split_by_patient(kermany_dir, tmp_path) -> None:
    """NIH's Patient ID (4 patients of 4 images): validation takes whole patients; the run records how it split,
    and a folder without patients is split by image as before."""
    from enhancer.data.labels import NIH_FINDINGS

    images = sorted(kermany_dir.rglob("*.jpeg"))
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID"]
    lines += [f"{p.name},{NIH_FINDINGS[i % 3]},{i % 4},{i // 4}" for i, p in enumerate(images)]
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    spec = _spec(kermany_dir, tmp_path / "Data_Entry_2017.csv", tmp_path / "run", epochs=1)  # val_fraction 0.25
    result = fit(spec)
    assert (result.history[-1]["n_train"], result.history[-1]["n_val"]) == (12, 4)  # one whole patient
    ck = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ck.meta["data"]["split"] == "patient"
    source = open_source(kermany_dir, split=None, labels=LabelSource(str(tmp_path / "Data_Entry_2017.csv")))
    assert source.groups.tolist() == [str(i // 4) for i in range(16)]
    # a resumed run keeps the split it started with; one saved before splits knew patients was split by image
    assert validation_split_by(source, ck.meta) == "patient" and validation_split_by(source, {"data": {}}) == "image"
    assert validation_split_by(dataclasses.replace(source, groups=None), None) == "image"


def test_cli_train_and_evaluate_with_a_label_file(multilabel_folder, tmp_path) -> None:
    data, labels, _ = multilabel_folder
    common = ["--data", str(data), "--labels", str(labels), "--device", "cpu", "--num-workers", "0"]
    run = ["train", *common, "--out", str(tmp_path / "run"), "--arch", "tinyvgg", "--input-size", str(SIZE)]
    cli = CliRunner().invoke(main, [*run, "--init", "random", "--epochs", "1", "--loss", "bce", "--format", "csv"])
    assert cli.exit_code == 0, cli.output
    assert "AUROC" in cli.output
    cli = CliRunner().invoke(main, ["evaluate", *common, "--checkpoint", str(tmp_path / "run" / "best.pt")])
    assert cli.exit_code == 0, cli.output
    assert "mean AUROC" in cli.output and "top " in cli.output
    cli = CliRunner().invoke(main, [*run, "--epochs", "1", "--loss", "ce", "--out", str(tmp_path / "ce")])
    assert cli.exit_code == 2 and "--loss bce" in cli.output


def test_softmax_checkpoint_on_multilabel_data_names_the_fix(multilabel_folder, tmp_path) -> None:
    data, labels, _ = multilabel_folder
    fit(_spec(data, labels, tmp_path / "r", epochs=1))
    best = tmp_path / "r" / "best.pt"
    with pytest.raises(SpecError, match="--head sigmoid"):
        run_evaluate(
            EvaluateSpec(data=str(data), checkpoint=str(best), labels=str(labels), head="softmax", num_workers=0)
        )
    with pytest.raises(SpecError, match="prevalence applies to loss = bce"):
        TrainSpec(data="d", out="o", loss="ce", class_weights="prevalence")
