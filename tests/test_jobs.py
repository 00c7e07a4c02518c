"""Job files: every spec in jobs/ validates, bad specs fail with the key and the file named, precedence, dry runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from enhancer.cli import main
from enhancer.run.jobs import JOB_KINDS, SlurmSpec, load_job
from enhancer.specs import SpecError, parse_value

JOBS_DIR = Path(__file__).resolve().parents[1] / "jobs"
JOB_FILES = sorted(JOBS_DIR.glob("*.toml"))


def test_the_jobs_folder_has_enhance_train_and_cycle_specs():
    assert {p.name for p in JOB_FILES} >= {"enhance-kermany.toml", "train-resnet101.toml", "cycle-kermany.toml"}
    assert list(JOB_KINDS) == ["enhance", "train", "cycle"]  # registered on import, without torch


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_job_file_validates(path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("ENHANCER_")]:
        monkeypatch.delenv(name)  # the files themselves, not this shell's settings
    job = load_job(path)
    assert job.kind.table in tomllib.loads(path.read_text())
    assert isinstance(job.slurm, SlurmSpec)
    result = CliRunner().invoke(main, ["run", str(path), "--check"])
    assert result.exit_code == 0, result.output
    assert f"[{job.kind.table}]" in result.output and "[slurm]" in result.output


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_resolved_spec_round_trips(path, tmp_path):
    """The resolved spec is itself a valid job file with the same settings (what `submit` hands to the tasks)."""
    job = load_job(path, environ={})
    resolved = tmp_path / "resolved.toml"
    resolved.write_text(job.resolved_toml())
    again = load_job(resolved, environ={})
    assert again.kind is job.kind and again.slurm.time == job.slurm.time
    for name in job.kind.spec_cls.__dataclass_fields__:
        if name not in job.kind.path_fields:
            assert getattr(again.spec, name) == getattr(job.spec, name), name


def test_parsing_a_job_file_imports_no_torch(tmp_path):
    """Specs, settings and job files are plain Python: validating a job (a login node, `submit`) needs no torch."""
    job = tmp_path / "job.toml"
    job.write_text(
        '[enhance]\ndata = "d"\nout = "o"\nbatch_size = 8\n[enhance.cam]\nscore = "logit"\n'
        '[enhance.crop]\nsize = [128, 96]\n[enhance.enhance]\nfloor = 0.2\n[slurm]\ntime = "01:00:00"\n'
    )
    code = textwrap.dedent(
        f"""
        import sys
        from enhancer.run.jobs import load_job
        from enhancer.specs import EnhanceSpec, SpecError, load_spec

        spec = load_spec(EnhanceSpec, {str(job)!r}, table="enhance", environ={{}})
        job = load_job({str(job)!r}, environ={{}})
        assert job.spec == spec and job.slurm.time == "01:00:00" and "[enhance.cam]" in job.resolved_toml()
        assert (spec.batch_size, spec.cam.score, spec.crop.size, spec.enhance.floor) == (8, "logit", (128, 96), 0.2)
        try:
            load_spec(EnhanceSpec, {str(job)!r}, table="enhance", overrides={{"cam.score": "odds"}}, environ={{}})
        except SpecError as exc:
            assert "choose one of 'prob', 'logit'" in str(exc), exc
        else:
            raise AssertionError("cam.score = odds was accepted")
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "nvidia", "h5py")))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"enhance": {"batch_sise": 8}}, "unknown key batch_sise"),
        ({"enhance": {"batch_size": "big"}}, "batch_size"),
        ({"enhance": {"cam": {"score": 3}}}, "cam.score"),
        ({"enhance": {"device": "tpu"}}, "choose one of auto, cpu, cuda"),
        ({"slurm": {"partion": "gpu"}}, "unknown key partion"),
        ({"slurm": {"time": "two hours"}}, "slurm.time"),
        ({"slurm": {"cpus_per_task": 0}}, "slurm.cpus_per_task must be >= 1"),
        ({"slurm": {"mem": "lots"}}, "slurm.mem"),
        ({"enhanse": {"data": "x"}}, "unknown table [enhanse]"),
    ],
)
def test_bad_specs_name_the_key_and_the_file(tmp_path, edit, expected):
    base = {"enhance": {"data": "d", "out": "o", "checkpoint": "c.pt"}, "slurm": {}}
    for table, values in edit.items():
        base.setdefault(table, {}).update(values)
    path = tmp_path / "bad.toml"
    path.write_text(_toml(base))
    result = CliRunner().invoke(main, ["run", str(path), "--check"])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "bad.toml" in result.output, result.output
    assert "Traceback" not in result.output


def test_missing_required_field_and_table_count(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[enhance]\ndata = "d"\n')
    result = CliRunner().invoke(main, ["run", str(path), "--check"])
    assert result.exit_code == 2 and "missing required setting(s): out" in result.output
    path.write_text("[slurm]\nnodes = 2\n")
    with pytest.raises(SpecError, match="exactly one job table"):
        load_job(path)
    path.write_text('[enhance]\ndata = "d"\nout = "o"\n[train]\ndata = "d"\nout = "o"\n')
    with pytest.raises(SpecError, match=r"found \[enhance\] and \[train\]"):
        load_job(path)


def test_precedence_set_over_environment_over_file(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[enhance]\ndata = "d"\nout = "o"\nbatch_size = 8\n[slurm]\npartition = "file"\naccount = "file"\n')
    env = {
        "ENHANCER_BATCH_SIZE": "16",
        "ENHANCER_SLURM__PARTITION": "env",
        "ENHANCER_SLURM__QOS": "high",
        "ENHANCER_SLURM__MERGE_TIME": "00:20:00",
    }
    job = load_job(path, {"slurm.account": "cli"}, environ=env)
    assert job.spec.batch_size == 16
    assert (job.slurm.partition, job.slurm.account, job.slurm.qos) == ("env", "cli", "high")
    assert job.slurm.merge_time == "00:20:00"
    job = load_job(
        path, {"batch_size": 4, "slurm.partition": "cli", "slurm.time": parse_value("01:30:00")}, environ=env
    )
    assert job.spec.batch_size == 4 and job.slurm.partition == "cli" and job.slurm.time == "01:30:00"
    with pytest.raises(SpecError, match="environment"):
        load_job(path, environ={"ENHANCER_SLURM__NODES": "many"})


def test_submit_dry_run_builds_the_array_and_the_dependent_merge(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "submit",
            str(JOBS_DIR / "enhance-kermany.toml"),
            "--dry-run",
            "--set",
            f"out={tmp_path / 'out'}",
            "--set",
            "slurm.partition=gpu",
            "--set",
            "slurm.gpu_type=a100",
            "--set",
            'slurm.extra=["--exclusive"]',
        ],
    )
    assert result.exit_code == 0, result.output
    array, merge = [line for line in result.output.splitlines() if line.startswith("sbatch")]
    for option in (
        "--array=0-3%16",
        "--signal=B:USR1@300",
        "--gres=gpu:a100:1",
        "--partition=gpu",
        "--requeue",
        "--cpus-per-task=8",
        "--mem=32G",
        "--exclusive",
        "enhance-%A_%a.out",
        "slurm/enhance.sbatch",
    ):
        assert option in array, option
    assert "--dependency=afterok:" in merge and "--kill-on-invalid-dep=yes" in merge and "--gres=none" in merge
    assert not (tmp_path / "out").exists(), "a dry run writes nothing"
    shards = CliRunner().invoke(
        main, ["submit", str(JOBS_DIR / "enhance-kermany.toml"), "--dry-run", "--shards", "1,3"]
    )
    assert "--array=1,3%16" in shards.output
    bad = CliRunner().invoke(main, ["submit", str(JOBS_DIR / "enhance-kermany.toml"), "--dry-run", "--shards", "9"])
    assert bad.exit_code == 2 and "shard 9 is not in 0..3" in bad.output


def test_submit_without_sbatch_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    result = CliRunner().invoke(
        main, ["submit", str(JOBS_DIR / "enhance-kermany.toml"), "--set", f"out={tmp_path / 'out'}"]
    )
    assert result.exit_code == 1 and "sbatch not found" in result.output and "slurm-local.sh" in result.output


def _toml(doc: dict) -> str:
    from enhancer.specs import dump_toml

    return "\n\n".join(dump_toml(table, values) for table, values in doc.items()) + "\n"
