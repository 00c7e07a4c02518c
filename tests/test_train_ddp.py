"""Distributed data parallel on the CPU (gloo): 2 processes end with identical weights and match one process on the
same global batch; launcher environment parsing (torchrun, srun)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import enhancer.train.loop as train_module
from enhancer.models.checkpoints import read_checkpoint_file
from enhancer.train.distributed import DistributedError, launcher_ranks, local_cuda_index, rank_cuda_device
from tests.test_train import make_separable_folder, tiny_spec


def _without_dropout(built):
    """Dropout masks depend on how the global batch is split over ranks: the one randomness DDP cannot match."""
    model, preprocessing, desc = built
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model, preprocessing, desc


def _patch_initial_model() -> None:
    original = train_module.initial_model
    train_module.initial_model = lambda spec, **kwargs: _without_dropout(original(spec, **kwargs))


def _spec(data: Path, out: Path):
    # Global batch 8 (4 per rank); 30 training samples split evenly, so every global batch is the same set of
    # samples with 1 and with 2 processes. No augmentation: its random draws are per process.
    return tiny_spec(data, out, epochs=1, batch_size=8, augment=False, lr=3e-3)


def _worker(rank: int, world: int, port: int, data: str, out: str, states: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    _patch_initial_model()
    result = train_module.fit(_spec(Path(data), Path(out)))
    torch.save({"state": result.model.state_dict(), "history": result.history}, Path(states) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_each_other_and_a_single_process(tmp_path, monkeypatch):
    data = make_separable_folder(tmp_path / "data")
    states = tmp_path / "states"
    states.mkdir()
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(k, raising=False)
    mp.spawn(_worker, args=(2, _free_port(), str(data), str(tmp_path / "ddp"), str(states)), nprocs=2, join=True)

    r0, r1 = (torch.load(states / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k  # identical weights on both ranks
    timeless = [[{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]] for r in (r0, r1)]
    assert timeless[0] == timeless[1]  # metrics combined over ranks: the same everywhere
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        ["best.pt", "last.pt", "metrics.csv", "metrics.jsonl", "curves.png", "summary.json", "unreadable.csv"]
    )  # written once, by rank 0

    original = train_module.initial_model
    monkeypatch.setattr(
        train_module, "initial_model", lambda spec, **kwargs: _without_dropout(original(spec, **kwargs))
    )
    single = train_module.fit(_spec(data, tmp_path / "single"))
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    h_ddp, h_one = r0["history"][0], single.history[0]
    assert (h_ddp["n_train"], h_ddp["n_val"]) == (h_one["n_train"], h_one["n_val"]) == (30, 10)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_sensitivity", "val_specificity", "val_auroc"):
        assert h_ddp[key] == pytest.approx(h_one[key], rel=1e-4, abs=1e-6), key
    assert h_ddp["val_confusion_matrix"] == h_one["val_confusion_matrix"]
    saved = read_checkpoint_file(tmp_path / "ddp" / "last.pt")
    assert not any(k.startswith("module.") for k in saved["model_state_dict"])  # the bare model, not the DDP wrapper


def test_launcher_environment():
    assert launcher_ranks({}) == (0, 1, 0)
    assert launcher_ranks({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == (3, 8, 1)
    srun = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"}
    assert launcher_ranks(srun) == (5, 8, 1)
    # The batch script itself (no srun step) is a single process even in an 8-task job.
    assert launcher_ranks({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) == (0, 1, 0)
    # torchrun inside an srun step: torchrun's ranks win.
    assert launcher_ranks({**srun, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}) == (0, 2, 0)


def test_device_with_one_visible_gpu_per_task():
    # `srun --gpus-per-task=1`: the second task of a node has SLURM_LOCALID=1 but sees one GPU (its own, as
    # CUDA_VISIBLE_DEVICES=3), whose ordinal is 0; cuda:1 would be an invalid device ordinal there.
    one_per_task = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": "3"}
    assert rank_cuda_device(one_per_task, device_count=1) == "cuda:0"
    # every GPU of the node visible to every task (torchrun, --gres=gpu:4): the local rank picks one
    all_visible = {**one_per_task, "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert rank_cuda_device(all_visible, device_count=4) == "cuda:1"
    assert rank_cuda_device({"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2"}, device_count=4) == "cuda:2"
    assert [local_cuda_index(r, 2) for r in range(4)] == [0, 1, 0, 0]
    with pytest.raises(DistributedError, match="no CUDA device is visible"):
        local_cuda_index(0, 0)
