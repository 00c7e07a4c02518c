"""Checkpoint import/export: the seed's exact format, bare state_dicts, our format, detection, refusals."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

from enhancer.models.checkpoints import CheckpointError, detect_config, load_checkpoint, save_checkpoint
from enhancer.models.zoo import ZOO, build_model
from enhancer.preprocessing import SEED_PREPROCESSING
from tests.seed_reference import NotebookResNet, NotebookTinyVGG, NotebookVGG16, save_seed_checkpoint


@pytest.fixture(scope="module")
def seed_resnet101(tmp_path_factory):
    torch.manual_seed(0)
    model = NotebookResNet(101).eval()
    path = tmp_path_factory.mktemp("seed") / "ResNet-101_GradCAM_Cropped_v4.pth"
    save_seed_checkpoint(model, path)
    return model, path


def test_seed_resnet101_checkpoint_loads_strictly_and_reproduces_logits_bit_for_bit(seed_resnet101):
    reference, path = seed_resnet101
    ck = load_checkpoint(path)
    assert (ck.config.arch, ck.config.head, ck.source_format) == ("resnet101", "220k", "seed")
    assert ck.meta == {
        "test_loss": pytest.approx(0.2641),
        "test_acc": 91.56,
        "epoch": 12,
        "desc": "ResNet-101 220k head, layer4 unfrozen, centre-cropped training",
    }
    assert ck.preprocessing == SEED_PREPROCESSING and ck.class_names == ("NORMAL", "PNEUMONIA")
    assert "optimizer_state_dict" in ck.raw and not ck.model.training
    x = torch.randn(3, 1, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ck.model(x), reference(x))
    assert set(ck.model.state_dict()) == set(reference.state_dict())


@pytest.mark.parametrize(
    ("factory", "arch"),
    [
        (lambda: NotebookVGG16(), "vgg16"),
        (lambda: NotebookTinyVGG(inp_res=64), "tinyvgg"),
        (lambda: NotebookResNet(50, (10,), (0.2, 0.5)), "resnet50"),
        (lambda: NotebookResNet(152, (15,), (0.5, 0.5)), "resnet152"),
    ],
)
def test_other_seed_models_load_and_match(tmp_path, factory, arch):
    torch.manual_seed(0)
    reference = factory().eval()
    save_seed_checkpoint(reference, tmp_path / "seed.pth")
    ck = load_checkpoint(tmp_path / "seed.pth")
    assert ck.config.arch == arch
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(ck.model(x), reference(x))


@pytest.mark.parametrize("arch", list(ZOO))
def test_architecture_detection_from_bare_state_dict(tmp_path, arch):
    model = build_model(arch, input_size=96 if arch == "tinyvgg" else 224)  # only TinyVGG's weights fix the size
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    ck = load_checkpoint(tmp_path / "bare.pt")
    assert ck.config == model.config
    assert ck.source_format == "state_dict"


@pytest.mark.parametrize(("arch", "head"), [("resnet101", "10k"), ("resnet50", "220k"), ("resnet152", "220k")])
def test_detection_tells_heads_apart(arch, head):
    assert detect_config(build_model(arch, head=head).state_dict()).head == head


def test_data_parallel_prefix_is_accepted(tmp_path):
    model = build_model("tinyvgg", input_size=32)
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "dp.pt")
    assert load_checkpoint(tmp_path / "dp.pt").config.arch == "tinyvgg"


def test_own_format_roundtrip_keeps_metadata(tmp_path):
    torch.manual_seed(3)
    model = build_model("resnet50", head="220k").eval()
    save_checkpoint(tmp_path / "ours.pt", model, preprocessing=SEED_PREPROCESSING, meta={"epoch": 4, "val_acc": 0.9})
    assert not (tmp_path / "ours.pt.tmp").exists()
    ck = load_checkpoint(tmp_path / "ours.pt")
    assert ck.source_format == "enhancer" and ck.config == model.config and ck.meta == {"epoch": 4, "val_acc": 0.9}
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(ck.model(x), model(x))


def test_a_zoo_model_takes_the_files_tensors_and_a_float16_file_loads_as_float32(tmp_path):
    torch.manual_seed(4)
    model = build_model("tinyvgg", input_size=32).eval()
    torch.save(model.state_dict(), tmp_path / "f32.pt")
    torch.save({k: v.half() for k, v in model.state_dict().items()}, tmp_path / "f16.pt")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, dtype in (("f32.pt", torch.float32), ("f16.pt", torch.float16)):
        loaded = load_checkpoint(tmp_path / name).model
        tensors = [*loaded.parameters(), *loaded.buffers()]
        assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)  # none left on meta
        assert [n for n, p in loaded.named_parameters() if p.requires_grad] == trainable
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, model.state_dict()[key].to(dtype).float()), key


class _RunsCode:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save(
        {"model_state_dict": build_model("tinyvgg", input_size=32).state_dict(), "payload": _RunsCode(str(marker))},
        path,
    )
    with pytest.raises(CheckpointError, match=r"refused, loading it would run pickled code") as err:
        load_checkpoint(path)
    assert "system" in str(err.value)
    assert not marker.exists()
    # The file really is malicious: an unsafe load in another process runs it.
    script = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, cwd=os.getcwd())
    assert marker.exists()


def test_unreadable_files_get_one_clear_sentence(tmp_path, seed_resnet101):
    _, good = seed_resnet101
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    pickled_list = tmp_path / "list.pth"
    pickled_list.write_bytes(pickle.dumps([1, 2, 3]))
    cases = {
        truncated: "truncated or not a checkpoint file",
        empty: "the file is empty",
        text: "not a",
        tmp_path / "missing.pth": "no such checkpoint file",
        tmp_path: "is a directory",
    }
    for path, expected in cases.items():
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        message = str(err.value)
        assert message.startswith(str(path)) and expected in message and "\n" not in message


def test_wrong_architecture_names_keys_and_closest_arch(seed_resnet101):
    _, path = seed_resnet101
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, arch="resnet50")
    message = str(err.value)
    assert "does not fit architecture resnet50" in message
    assert "unexpected keys: dense_neural_network.8.bias" in message  # the 220k head has a third Linear
    assert "resnet.layer3.10.bn1.bias" in message  # resnet101 has 23 layer3 blocks, resnet50 has 6
    assert "Closest architecture: resnet101" in message


def test_unknown_weights_name_the_closest_architecture(tmp_path):
    state = build_model("tv-resnet18").state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["fc.bias"]
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(
        CheckpointError,
        match=r"does not fit architecture tv-resnet18.*missing keys: fc.bias.*unexpected keys: "
        r"extra.weight.*Closest architecture: tv-resnet18",
    ):
        load_checkpoint(tmp_path / "odd.pt")


def test_weights_of_no_known_layout_say_so(tmp_path):
    torch.save({"encoder.weight": torch.zeros(4, 4), "decoder.weight": torch.zeros(4, 4)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt: weights match no architecture of the zoo.*Closest"):
        load_checkpoint(tmp_path / "other.pt")
