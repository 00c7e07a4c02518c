"""Loading ahead in a background thread: the same batches in the same order, errors re-raised in order, an early
stop ends the thread."""

from __future__ import annotations

import threading

import pytest
import torch

from enhancer.data import make_loader, scan
from enhancer.data.prefetch import Prefetcher, pinned
from enhancer.preprocessing import Preprocessing

PRE = Preprocessing(size=(32, 32), in_chans=1, mean=(0.5,), std=(0.25,))


def _loader(kermany_dir, batch_size=3):
    return make_loader(list(scan(kermany_dir).samples), PRE, batch_size=batch_size, loader="torch", num_threads=0)


def test_prefetched_batches_equal_the_loader_s(kermany_dir) -> None:
    direct = list(_loader(kermany_dir))
    seen_in: list[str] = []

    def prepare(batch):
        seen_in.append(threading.current_thread().name)
        return batch.index.numpy().tolist()

    loader = _loader(kermany_dir)
    with Prefetcher(loader, depth=2, prepare=prepare, name="load-ahead") as batches:
        got = list(batches)
    assert [len(b) for b, _ in got] == [3, 3, 3, 3, 3, 1]
    for (b, rows), d in zip(got, direct, strict=True):
        assert torch.equal(b.index, d.index) and rows == d.index.tolist()
        assert torch.equal(b.image, d.image) and torch.equal(b.source, d.source) and torch.equal(b.label, d.label)
    assert set(seen_in) == {"load-ahead"}  # the host work ran in the loading thread
    assert loader.n_loaded == 16 and loader.rejected == []
    with pytest.raises(RuntimeError, match="iterates its loader once"):
        next(iter(batches))


def test_an_error_while_loading_is_raised_after_the_batches_before_it(kermany_dir) -> None:
    def prepare(batch):
        if 6 in batch.index.tolist():
            raise ValueError("no annotations for sample 6")
        return None

    got = []
    with (
        pytest.raises(ValueError, match="no annotations for sample 6"),
        Prefetcher(_loader(kermany_dir), prepare=prepare) as batches,
    ):
        for b, _ in batches:
            got.append(b.index.tolist())
    assert got == [[0, 1, 2], [3, 4, 5]]


def test_stopping_early_ends_the_loading_thread(kermany_dir) -> None:
    prefetcher = Prefetcher(_loader(kermany_dir, batch_size=1), depth=1)
    with prefetcher as batches:
        first, _ = next(iter(batches))  # then leave: 15 batches not taken
    assert int(first.index[0]) == 0 and not prefetcher._thread.is_alive()


def test_host_tensors_are_pinned_only_where_cuda_can_use_them() -> None:
    t = torch.arange(3)
    if torch.cuda.is_available():
        assert pinned(t).is_pinned() and torch.equal(pinned(t), t)
    else:
        assert pinned(t) is t  # nothing to pin for: the same tensor, no copy
