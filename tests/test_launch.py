"""Several enhance processes on one machine (`enhancer enhance --workers N`): the same dataset as one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from enhancer.cli import main
from enhancer.enhance import merge_enhanced, run_enhance
from enhancer.run.launch import plan, visible_gpus, worker_device
from enhancer.specs import EnhanceSpec
from tests.test_enhance import _read_all


def assert_same_dataset(out: Path, reference: dict[int, dict[str, np.ndarray]]) -> None:
    """The merged dataset in ``out`` holds every sample of ``reference`` exactly once, with equal contents (the
    sharding test's tolerances: raw maps within 1e-5, uint8 arrays within one level)."""
    manifest = merge_enhanced(out) if not (out / "manifest.json").exists() else None
    got = _read_all(out)
    from enhancer.store import EnhancedDataset

    assert len(EnhancedDataset(out)) == len(reference), "no sample may be written twice"
    assert sorted(got) == sorted(reference)
    if manifest is not None:
        assert manifest.n_written == len(reference)
    for index, want in reference.items():
        have = got[index]
        assert have["path"] == want["path"]
        assert have["label"] == want["label"] and have["pred"] == want["pred"]
        np.testing.assert_allclose(have["cam"], want["cam"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(have["prob"], want["prob"], rtol=1e-5, atol=1e-5)  # batch sizes may differ
        for field in ("image", "heatmap", "crop", "enhanced", "crop_box"):
            assert np.abs(have[field].astype(int) - want[field].astype(int)).max() <= 1, (index, field)


def one_process_reference(out: Path, data: Path, checkpoint: Path) -> dict[int, dict[str, np.ndarray]]:
    """The samples of ``data`` enhanced by one local process into one shard, by scan index."""
    run_enhance(EnhanceSpec(data=str(data), out=str(out), checkpoint=str(checkpoint), batch_size=4), progress=False)
    merge_enhanced(out)
    return _read_all(out)


@pytest.fixture(scope="module")
def tinyvgg_reference(tmp_path_factory, kermany_dir, demo_checkpoints) -> dict[int, dict[str, np.ndarray]]:
    """The 16 real samples enhanced by one local process with the tinyvgg demo model."""
    return one_process_reference(tmp_path_factory.mktemp("reference") / "one", kermany_dir, demo_checkpoints["tinyvgg"])


def test_plan_spreads_shards_round_robin():
    assert plan(4, 2) == [[0, 2], [1, 3]]
    assert plan(5, 2) == [[0, 2, 4], [1, 3]]
    assert plan(1, 3) == [[0], [], []]


def test_workers_take_the_given_gpus():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,5"}) == ["2", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_a_worker_with_one_gpu_gets_a_valid_ordinal():
    # each worker sees one GPU (CUDA_VISIBLE_DEVICES=<one id>): cuda:1 of the parent is cuda:0 there
    assert worker_device("cuda:1", 1) == "cuda:0"
    assert worker_device("cuda:1", 2) == "cuda:1"
    assert [worker_device(d, 1) for d in ("cuda", "auto", "cpu")] == ["cuda", "auto", "cpu"]


@pytest.mark.slow
def test_two_cpu_workers_give_the_same_dataset_as_one_process(
    tmp_path, kermany_dir, demo_checkpoints, tinyvgg_reference
):
    out = tmp_path / "two-workers"
    result = CliRunner().invoke(
        main,
        [
            "enhance",
            "--data",
            str(kermany_dir),
            "--checkpoint",
            str(demo_checkpoints["tinyvgg"]),
            "--out",
            str(out),
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--workers",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("shard-*.h5")) == ["shard-00000-of-00002.h5", "shard-00001-of-00002.h5"]
    assert result.output.count("8 written, 0 rejected of 8") == 2, result.output
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["worker-0.log", "worker-1.log"]
    assert_same_dataset(out, tinyvgg_reference)


def test_a_failed_worker_names_its_shard(tmp_path, kermany_dir, demo_checkpoints):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "enhance",
            "--data",
            str(kermany_dir),
            "--checkpoint",
            str(tmp_path / "no.pt"),
            "--out",
            str(out),
            "--workers",
            "2",
        ],
    )
    assert result.exit_code == 1
    assert "shard 0 (exit 2" in result.output and "shard 1 (exit 2" in result.output
    assert "--shard-id 0 and --shard-id 1" in result.output
    assert "no such checkpoint file" in (out / "logs" / "worker-0.log").read_text()


def test_run_job_file_locally_writes_every_shard_and_merges(tmp_path, kermany_dir, demo_checkpoints, tinyvgg_reference):
    out = tmp_path / "run"
    job = Path(__file__).resolve().parents[1] / "jobs" / "enhance-kermany.toml"
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(job),
            "--no-progress",
            "--set",
            f"data={kermany_dir}",
            "--set",
            f"checkpoint={demo_checkpoints['tinyvgg']}",
            "--set",
            f"out={out}",
            "--set",
            "num_shards=2",
            "--set",
            "device=cpu",
            "--set",
            "amp=false",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "merged 16 written, 0 rejected of 16 in 2 shard(s)" in result.output
    assert_same_dataset(out, tinyvgg_reference)
