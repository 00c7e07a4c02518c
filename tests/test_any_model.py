"""Any classifier through the product: checkpoints of torchvision, timm and users' models load with --model (exact
logits, one-message key mismatches), `enhancer inspect` shows and lists target layers, and `enhancer enhance
--model tv:densenet121 ... --method gradcam++` writes a dataset that merges and verifies, with the maps of compute_cam
and of pytorch-grad-cam; any spatial layer enhances, others are refused before any work."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from enhancer.cli import main
from enhancer.data import make_loader, scan
from enhancer.explain.cam import normalize_maps, prefers_channels_last, upsample
from enhancer.explain.compute import compute_cam
from enhancer.explain.folding import FoldedTrunk
from enhancer.models.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from enhancer.models.demo import calibrate_batchnorm, scale_head_to_unit_logits, xray_like_batch
from enhancer.models.registry import SplitView, build, family_of
from enhancer.models.zoo import ModelConfig
from enhancer.preprocessing import RGB_PREPROCESSING, SEED_PREPROCESSING, Preprocessing
from enhancer.settings import CamSettings
from tests.tools.missing import require_module
from tests.tools.user_models import TinyNet

SIZE = 128  # densenet121 input in the job tests: a 4x4 map at features.norm5, a quarter of the 224 cost
DENSENET = ["--model", "tv:densenet121", "--num-classes", "2"]


@pytest.fixture(scope="module")
def densenet(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A torchvision densenet121 with 2 classes (random weights, BatchNorm calibrated on X-ray-like images so that
    its maps are not trivial) and its state_dict file."""
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=2)
    calibrate_batchnorm(model, [xray_like_batch(8, SIZE, in_chans=3, seed=1)])
    scale_head_to_unit_logits(model, xray_like_batch(8, SIZE, in_chans=3, seed=2))
    path = tmp_path_factory.mktemp("densenet") / "densenet121_state_dict.pt"
    torch.save(model.state_dict(), path)
    return model, path


def _x(chans: int = 3, size: int = 64) -> torch.Tensor:
    return torch.randn(2, chans, size, size, generator=torch.Generator().manual_seed(3))


def test_a_torchvision_state_dict_loads_and_reproduces_the_logits(densenet, tmp_path):
    reference, path = densenet
    ck = load_checkpoint(path, model="tv:densenet121", num_classes=2)
    assert (ck.config.arch, ck.config.num_classes, ck.source_format) == ("tv:densenet121", 2, "state_dict")
    assert ck.preprocessing == RGB_PREPROCESSING and not ck.model.training
    with torch.no_grad():
        assert torch.equal(ck.model(_x()), reference(_x()))
    wrapped = tmp_path / "ddp.pt"  # DataParallel / DDP prefixes, in the seed's dict layout
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, wrapped)
    ck = load_checkpoint(wrapped, model="tv:densenet121")  # the class count read from the weights
    assert ck.config.num_classes == 2 and ck.source_format == "seed"
    with torch.no_grad():
        assert torch.equal(ck.model(_x()), reference(_x()))


def test_key_mismatches_come_in_one_message(densenet, tmp_path):
    reference, path = densenet
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, model="tv:densenet121", num_classes=3)
    message = str(err.value)
    assert message.startswith(f"{path}: does not fit tv:densenet121 with 3 classes (no missing keys; no unexpected")
    assert "2 keys of another shape: classifier.bias checkpoint (2,) vs model (3,), classifier.weight checkpoint " in (
        message
    )
    assert "Check --model and --num-classes" in message and "\n" not in message
    state = dict(reference.state_dict())
    del state["features.norm5.weight"]
    state["features.norm6.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"1 missing keys: features.norm5.weight; 1 unexpected keys: features."):
        load_checkpoint(tmp_path / "odd.pt", model="tv:densenet121")
    with pytest.raises(CheckpointError, match=r"does not fit tv:efficientnet_b0 .*\d+ missing keys: .* and \d+ more"):
        load_checkpoint(path, model="tv:efficientnet_b0")
    with pytest.raises(CheckpointError, match=r"--arch resnet50 and --model tv:densenet121 disagree"):
        load_checkpoint(path, model="tv:densenet121", arch="resnet50")


def test_a_users_builder_loads_and_roundtrips_through_our_format(tmp_path):
    torch.manual_seed(0)
    reference = TinyNet(3).eval()
    torch.save(reference.state_dict(), tmp_path / "tiny.pt")
    name = "tests.tools.user_models:tiny_net"
    ck = load_checkpoint(tmp_path / "tiny.pt", model=name)
    assert ck.config.num_classes == 3 and ck.preprocessing == SEED_PREPROCESSING  # a 1-channel stem
    with torch.no_grad():
        assert torch.equal(ck.model(_x(1)), reference(_x(1)))
    save_checkpoint(tmp_path / "ours.pt", ck.model, preprocessing=ck.preprocessing, meta={"epoch": 1})
    again = load_checkpoint(tmp_path / "ours.pt")  # the model name comes from the header
    assert (again.config.arch, again.config.num_classes, again.meta) == (name, 3, {"epoch": 1})
    with torch.no_grad():
        assert torch.equal(again.model(_x(1)), reference(_x(1)))


def test_timm_checkpoints_load_with_their_class_and_channel_counts(tmp_path):
    timm = require_module("timm", install="timm==1.0.31")
    torch.manual_seed(0)
    reference = timm.create_model("test_efficientnet", pretrained=False, num_classes=3, in_chans=1).eval()
    torch.save(reference.state_dict(), tmp_path / "timm.pt")
    ck = load_checkpoint(tmp_path / "timm.pt", model="timm:test_efficientnet")
    assert ck.config.num_classes == 3
    assert (ck.preprocessing.size, ck.preprocessing.in_chans, ck.preprocessing.mean) == ((160, 160), 1, (0.485,))
    with torch.no_grad():
        assert torch.equal(ck.model(_x(1)), reference(_x(1)))


def test_inspect_shows_the_model_and_lists_its_layers(densenet):
    _, path = densenet
    result = CliRunner().invoke(main, ["inspect", str(path), *DENSENET, "--layers", "--depth", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["architecture"], report["family"], report["head_layer"]) == (
        "tv:densenet121",
        "densenet",
        "classifier",
    )
    assert (report["target_layer"], report["target_shape"]) == ("features.norm5", [1, 1024, 7, 7])
    assert report["target_is_default"] and report["head_only_split"]
    assert report["input"] == RGB_PREPROCESSING.to_dict()
    assert report["parameters"]["head"] == 1024 * 2 + 2
    layers = {row["name"]: row for row in report["layers"]}
    assert layers["features.denseblock4"]["shape"] == [1, 1024, 7, 7] and layers["features.conv0"]["type"] == "Conv2d"
    assert layers["features.norm5"]["target"] and "classifier" not in layers and "features.pool0" in layers
    assert all(name.count(".") <= 1 for name in layers)
    text = CliRunner().invoke(main, ["inspect", str(path), *DENSENET, "--input-size", "64", "--layers"]).output
    assert "target layer   features.norm5 -> (1, 1024, 2, 2)  (default; head-only split)" in text
    assert "* features.norm5" in text and "input          3ch 64x64" in text


def test_wrong_layers_exit_2_with_the_nearest_names(densenet):
    _, path = densenet
    for layer, expected in (
        ("features.norm6", "nearest: features.norm5"),
        ("classifier", "outputs shape (1, 2), not a spatial map (N, C, h, w)"),
    ):
        result = CliRunner().invoke(main, ["inspect", str(path), *DENSENET, "--target-layer", layer])
        assert result.exit_code == 2, result.output
        assert expected in result.output and result.output.count("\n") == 1, result.output


PGC_CONVENTION = ["--set", "cam.score=logit", "--set", "cam.channel_reduce=sum", "--set", "cam.normalize=minmax"]


def _enhance(path: Path, data: Path, out: Path, *extra: str) -> None:
    """``enhancer enhance`` of the densenet checkpoint, then ``merge`` and ``verify``; each must succeed."""
    args = ["enhance", "--data", str(data), "--checkpoint", str(path), "--out", str(out), *DENSENET, *extra]
    result = CliRunner().invoke(main, [*args, "--loader", "torch", "--batch-size", "8", "--no-progress"])
    assert result.exit_code == 0, result.output
    for command in (["merge", str(out)], ["verify", str(out)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 0, result.output


def _as_the_job(model: torch.nn.Module, settings: CamSettings) -> tuple[torch.nn.Module, CamSettings]:
    """The model and settings as the enhance job runs them on this CPU: the trunk in channels_last where that is
    faster (``prefers_channels_last``), whose kernels round differently from NCHW's."""
    if not prefers_channels_last("cpu"):
        return model, settings
    return model.to(memory_format=torch.channels_last), dataclasses.replace(settings, channels_last=True)


def _stored(out: Path, data: Path) -> tuple[dict, dict[str, np.ndarray], torch.Tensor]:
    """(shard attributes, its cam / heatmap / index, the model input of those samples in stored order): the input
    through the same loader and the preprocessing the shard records."""
    [shard] = sorted(out.glob("shard-*.h5"))
    with h5py.File(shard, "r") as f:
        attrs = dict(f.attrs)
        fields = {name: f[name][:] for name in ("cam", "heatmap", "index", "image") if name in f}
    samples = list(scan(str(data)).samples)
    preprocessing = Preprocessing.from_dict(json.loads(attrs["preprocessing"]))
    [batch] = list(make_loader(samples, preprocessing, batch_size=16, loader="torch", device="cpu", num_threads=0))
    row_of = {int(i): row for row, i in enumerate(batch.index)}
    return attrs, fields, batch.image[[row_of[int(i)] for i in fields["index"]]]


def _pytorch_grad_cam_form(raw: torch.Tensor, size: int) -> torch.Tensor:
    """A raw map (N, h, w) as pytorch-grad-cam returns maps: min-max, bilinear to the input, min-max again."""
    up = upsample(normalize_maps(raw, "minmax")[0], (size, size)).to(raw.dtype)
    low, high = up.flatten(1).amin(1)[:, None, None], up.flatten(1).amax(1)[:, None, None]
    return (up - low) / (high - low + 1e-7)


@pytest.mark.slow
def test_enhance_any_model_any_method_writes_a_dataset_that_verifies(densenet, kermany_dir, tmp_path):
    """``enhancer enhance --model tv:densenet121 --checkpoint densenet121_state_dict.pt --num-classes 2
    --target-layer features.norm5 --method gradcam++`` on the 16 sample X-rays writes a dataset that merges and
    verifies; its stored maps and heatmaps equal ``compute_cam`` on the same inputs (at the same layer through the
    forward hook, where the job took the registry's features/head halves of the DenseNet family), which equals
    pytorch-grad-cam 1.5.7's GradCAMPlusPlus there.

    The point explained is the output of ``features.norm5`` itself, before the ReLU that torchvision's
    ``DenseNet.forward`` applies to it in place (``F.relu(features, inplace=True)``): the job's hook hands the rest of
    the network a copy, the family's head applies that ReLU to its input, and pytorch-grad-cam gets
    ``reshape_transform=torch.clone`` so that, on the CPU, the in-place ReLU cannot overwrite the activations it keeps
    (its gradient hook, registered before that ReLU, already sees the gradient w.r.t. the pre-ReLU output)."""
    pgc = require_module("pytorch_grad_cam", install="grad-cam==1.5.7")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    reference, path = densenet
    out = tmp_path / "enhanced"
    _enhance(
        path,
        kermany_dir,
        out,
        "--target-layer",
        "features.norm5",
        "--method",
        "gradcam++",
        "--input-size",
        str(SIZE),
        *PGC_CONVENTION,
    )
    attrs, stored, x = _stored(out, kermany_dir)
    assert stored["image"].shape == (16, 1, SIZE, SIZE) and stored["cam"].shape == (16, 4, 4)
    identity = json.loads(attrs["identity"])
    assert identity["model"] == {"name": "tv:densenet121", "num_classes": 2, "target_layer": "features.norm5"}
    assert identity["cam"]["method"] == "gradcam++" and attrs["cam_method"] == "gradcam++"
    rgb = {"in_chans": 3, "mean": list(RGB_PREPROCESSING.mean), "std": list(RGB_PREPROCESSING.std)}
    assert identity["preprocessing"] == {"size": [SIZE, SIZE], **rgb}
    assert attrs["architecture"] == "tv:densenet121" and attrs["target_layer"] == "features.norm5"
    assert json.loads(attrs["model"])["family"] == "densenet"
    card = (out / "README.md").read_text()
    assert "tv:densenet121" in card and "Maps: CAM method `gradcam++` at layer `features.norm5`" in card

    settings = CamSettings(method="gradcam++", score="logit", channel_reduce="sum", normalize="minmax")
    job_model, job_settings = _as_the_job(copy.deepcopy(reference).eval(), settings)
    # the job's closed form at the family's default layer, its trunk with BatchNorm folded (FoldedTrunk)
    memory_format = torch.channels_last if job_settings.channels_last else torch.contiguous_format
    split = FoldedTrunk(SplitView(job_model, family_of("tv:densenet121")), memory_format=memory_format)
    direct = compute_cam(job_model, x, split=split, settings=job_settings)
    assert (~direct.empty).all() and (direct.cam.flatten(1).std(1) > 0.05).all(), "trivial maps"
    np.testing.assert_allclose(stored["cam"], direct.raw.numpy(), rtol=1e-4, atol=1e-6 * float(direct.raw.max()))
    heat = (upsample(direct.cam, (SIZE, SIZE)) * 255).round().clamp(0, 255).to(torch.uint8)
    assert np.abs(stored["heatmap"].astype(int) - heat.numpy().astype(int)).max() <= 1
    # the definition at the same point as pytorch-grad-cam, in float64: Grad-CAM++'s alphas divide by
    # 2 G^2 + sum(A) G^3, and at a BatchNorm output (norm5, before the ReLU) sum(A) can nearly cancel that, so float32
    # summation order alone moves both libraries' maps by ~1e-3 from the float64 ones (measured: ours 1.4e-3,
    # pytorch-grad-cam's 2.0e-3 on image 2); in float64 the two agree to ~2e-7
    model64, x64 = copy.deepcopy(reference).double().eval(), x.double()
    ours = compute_cam(model64, x64, layer=model64.features.norm5, settings=settings)
    assert torch.equal(ours.target, direct.target)
    targets = [ClassifierOutputTarget(int(c)) for c in ours.target]
    with pgc.GradCAMPlusPlus(model64, [model64.features.norm5], reshape_transform=torch.clone) as theirs:
        expected = torch.from_numpy(theirs(input_tensor=x64, targets=targets))
    torch.testing.assert_close(_pytorch_grad_cam_form(ours.raw, SIZE), expected, rtol=0, atol=1e-4)


def test_enhance_explains_a_layer_without_a_known_split(densenet, kermany_dir, tmp_path):
    """A layer the registry has no features/head halves for (not the family's default) enhances too, through the
    forward hook, and the stored maps are compute_cam's at that layer."""
    reference, path = densenet
    out = tmp_path / "block4"
    _enhance(path, kermany_dir, out, "--input-size", "64", "--target-layer", "features.denseblock4", "--fields", "cam")
    attrs, stored, x = _stored(out, kermany_dir)
    assert json.loads(attrs["model"])["target_layer"] == "features.denseblock4" and stored["cam"].shape == (16, 2, 2)
    job_model, job_settings = _as_the_job(copy.deepcopy(reference).eval(), CamSettings())
    direct = compute_cam(job_model, x, layer=job_model.features.denseblock4, settings=job_settings)
    assert (~direct.empty).sum() >= 8, "trivial maps"
    np.testing.assert_allclose(stored["cam"], direct.raw.numpy(), rtol=1e-4, atol=1e-6 * float(direct.raw.max()))


def test_enhance_refuses_bad_layers_before_any_work(densenet, kermany_dir, tmp_path):
    _, path = densenet
    base = ["enhance", "--data", str(kermany_dir), "--checkpoint", str(path), "--out", str(tmp_path / "x"), *DENSENET]
    for layer, expected in (
        ("features.denseblok4", "nearest: features.denseblock4"),
        ("classifier", "'classifier' (Linear) of tv:densenet121 outputs shape (1, 2), not a spatial map (N, C, h, w)"),
    ):
        result = CliRunner().invoke(main, [*base, "--input-size", "64", "--target-layer", layer])
        assert result.exit_code == 2 and expected in result.output, result.output
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    # the command line claims the shard first (a second job is refused at once): the claim is gone, nothing written
    assert not list((tmp_path / "x").iterdir())


def test_build_gives_the_config_to_external_models():
    model = build(ModelConfig(arch="tests.tools.user_models:tiny_net", num_classes=4))
    assert model.config.num_classes == 4 and model.fc.out_features == 4


def test_evaluate_takes_any_model(kermany_dir, tmp_path):
    torch.manual_seed(0)
    torch.save(TinyNet(2).state_dict(), tmp_path / "tiny.pt")
    name = "tests.tools.user_models:tiny_net"
    args = ["evaluate", "--data", str(kermany_dir), "--checkpoint", str(tmp_path / "tiny.pt"), "--model", name]
    result = CliRunner().invoke(
        main, [*args, "--input-size", "64", "--json", str(tmp_path / "r.json"), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["architecture"] == name and sum(map(sum, report["metrics"]["confusion_matrix"])) == 16
    result = CliRunner().invoke(main, [*args, "--mean", "0.1,0.2"])
    assert result.exit_code == 2 and "--mean 0.1,0.2 needs 1 value (one channel)" in result.output, result.output
