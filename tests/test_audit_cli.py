"""``enhancer audit`` end to end on the 16 real sample X-rays: an enhanced dataset made by a demonstration TinyVGG
(at a 64-pixel input to stay quick), lesion masks or boxes, a second checkpoint; audit.json keys, audit.md, PNGs,
reproducibility with the seed, and the errors (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from enhancer.cli import main
from tests.tools.audit_keys import CONFIDENCE_KEYS, INTERVAL_KEYS, ROAD_KEYS, VERDICT_KEYS

SIZE = 64


def _checkpoint(path: Path, seed: int) -> str:
    from enhancer.models.checkpoints import save_checkpoint
    from enhancer.models.demo import build_demo_model
    from enhancer.models.zoo import preprocessing_for

    model = build_demo_model("tinyvgg", input_size=SIZE, seed=seed)
    save_checkpoint(str(path), model, preprocessing=preprocessing_for("tinyvgg", SIZE), meta={"demo": True})
    return str(path)


def _invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def case(tmp_path_factory, kermany_dir):
    root = tmp_path_factory.mktemp("audit")
    ck, other = _checkpoint(root / "a.pt", 0), _checkpoint(root / "b.pt", 1)
    common = ["--checkpoint", ck, "--device", "cpu", "--loader", "torch", "--num-threads", "0", "--no-progress"]
    for name, fields in (("enhanced", "image,cam,heatmap"), ("cam-only", "cam")):
        made = _invoke(["enhance", "--data", kermany_dir, "--out", root / name, "--fields", fields, *common])
        assert made.exit_code == 0, made.output
        assert _invoke(["merge", root / name]).exit_code == 0
    masks = root / "masks"
    masks.mkdir()
    pneumonia = sorted((kermany_dir / "PNEUMONIA").iterdir())
    for f in pneumonia:  # a lesion in the right lung's area of every PNEUMONIA image, of the image's own size
        w, h = Image.open(f).size
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : 3 * h // 4, w // 8 : w // 2] = 255
        Image.fromarray(mask).save(masks / f"{f.stem}.png")
    boxes = root / "boxes.csv"
    rows = ["path,x0,y0,x1,y1"] + [f"{f},{10},{10},{200},{300}" for f in pneumonia]
    boxes.write_text("\n".join(rows) + "\n")
    return {"root": root, "ck": ck, "other": other, "masks": masks, "boxes": boxes}


def _audit(case, out: Path, *extra) -> dict:
    args = ["audit", case["root"] / "enhanced", "--checkpoint", case["ck"], "--out", out, "--device", "cpu"]
    result = _invoke([*args, "--samples", "10", "--no-progress", "--set", "steps=4", "--set", "resamples=200", *extra])
    assert result.exit_code == 0, result.output
    assert "| check | figure | value | 95% CI | baseline | verdict |" in result.output
    return json.loads((out / "audit.json").read_text())


def test_audit_writes_every_check_with_the_documented_keys(case):
    out = case["root"] / "audit-masks"
    doc = _audit(case, out, "--masks", case["masks"], "--second-checkpoint", case["other"])
    assert doc["verdict"] in ("pass", "fail") and doc["samples"] == 10 and len(doc["indices"]) == 10
    r = doc["randomisation"]
    assert [s["name"] for s in r["stages"]] == ["dense_neural_network", "feature_extractor"]
    assert all(-1 <= s["ssim"] <= 1 and len(s["ssim_ci"]) == 2 for s in r["stages"])
    assert r["baseline_ssim_hi"] == r["baseline_ssim_ci"][1] and r["verdict"] == r["stages"][-1]["verdict"]
    assert all(s["baseline_ssim_hi"] == r["baseline_ssim_hi"] for s in r["stages"])
    assert all(s["verdict"] == ("pass" if s["ssim"] <= r["baseline_ssim_hi"] else "fail") for s in r["stages"])
    for kind in ("deletion", "insertion"):
        assert 0 <= doc[kind]["auc"] <= 1 and len(doc[kind]["curve"]) == 5 and doc[kind]["baseline"] == "blur"
    assert ROAD_KEYS <= set(doc["road"])
    assert CONFIDENCE_KEYS <= set(doc["confidence"])
    assert doc["repeatability"]["verdict"] in ("pass", "fail") and -1 <= doc["repeatability"]["ssim"] <= 1
    loc = doc["localisation"]
    assert loc["source"] == "masks" and loc["files"] == 8
    for key in ("miou", "hit_rate", "energy"):
        assert set(loc[key]) == INTERVAL_KEYS and loc[key]["n"] == loc["n"]
    assert loc["n"] == loc["by_class"]["PNEUMONIA"]["n"] > 0 and loc["by_class"]["NORMAL"]["n"] == 0
    assert set(doc["verdicts"]) == VERDICT_KEYS
    assert doc["figures"] == [
        "randomisation-01-dense_neural_network.png",
        "randomisation-02-feature_extractor.png",
        "deletion-insertion.png",
        "worst-localised.png",
    ]
    assert all((out / f).stat().st_size > 1000 for f in doc["figures"])
    md = (out / "audit.md").read_text()
    assert f"**Verdict: {doc['verdict'].upper()}**" in md and "| localisation | hit rate, all" in md
    # one map per image: none of the keys of a dataset of maps per class (tests/test_audit_per_class.py)
    assert not {"classes", "classes_not_audited", "activation", "score"} & set(doc) and "classes" not in doc["spec"]
    assert "## " not in md


def test_the_same_seed_gives_the_same_audit_and_boxes_localise_too(case):
    a = _audit(case, case["root"] / "boxes-1", "--boxes", case["boxes"], "--checks", "randomisation,localisation")
    b = _audit(case, case["root"] / "boxes-2", "--boxes", case["boxes"], "--checks", "randomisation,localisation")
    assert a["randomisation"] == b["randomisation"] and a["localisation"]["hit_rate"] == b["localisation"]["hit_rate"]
    assert a["localisation"]["source"] == "boxes" and "deletion" not in a
    c = _audit(case, case["root"] / "boxes-3", "--checks", "randomisation", "--seed", "1")
    assert c["indices"] != a["indices"]


def test_a_dataset_without_images_is_audited_from_the_original_files(case):
    out = case["root"] / "cam-only-audit"
    args = ["audit", case["root"] / "cam-only", "--checkpoint", case["ck"], "--out", out, "--device", "cpu"]
    result = _invoke([*args, "--samples", "4", "--checks", "randomisation", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "audit.json").read_text())["randomisation"]["n"] == 4


def test_errors_name_the_problem(case):
    base = ["audit", case["root"] / "enhanced", "--out", case["root"] / "bad", "--device", "cpu"]
    wrong = _invoke([*base, "--checkpoint", case["other"]])
    assert wrong.exit_code == 2 and "is not the checkpoint that made the maps" in wrong.output
    both = _invoke([*base, "--checkpoint", case["ck"], "--masks", case["masks"], "--boxes", case["boxes"]])
    assert both.exit_code == 2 and "either masks" in both.output
    nothing = _invoke([*base, "--checkpoint", case["ck"], "--masks", case["root"] / "no-such-folder"])
    assert nothing.exit_code == 2 and "no such mask folder" in nothing.output
    unknown = _invoke([*base, "--checkpoint", case["ck"], "--checks", "vibes"])
    assert unknown.exit_code == 2 and "randomisation" in unknown.output
    per_class = _invoke([*base, "--checkpoint", case["ck"], "--class", "PNEUMONIA"])
    assert per_class.exit_code == 2 and "one map per image, not one per class; drop --class" in per_class.output


def test_any_model_and_method_are_audited_with_the_jobs_own_maps(kermany_dir, tmp_path):
    """A user's builder (no zoo detection, no features/head halves: the forward hook) enhanced with gradcam++: the
    audit opens the model as the shards record it and recomputes exactly the stored maps (compute_cam, the same
    method and layer), so its randomisation compares like with like."""
    import torch

    from enhancer.audit.inputs import read_inputs
    from enhancer.audit.maps import compute_maps
    from enhancer.audit.run import dataset_map_fn, open_dataset_model
    from enhancer.models.demo import calibrate_batchnorm, scale_head_to_unit_logits, xray_like_batch
    from enhancer.store import Manifest
    from tests.tools.user_models import TinyNet

    torch.manual_seed(0)
    model = TinyNet(2)
    calibrate_batchnorm(model, [xray_like_batch(8, SIZE, seed=1)])
    scale_head_to_unit_logits(model, xray_like_batch(8, SIZE, seed=2))
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    name, out = "tests.tools.user_models:tiny_net", tmp_path / "enhanced"
    args = ["enhance", "--data", kermany_dir, "--out", out, "--checkpoint", tmp_path / "tiny.pt", "--model", name]
    args += ["--input-size", SIZE, "--method", "gradcam++", "--fields", "cam", "--loader", "torch", "--no-progress"]
    assert _invoke(args).exit_code == 0 and _invoke(["merge", out]).exit_code == 0
    ck, target = open_dataset_model(str(tmp_path / "tiny.pt"), Manifest.load(out))
    assert (ck.config.arch, target.name, target.split, ck.preprocessing.size) == (name, "body", None, (SIZE, SIZE))
    inputs = read_inputs(out, ck.preprocessing, device="cpu")  # no image field: the original files, as the job read
    assert inputs.cam.method == "gradcam++"
    map_fn = dataset_map_fn(inputs.cam, ck, target)
    again = compute_maps(map_fn, ck.model.eval(), inputs.x, inputs.target)
    assert (inputs.maps.flatten(1).amax(1) == 1).sum() >= 8, "trivial maps"
    torch.testing.assert_close(again, inputs.maps, rtol=0, atol=1e-5)
    audit = ["audit", out, "--checkpoint", tmp_path / "tiny.pt", "--out", tmp_path / "audit", "--device", "cpu"]
    result = _invoke([*audit, "--samples", "6", "--checks", "randomisation", "--no-progress"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert doc["maps"] == "gradcam++_maps" and doc["gradcam"]["method"] == "gradcam++"
