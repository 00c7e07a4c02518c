"""The enhance job's per-batch path never waits for the device: no ``.item()``, ``.tolist()``, ``bool(tensor)`` or
``torch.equal`` on a tensor between a loaded batch and the writer's queue, counted at the dispatcher (on the CPU the
same code runs, so the same calls would show), and the loop hands batches to the writer one batch late."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from enhancer.data import make_loader, scan
from enhancer.data.host_copy import copy_to_host
from enhancer.data.prefetch import Prefetcher
from enhancer.enhance.batch_loop import batch_preparer, process_batch, storable_path, write_batches
from enhancer.enhance.inputs import load_boxes, load_lungs
from enhancer.enhance.job_settings import load_model, output_settings
from enhancer.explain.cam import CamSettings
from enhancer.specs import EnhanceSpec
from enhancer.store import AsyncShardWriter, EnhancedDataset, merge, per_sample_shapes
from tests.test_localisation import box_csv, lung_checkpoint  # noqa: F401  (module fixtures)

# What a host synchronisation looks like at the dispatcher: Tensor.item / tolist / bool(tensor) / int(tensor) all end
# in _local_scalar_dense; torch.equal and is_nonzero return host values too.
SYNC_OPS = ("aten::_local_scalar_dense", "aten::item", "aten::equal", "aten::is_nonzero")


class CountOps(TorchDispatchMode):
    """Counts every aten op dispatched on this thread while active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func._schema.name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def syncs(self) -> dict[str, int]:
        return {name: self.calls[name] for name in SYNC_OPS if self.calls[name]}


def test_the_counter_sees_a_host_sync() -> None:
    with CountOps() as ops:
        x = torch.arange(4.0)
        _ = x.sum().item(), bool(x.any()), x.tolist(), torch.equal(x, x)
    assert ops.syncs["aten::_local_scalar_dense"] >= 2 and ops.syncs["aten::equal"] == 1


def test_per_batch_path_has_no_host_sync(
    tmp_path,
    kermany_dir,
    demo_checkpoints,
    lung_checkpoint,  # noqa: F811  (the fixture imported above)
    box_csv,  # noqa: F811
) -> None:
    spec = EnhanceSpec(
        data=str(kermany_dir),
        out=str(tmp_path / "out"),
        checkpoint=str(demo_checkpoints["tinyvgg"]),
        batch_size=5,  # 16 images: 4 batches, the last one partial
        device="cpu",
        loader="torch",
        num_threads=0,
        lung_model=str(lung_checkpoint),
        lung_mask_in_enhanced=True,
        boxes=str(box_csv),
        cam=CamSettings(target="label"),  # the labels' range check included (target "predicted" skips it)
    )
    ck, target_layer = load_model(spec)
    settings = output_settings(spec, ck, "cpu")
    model, lungs, boxes = ck.model.eval(), load_lungs(spec), load_boxes(spec)
    samples = list(scan(spec.data).samples)
    loader = make_loader(samples, ck.preprocessing, batch_size=spec.batch_size, loader="torch", num_threads=0)
    h, w = target_layer.shape[-2:]
    shapes = per_sample_shapes(settings.fields, H=224, W=224, h=h, w=w, Hc=224, Wc=224, C=2)
    paths = {s.index: storable_path(s.path) for s in samples}
    sources = {s.index: s.path for s in samples}
    writer = AsyncShardWriter(
        spec.out, 0, 1, copy=False, shapes=shapes, fields=settings.fields, attrs={}, expected=16, overwrite=True
    )
    sizes: list[int] = []
    with writer, Prefetcher(loader, prepare=batch_preparer(paths, sources, boxes)) as batches, CountOps() as ops:
        stats = write_batches(
            batches,
            lambda b, extra: process_batch(model, b, extra, settings, lungs=lungs, target=target_layer),
            writer,
            sizes.append,
        )
    assert (stats.batches, sizes) == (4, [5, 5, 5, 1]) and stats.device_s == 0.0  # no CUDA events on the CPU
    assert ops.calls["aten::convolution"] >= 4 * 4  # the mode saw the model run: tinyvgg's 4 convolutions per batch
    assert {"lung_mask", "box_iou", "crop", "enhanced"} <= set(settings.fields)
    assert ops.syncs == {}, f"host synchronisations in the per-batch path: {ops.syncs}"

    merge(spec.out)
    ds = EnhancedDataset(spec.out, fields=("index", "path", "label", "heatmap", "box_iou", "lung_mask"))
    assert len(ds) == 16 and sorted(int(ds[i]["index"]) for i in range(16)) == list(range(16))
    assert {Path(ds[i]["path"]).name for i in range(16)} == {Path(s.path).name for s in samples}
    assert sum(int(np.asarray(ds[i]["heatmap"]).max()) > 0 for i in range(16)) >= 8  # non-trivial maps


def test_host_copy_on_the_cpu_is_the_results_themselves() -> None:
    t = {"a": torch.arange(6).view(2, 3), "b": torch.ones(3, 2).t()}  # b: not contiguous
    pending = copy_to_host(t, {"path": ["x", "y"]})
    assert pending.ready()
    arrays = pending.wait()
    assert np.shares_memory(arrays["a"], t["a"].numpy()) and arrays["path"] == ["x", "y"]
    assert arrays["b"].flags.c_contiguous and arrays["b"].shape == (2, 3)


@pytest.mark.gpu
def test_host_copy_on_cuda_is_pinned_and_waits_for_its_event() -> None:
    x = torch.randn(64, 1, 224, 224, device="cuda")
    outputs = {"image": (x * 100).to(torch.uint8), "prob": x.flatten(1).softmax(1)[:, :2]}
    pending = copy_to_host(outputs, {"path": ["p"] * 64})
    arrays = pending.wait()
    assert pending.ready()
    for k, t in outputs.items():
        np.testing.assert_array_equal(arrays[k], t.cpu().numpy())
    assert torch.from_numpy(arrays["image"]).is_pinned()
