"""The enhance job's speed settings: ``--compile`` (the trunk compiled once, the short last batch padded, the same
maps), the batch size by device, and the start-up time reported with ``-v`` and in the summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from enhancer.data import make_loader, scan
from enhancer.enhance import default_batch_size, merge_enhanced, run_enhance
from enhancer.explain import cam
from enhancer.explain.compiled import CompiledTrunk
from enhancer.models.checkpoints import load_checkpoint
from enhancer.specs import EnhanceSpec
from enhancer.store import EnhancedDataset

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_compiled_trunk_compiles_once_and_gives_the_eager_maps(kermany_dir, demo_checkpoints) -> None:
    from torch._dynamo.utils import counters

    model = load_checkpoint(demo_checkpoints["tinyvgg"]).model.eval()
    found = scan(str(kermany_dir))
    pre = load_checkpoint(demo_checkpoints["tinyvgg"]).preprocessing
    batches = list(make_loader(list(found.samples), pre, batch_size=6, loader="torch", num_threads=0))
    assert [len(b) for b in batches] == [6, 6, 4]  # the last one short: padded to 6 in the compiled trunk
    compiled = CompiledTrunk(model, batch_size=6)
    torch._dynamo.reset()
    counters.clear()
    for batch in batches:
        ours, eager = cam.grad_cam(compiled, batch.image), cam.grad_cam(model, batch.image)
        assert ours.cam.shape == eager.cam.shape and (ours.pred == eager.pred).all()
        torch.testing.assert_close(ours.cam, eager.cam, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.probs, eager.probs, rtol=1e-4, atol=1e-6)
        assert float(ours.cam.amax()) > 0  # non-trivial maps
    assert counters["stats"]["unique_graphs"] == 1  # one compile for three batches, the short one included
    with pytest.raises(ValueError, match="a batch of 7 is larger than the compiled batch size 6"):
        compiled.features(torch.zeros(7, *batches[0].image.shape[1:]))


@pytest.mark.slow
def test_compile_option_writes_the_same_dataset(tmp_path, kermany_dir, demo_checkpoints) -> None:
    outputs = {}
    for compiled in (False, True):
        out = tmp_path / f"compile-{compiled}"
        spec = EnhanceSpec(
            data=str(kermany_dir),
            out=str(out),
            checkpoint=str(demo_checkpoints["tinyvgg"]),
            batch_size=6,
            compile=compiled,
            fields=("cam", "heatmap", "crop_box"),
        )
        assert run_enhance(spec, progress=False).n_written == 16
        merge_enhanced(out)
        ds = EnhancedDataset(out, fields=("index", "cam", "heatmap", "crop_box", "pred"))
        outputs[compiled] = {int(s["index"]): s for s in (ds[i] for i in range(len(ds)))}
    for i in range(16):
        eager, ours = outputs[False][i], outputs[True][i]
        np.testing.assert_allclose(ours["cam"], eager["cam"], rtol=1e-4, atol=1e-6)
        assert np.abs(np.asarray(ours["heatmap"], int) - np.asarray(eager["heatmap"], int)).max() <= 1
        assert int(ours["pred"]) == int(eager["pred"])


def test_batch_size_by_device() -> None:
    assert default_batch_size("cpu") == 16  # 16 sample X-rays: one batch; 64 files: 4 batches that overlap
    assert default_batch_size("cuda") == default_batch_size("cuda:1") == 256


def test_start_up_is_logged_with_v_and_in_the_summary(tmp_path, kermany_dir, demo_checkpoints) -> None:
    args = ["-v", "enhance", "--data", str(kermany_dir), "--checkpoint", str(demo_checkpoints["tinyvgg"])]
    proc = subprocess.run(
        [sys.executable, "-m", "enhancer.cli", *args, "--out", str(tmp_path / "out"), "--batch-size", "4"]
        + ["--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [logged] = [line for line in proc.stderr.splitlines() if "first batch loaded" in line]
    startup = float(logged.split("first batch loaded ")[1].split(" s after the start")[0])
    assert 0 < startup < 120
    summary = proc.stdout.strip().splitlines()[-1]
    assert "16 written, 0 rejected of 16" in summary
    assert abs(float(summary.split("start-up ")[1].split(" s;")[0]) - startup) <= 0.06  # the same time, rounded
