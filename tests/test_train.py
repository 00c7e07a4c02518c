"""The training recipe on tiny synthetic data: learning, early stopping, exact resume, unreadable images, seed
checkpoints, enhanced HDF5 input, unfreezing, CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from enhancer.cli import main
from enhancer.models.checkpoints import load_checkpoint, read_checkpoint_file
from enhancer.models.zoo import ModelError, build_model
from enhancer.preprocessing import Preprocessing
from enhancer.specs import EvaluateSpec, SpecError, TrainSpec, load_spec
from enhancer.train.augment import eval_transform, train_transform
from enhancer.train.data import open_source, stratified_split
from enhancer.train.loop import EarlyStopping, _loader, evaluate, fit, run_evaluate, trainable_groups
from tests.seed_reference import NotebookTinyVGG, save_seed_checkpoint

SIZE = 16


def separable_image(label: int, rng: np.random.Generator, shape: tuple[int, int] = (40, 48)) -> np.ndarray:
    """Dark noise (NORMAL) or bright noise (PNEUMONIA): separable by mean intensity, even after augmentation."""
    return rng.normal(60 + 120 * label, 25, shape).clip(0, 255).astype(np.uint8)


def make_separable_folder(root: Path, n_per_class: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(separable_image(label, rng)).save(root / name / f"{name.lower()}_{i:03d}.png")
    return root


def tiny_spec(data: Path, out: Path, **kw) -> TrainSpec:
    settings = {
        "arch": "tinyvgg",
        "input_size": SIZE,
        "init": "random",
        "epochs": 2,
        "batch_size": 8,
        "lr": 3e-3,
        "num_workers": 0,
        "device": "cpu",
        "val_fraction": 0.25,
    }
    return TrainSpec(data=str(data), out=str(out), **{**settings, **kw})


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_separable_folder(tmp_path_factory.mktemp("synth") / "data")


def _state(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint_file(path)["model_state_dict"]


def test_tiny_model_learns_separable_data(folder, tmp_path):
    result = fit(tiny_spec(folder, tmp_path / "run", epochs=6))
    best = result.history[result.best_epoch - 1]
    assert best["val_acc"] >= 0.9, result.history
    assert best["n_val"] == 10 and best["n_train"] == 30  # stratified 25%: 5 + 5 of 20 + 20
    for name in ("best.pt", "last.pt", "metrics.csv", "metrics.jsonl", "curves.png", "summary.json", "unreadable.csv"):
        assert (tmp_path / "run" / name).is_file(), name
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, result.epochs_run + 1))
    with Image.open(tmp_path / "run" / "curves.png") as im:
        assert im.size[0] > 400
    ck = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ck.meta["epoch"] == result.best_epoch and ck.meta["spec"]["arch"] == "tinyvgg"
    assert ck.meta["metrics"]["validation"]["accuracy"] == best["val_acc"]
    last = read_checkpoint_file(tmp_path / "run" / "last.pt")
    assert "optimizer_state_dict" in last and "scheduler_state_dict" in last
    assert len(last["meta"]["history"]) == result.epochs_run
    assert last["meta"]["train_state"]["epoch"] == result.epochs_run


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(folder, tmp_path):
    fit(tiny_spec(folder, tmp_path / "straight", epochs=2))
    fit(tiny_spec(folder, tmp_path / "resumed", epochs=1))
    fit(tiny_spec(folder, tmp_path / "resumed", epochs=2))  # resumes from last.pt automatically
    a, b = _state(tmp_path / "straight" / "last.pt"), _state(tmp_path / "resumed" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha = [r["val_loss"] for r in read_checkpoint_file(tmp_path / "straight" / "last.pt")["meta"]["history"]]
    hb = [r["val_loss"] for r in read_checkpoint_file(tmp_path / "resumed" / "last.pt")["meta"]["history"]]
    assert ha == hb and len(ha) == 2
    oa = read_checkpoint_file(tmp_path / "straight" / "last.pt")["optimizer_state_dict"]["state"]
    ob = read_checkpoint_file(tmp_path / "resumed" / "last.pt")["optimizer_state_dict"]["state"]
    assert all(torch.equal(oa[i]["exp_avg"], ob[i]["exp_avg"]) for i in oa)


def test_early_stopping_restores_the_best_epoch(folder, tmp_path):
    # min_delta larger than any loss change: only epoch 1 counts as an improvement, patience 2 stops after epoch 3.
    result = fit(tiny_spec(folder, tmp_path / "run", epochs=10, patience=2, min_delta=10.0))
    assert (result.epochs_run, result.best_epoch, result.stopped_early) == (3, 1, True)
    best, last = _state(tmp_path / "run" / "best.pt"), _state(tmp_path / "run" / "last.pt")
    assert any(not torch.equal(best[k], last[k]) for k in best)  # training went on after the best epoch
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, best[k]), k  # the returned model holds the best weights
    src = open_source(folder)
    _, val_idx = stratified_split(src.labels, 0.25, 0)
    pre = Preprocessing(size=(SIZE, SIZE))
    loader = _loader(
        src.dataset(eval_transform(pre), val_idx, size=(SIZE, SIZE)), batch_size=8, num_workers=0, seed=0, device="cpu"
    )
    metrics, _ = evaluate(result.model, loader, device="cpu")
    assert metrics["loss"] == pytest.approx(result.history[0]["val_loss"], rel=1e-5)
    # A rerun of a run that stopped early does not train again.
    again = fit(tiny_spec(folder, tmp_path / "run", epochs=10, patience=2, min_delta=10.0))
    assert again.epochs_run == 3 and again.best_epoch == 1


def test_early_stopping_rule():
    s = EarlyStopping(patience=2, min_delta=0.01)
    assert s.update(1.0, 1) and s.best_epoch == 1
    assert not s.update(0.995, 2)  # not better by more than min_delta
    assert s.update(0.9, 3) and s.bad_epochs == 0
    assert not s.update(None, 4) and not s.stopped  # an undefined loss never improves
    assert not s.update(0.95, 5) and s.stopped
    never = EarlyStopping(patience=0, min_delta=0.0)
    for e in range(1, 10):
        never.update(5.0, e)
    assert not never.stopped  # patience 0: early stopping off


def test_unreadable_image_mid_epoch_is_counted_and_reported(tmp_path):
    data = make_separable_folder(tmp_path / "data", n_per_class=12)
    bad = data / "PNEUMONIA" / "pneumonia_005.png"  # sorted into the middle of the class
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--arch",
            "tinyvgg",
            "--input-size",
            str(SIZE),
            "--init",
            "random",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--val-fraction",
            "0.25",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 unreadable image(s) skipped" in result.output and "pneumonia_005.png" in result.output
    rows = list(csv.DictReader((tmp_path / "run" / "unreadable.csv").read_text().splitlines()))
    assert len(rows) == 2 and {r["epoch"] for r in rows} == {"1", "2"}
    assert all(r["path"] == str(bad) and r["reason"] for r in rows)
    history = read_checkpoint_file(tmp_path / "run" / "last.pt")["meta"]["history"]
    assert [h["n_unreadable"] for h in history] == [1, 1]
    assert sum(h["n_train"] + h["n_val"] for h in history[:1]) == 23  # 24 files, one unreadable


@pytest.fixture(scope="module")
def seed_tinyvgg(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("seedck") / "CNN_GradCAM_v1.pth"
    save_seed_checkpoint(NotebookTinyVGG(inp_res=SIZE), path)
    return path


def test_seed_checkpoint_fine_tunes_and_evaluates_without_conversion(folder, tmp_path, seed_tinyvgg):
    result = fit(tiny_spec(folder, tmp_path / "ft", epochs=1, init=str(seed_tinyvgg), arch=None, input_size=None))
    assert result.epochs_run == 1
    ck = load_checkpoint(tmp_path / "ft" / "best.pt")
    assert ck.config.arch == "tinyvgg" and ck.config.input_size == SIZE and ck.source_format == "enhancer"
    assert str(seed_tinyvgg) in ck.meta["init"] and "seed format" in ck.meta["init"]
    report = run_evaluate(EvaluateSpec(data=str(folder), checkpoint=str(seed_tinyvgg), device="cpu", num_workers=0))
    m = report["metrics"]
    assert report["checkpoint_format"] == "seed" and m["n"] == 40
    assert sum(map(sum, m["confusion_matrix"])) == 40 and m["loss"] > 0
    out = tmp_path / "eval.json"
    cli = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--data",
            str(folder),
            "--checkpoint",
            str(seed_tinyvgg),
            "--json",
            str(out),
            "--device",
            "cpu",
            "--num-workers",
            "0",
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert "sens" in cli.output and "AUROC" in cli.output
    saved = json.loads(out.read_text())
    assert saved["metrics"]["confusion_matrix"] == m["confusion_matrix"]


def test_wrong_architecture_init_checkpoint_is_a_clear_error(folder, tmp_path, seed_tinyvgg):
    cli = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "run"),
            "--arch",
            "resnet50",
            "--init",
            str(seed_tinyvgg),
            "--device",
            "cpu",
        ],
    )
    assert cli.exit_code == 2
    assert str(seed_tinyvgg) in cli.output and "does not fit architecture resnet50" in cli.output
    assert "Closest architecture: tinyvgg" in cli.output
    assert not (tmp_path / "run" / "last.pt").exists()
    # A checkpoint of ours that holds another architecture says so too.
    fit(tiny_spec(folder, tmp_path / "ours", epochs=1))
    with pytest.raises(Exception, match="holds a tinyvgg model, not resnet50"):
        fit(tiny_spec(folder, tmp_path / "run2", init=str(tmp_path / "ours" / "best.pt"), arch="resnet50"))


def test_class_count_mismatch_is_a_clear_error(tmp_path, seed_tinyvgg):
    data = make_separable_folder(tmp_path / "data", n_per_class=4)
    (data / "COVID").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "COVID" / "a.png")
    with pytest.raises(ModelError, match="2 outputs but .* has 3 classes"):
        fit(tiny_spec(data, tmp_path / "run", init=str(seed_tinyvgg), arch=None, input_size=None))


def test_progressive_unfreezing(folder, tmp_path):
    assert trainable_groups(["head", "fc"], ["layer4[2]", "layer4[1]"], 2, 0) == ("head", "fc")
    assert trainable_groups(["head", "fc"], ["layer4[2]", "layer4[1]"], 2, 3) == ("head", "fc", "layer4[2]")
    assert trainable_groups(["head"], ["layer4[2]", "layer4[1]"], 2, 9) == ("head", "layer4[2]", "layer4[1]")
    result = fit(
        tiny_spec(
            folder, tmp_path / "run", epochs=3, unfreeze=("head",), unfreeze_schedule=("features",), unfreeze_every=2
        )
    )
    assert [h["trainable"] for h in result.history] == ["head", "head", "head+features"]
    params = [h["trainable_params"] for h in result.history]
    assert params[0] == params[1] < params[2]
    first = read_checkpoint_file(tmp_path / "run" / "best.pt")  # written at epoch 1 at least
    assert first["meta"]["spec"]["unfreeze_schedule"] == ["features"]


def write_separable_enhanced(out: Path, n_per_class: int = 16, size: int = SIZE) -> Path:
    """A merged enhanced dataset whose image/enhanced/crop fields are separable by intensity."""
    from enhancer.store import ShardWriter, merge, per_sample_shapes, resolve_fields

    fields = resolve_fields(("image", "enhanced", "crop"))
    shapes = per_sample_shapes(fields, H=size, W=size, Hc=size // 2, Wc=size // 2, C=2)
    rng = np.random.default_rng(1)
    n = 2 * n_per_class
    labels = np.arange(n) % 2
    batch = {
        "index": np.arange(n),
        "label": labels,
        "pred": labels,
        "prob": np.eye(2, dtype=np.float32)[labels],
        "path": [f"{'NP'[c]}/img_{i}.png" for i, c in enumerate(labels)],
        "orig_size": np.full((n, 2), 64),
        "image": np.stack([separable_image(c, rng, (size, size))[None] for c in labels]),
        "enhanced": np.stack([separable_image(c, rng, (size, size))[None] for c in labels]),
        "crop": np.stack([separable_image(c, rng, (size // 2, size // 2))[None] for c in labels]),
    }
    attrs = {"class_names": ["NORMAL", "PNEUMONIA"]}
    with ShardWriter(out, 0, 1, fields=fields, shapes=shapes, attrs=attrs) as w:
        w.write(batch)
    merge(out, expected_indices=range(n))
    return out


@pytest.mark.parametrize("field", ["enhanced", "crop"])
def test_training_on_the_enhanced_hdf5_dataset(tmp_path, field):
    data = write_separable_enhanced(tmp_path / "enh")
    src = open_source(data, field=field)
    assert src.kind == "enhanced" and src.class_names == ("NORMAL", "PNEUMONIA") and len(src) == 32
    result = fit(tiny_spec(data, tmp_path / "run", epochs=2, field=field))
    assert result.history[-1]["n_train"] + result.history[-1]["n_val"] == 32
    ck = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ck.meta["data"]["kind"] == "enhanced" and ck.meta["data"]["field"] == field


def test_bad_field_and_missing_data_are_clear_errors(tmp_path):
    data = write_separable_enhanced(tmp_path / "enh")
    cli = CliRunner().invoke(
        main, ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--set", "field=heatmap"]
    )
    assert cli.exit_code == 2 and "field" in cli.output and "enhanced, crop, image" in cli.output
    cli = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert cli.exit_code == 2 and "no such dataset" in cli.output


def test_stratified_split_is_seeded_and_stratified():
    labels = np.array([0] * 30 + [1] * 70)
    tr, va = stratified_split(labels, 0.2, seed=3)
    assert sorted(tr + va) == list(range(100)) and not set(tr) & set(va)
    assert (labels[va] == 0).sum() == 6 and (labels[va] == 1).sum() == 14
    assert stratified_split(labels, 0.2, seed=3) == (tr, va)
    assert stratified_split(labels, 0.2, seed=4) != (tr, va)
    _, va = stratified_split(np.array([0, 0, 1, 1]), 0.1, 0)
    assert len(va) == 2  # at least one per class


def test_a_split_by_patient_keeps_each_patient_on_one_side():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(60), rng.integers(1, 6, 60))  # 60 patients with 1-5 images each
    labels = rng.integers(0, 3, len(patients))
    groups = np.array([f"p{p:03d}" for p in patients])
    tr, va = stratified_split(labels, 0.2, seed=1, groups=groups)
    assert sorted(tr + va) == list(range(len(labels))) and not set(tr) & set(va)
    assert not set(groups[tr]) & set(groups[va])  # no patient on both sides
    assert 0.15 <= len(va) / len(labels) <= 0.3
    assert set(labels[va]) == {0, 1, 2}
    assert stratified_split(labels, 0.2, seed=1, groups=groups) == (tr, va)
    assert stratified_split(labels, 0.2, seed=2, groups=groups) != (tr, va)
    # one patient per class: never all of a class in validation, as per image
    _, va = stratified_split(np.array([0, 0, 1, 1]), 0.5, 0, groups=np.array(["a", "a", "b", "c"]))
    assert va in ([2], [3])


def test_augmentations_shapes_and_eval_transform_is_resize_only():
    pre = Preprocessing(size=(SIZE, SIZE))
    x = torch.randint(0, 256, (1, 50, 60), dtype=torch.uint8)
    torch.manual_seed(0)
    y = train_transform(pre)(x)
    assert y.shape == (1, SIZE, SIZE) and y.dtype == torch.float32 and torch.isfinite(y).all()
    flat = torch.full((1, SIZE, SIZE), 128, dtype=torch.uint8)
    z = eval_transform(pre)(flat)
    assert torch.allclose(z, torch.full_like(z, (128 / 255 - 0.485) / 0.229), atol=1e-6)
    rgb = eval_transform(Preprocessing(size=(SIZE, SIZE), in_chans=3, mean=(0.5,) * 3, std=(0.5,) * 3))(flat)
    assert rgb.shape == (3, SIZE, SIZE)


def test_train_spec_from_a_job_file_with_precedence(tmp_path):
    job = tmp_path / "train.toml"
    job.write_text('[train]\ndata = "d"\nout = "o"\nepochs = 7\nunfreeze = ["head", "layer4[2]"]\nlr = 2e-4\n')
    spec = load_spec(TrainSpec, job, table="train", overrides={"epochs": 3}, environ={"ENHANCER_LR": "5e-4"})
    assert (spec.epochs, spec.lr, spec.unfreeze) == (3, 5e-4, ("head", "layer4[2]"))
    with pytest.raises(SpecError, match="unknown key"):
        load_spec(TrainSpec, overrides={"data": "d", "out": "o", "epoch": 3})
    with pytest.raises(SpecError, match="unfreeze_every"):
        load_spec(TrainSpec, overrides={"data": "d", "out": "o", "unfreeze_schedule": "layer4[2]"})


def test_resume_flags(folder, tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        fit(tiny_spec(folder, tmp_path / "run", resume=True))
    fit(tiny_spec(folder, tmp_path / "run", epochs=1))
    with pytest.raises(SpecError, match="already holds a run"):
        fit(tiny_spec(folder, tmp_path / "run", resume=False))
    assert dataclasses.replace(tiny_spec(folder, tmp_path), resume=None).resume is None


def test_seed_resnet101_checkpoint_fine_tunes_with_the_seed_trainable_groups(folder, tmp_path):
    from tests.seed_reference import NotebookResNet

    torch.manual_seed(0)
    seed_file = tmp_path / "ResNet-101_GradCAM_Cropped_v4.pth"
    save_seed_checkpoint(NotebookResNet(101), seed_file)
    # Small inputs keep this quick; ResNets take any input size (layer4 is 2x2 at 64).
    result = fit(
        tiny_spec(folder, tmp_path / "ft", epochs=1, init=str(seed_file), arch=None, input_size=64, batch_size=10)
    )
    h = result.history[0]
    assert h["trainable"] == "head+fc+layer4"  # the seed's choice for its best model
    assert 14_000_000 < h["trainable_params"] < 17_500_000  # layer4 (~15M) + fc (2M) + head (220k)
    ck = load_checkpoint(tmp_path / "ft" / "best.pt")
    assert ck.config.arch == "resnet101" and ck.config.head == "220k" and ck.preprocessing.size == (64, 64)
    before = read_checkpoint_file(seed_file)["model_state_dict"]
    after = ck.model.state_dict()
    for frozen in ("conv1.weight", "resnet.layer1.0.conv1.weight", "resnet.layer3.22.conv3.weight"):
        assert torch.equal(after[frozen], before[frozen]), frozen
    for trained in ("resnet.layer4.2.conv3.weight", "resnet.fc.weight", "dense_neural_network.8.weight"):
        assert not torch.equal(after[trained], before[trained]), trained


@pytest.mark.gpu
def test_the_training_loader_pins_its_batches(folder):
    source = open_source(folder, split="train")
    ds = source.dataset(eval_transform(Preprocessing(size=(SIZE, SIZE))), size=(SIZE, SIZE))
    batch = next(iter(_loader(ds, batch_size=8, num_workers=0, seed=0, device="cuda")))
    assert type(batch).__name__ == "ItemBatch" and len(batch) == 8
    assert batch.images.is_pinned() and batch.labels.is_pinned() and batch.indices.is_pinned()


def test_validation_waits_for_the_device_once_not_per_batch(folder):
    from tests.test_host_syncs import CountOps

    model = build_model("tinyvgg", input_size=SIZE, init="random").eval()
    ds = open_source(folder, split="train").dataset(eval_transform(Preprocessing(size=(SIZE, SIZE))), size=(SIZE, SIZE))
    syncs, results = {}, {}
    for batch_size in (20, 4):  # 2 batches, then 10
        loader = _loader(ds, batch_size=batch_size, num_workers=0, seed=0, device="cpu")
        with CountOps() as ops:
            results[batch_size], _ = evaluate(model, loader, device="cpu")
        syncs[batch_size] = ops.syncs
    assert syncs[20] == syncs[4]  # the same few reads after the loop, whatever the number of batches
    assert results[20]["n"] == results[4]["n"] == 40
    assert results[20]["loss"] == pytest.approx(results[4]["loss"], rel=1e-5)
