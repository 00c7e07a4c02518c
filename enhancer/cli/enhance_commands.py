"""Commands that make an enhanced dataset: enhance (one shard, or local workers), run a job file, submit to SLURM."""

from __future__ import annotations

import os
from typing import Any

import click

from enhancer.cli.app import EnhancerError, heavy_imports, main, overrides, reports_errors, slurm_ids, stoppable
from enhancer.cli.model_options import model_options, model_overrides
from enhancer.cli.options import label_options, set_option, spec_option
from enhancer.settings import CamSettings
from enhancer.specs import EnhanceSpec


@main.command()
@click.option(
    "--job", "job_file", type=click.Path(exists=True, dir_okay=False), help="TOML job file ([enhance] table)."
)
@spec_option(
    EnhanceSpec,
    "data",
    "ImageFolder root (<root>/<CLASS>/<file>), a path,label CSV, or the folder holding the images of --labels.",
)
@label_options(EnhanceSpec)
@spec_option(
    EnhanceSpec,
    "head",
    "Output activation: softmax (one class per image) or sigmoid (one yes/no per class, multi-label); auto: what "
    "the checkpoint records, else softmax.",
)
@spec_option(
    EnhanceSpec,
    "explain",
    "Classes with a map, one map per (image, class): pred (probability >= --threshold, else the top class), "
    "label (the positive targets), all, top:K, or CLASS[,CLASS]; auto: one map of cam.target per image for a "
    "softmax model, pred for a sigmoid one.",
)
@spec_option(EnhanceSpec, "threshold", "Probability from which a class counts as predicted (--explain pred).")
@spec_option(
    EnhanceSpec,
    "crop_from",
    "With a map per class: crops and enhanced images from the union of an image's maps, or one per map (each).",
)
@spec_option(
    EnhanceSpec,
    "checkpoint",
    "Classifier checkpoint (the research notebook's .pth, a state_dict or ours); needed to run "
    "(`enhancer demo-model` makes one for trying the tool).",
)
@spec_option(EnhanceSpec, "out", "Output directory of the enhanced dataset (one dataset per directory).")
@spec_option(
    EnhanceSpec, "arch", "Zoo architecture (see `enhancer models`; or use --model); none: detected from the weights."
)
@model_options(EnhanceSpec)
@spec_option(EnhanceSpec, "shard_id", "Which shard to write.")
@spec_option(EnhanceSpec, "num_shards", "Total number of shards (e.g. SLURM array size).")
@spec_option(
    EnhanceSpec,
    "batch_size",
    "Images per batch; none: 16 on the CPU (small batches let loading, compute and writing overlap and stay in "
    "cache), 256 on CUDA.",
)
@spec_option(EnhanceSpec, "device", "Compute device.")
@spec_option(EnhanceSpec, "loader", "Image loader; auto: DALI when installed and no file is DICOM, else torch.")
@spec_option(EnhanceSpec, "num_threads", "Loader CPU threads / workers.")
@spec_option(EnhanceSpec, "amp", "bf16 autocast on CUDA (channels_last is used wherever it is faster).")
@spec_option(
    EnhanceSpec,
    "compile",
    "torch.compile the model's trunk: faster batches after a compile at start (minutes on a CPU the first time; "
    "cached on disk for later runs).",
)
@spec_option(
    CamSettings,
    "method",
    "CAM method (cam.method), as pytorch-grad-cam defines it: the gradient methods take one head-only backward, "
    "eigencam the activations alone, scorecam and ablationcam a forward pass per channel and image (slow).",
)
@spec_option(
    CamSettings,
    "scorecam_batch",
    "scorecam / ablationcam: perturbed copies per forward pass (cam.scorecam_batch; memory against speed, the maps do "
    "not depend on it).",
)
@spec_option(
    EnhanceSpec,
    "fields",
    "Optional fields to store, comma-separated, or 'all'; index, label, pred, prob, path, orig_size are always stored.",
)
@click.option(
    "--codec",
    "codecs",
    multiple=True,
    metavar="FIELD=CODEC",
    help="How a field is stored, repeatable: none, gzip1..gzip9 (any HDF5 reader), lzf (h5py only), or jpeg / "
    "jpeg1..jpeg100 for image, crop, enhanced (JPEG bytes); e.g. --codec image=jpeg95.  "
    "[default: heatmap=gzip1, lung_mask=gzip1, the rest none]",
)
@spec_option(
    EnhanceSpec,
    "compression",
    "Codec of every field without a --codec; auto: the measured per-field defaults (README, Storage codecs).",
)
@spec_option(
    EnhanceSpec,
    "write_threads",
    "Threads compressing the shard's chunks; none: the CPU cores left after --num-threads (at least 1).",
)
@spec_option(
    EnhanceSpec,
    "validate",
    "File check before decoding; auto: full (a PIL decode of every file) when DALI or nvJPEG decode, which crash on "
    "some corrupt files, header when PIL decodes anyway.",
)
@spec_option(
    EnhanceSpec,
    "max_pixels",
    "Reject images with more pixels, from their header, before any is allocated (decompression bombs).",
)
@spec_option(EnhanceSpec, "decode_timeout_s", "Reject a file whose decoding takes longer (seconds; 0: no limit).")
@spec_option(
    EnhanceSpec,
    "force_claim",
    "Take over the shard's claim even though another process seems to hold it (a crashed host whose lock the file "
    "server keeps); never while that job may still run.",
)
@spec_option(
    EnhanceSpec,
    "lung_model",
    "Lung-segmentation U-Net weights (the public VGG11-encoder model's state_dict): stores lung_mask, lung_energy, "
    "lung_hit.",
)
@spec_option(
    EnhanceSpec,
    "lung_mask_in_enhanced",
    "Also suppress outside the lungs in the enhanced image (needs --lung-model).",
)
@spec_option(
    EnhanceSpec,
    "boxes",
    "Annotated boxes, RSNA CSV (patientId,x,y,width,height,Target), NIH BBox_List_2017.csv (boxes per finding) or "
    "path,x0,y0,x1,y1: stores box_energy, box_hit, "
    "box_iou.",
)
@set_option("Any other spec setting, e.g. cam.score=logit, crop.threshold=0.4, enhance.floor=0.2.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    help="Processes on this machine, one per GPU (N on the "
    "CPU); worker k writes shards k, k+N, ... of --num-shards (default N). Logs in OUT/logs/.",
)
@reports_errors
def enhance(
    job_file: str | None,
    settings: tuple[str, ...],
    codecs: tuple[str, ...],
    progress: bool,
    workers: int,
    **options: Any,
) -> None:
    """Write Grad-CAM heatmaps, crops and enhanced images of every image into an HDF5 shard.

    Settings come from (highest first) the command line, ENHANCER_* environment variables (ENHANCER_BATCH_SIZE,
    ENHANCER_CAM__SCORE, ...), the job file, then the defaults. A complete shard is skipped when run again; an
    interrupted one (also by SIGTERM, SIGINT or SIGUSR1: a clean stop after the current batch) is rewritten. A second
    job on the same shard exits with code 2, naming the one writing it. After all shards: `enhancer merge OUT`.
    """
    from enhancer.specs import load_spec

    chosen = model_overrides(options)
    spec = load_spec(
        EnhanceSpec,
        job_file,
        table="enhance" if job_file else None,
        overrides={**chosen, **cam_overrides(options), **overrides(options, settings), **codec_overrides(codecs)},
    )
    if spec.compile:  # torch's compiled-kernel cache in the user cache (kept), not /tmp; workers inherit it
        from enhancer.data.samples import cache_dir

        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torch-compile"))
    if workers > 1:
        import dataclasses

        from enhancer.run.launch import run_enhance_workers

        if options["shard_id"] is not None:
            raise click.BadParameter("give either --workers (all shards) or --shard-id (one)", param_hint="--workers")
        spec = dataclasses.replace(spec, num_shards=max(spec.num_shards, workers))
        for line in stoppable(run_enhance_workers, spec, workers):
            click.echo(line)
        return
    from enhancer.store.claims import ShardClaim
    from enhancer.store.layout import shard_path

    ids = slurm_ids()
    final = shard_path(spec.out, spec.shard_id, spec.num_shards)
    # Claimed before torch is imported: a second job on this shard is refused within a second, naming the first.
    with ShardClaim(final, job=ids.get("slurm"), force=spec.force_claim) as claim:
        with heavy_imports():
            from enhancer.enhance import run_enhance

        summary = stoppable(run_enhance, spec, progress=progress, extra_attrs=ids, claim=claim)
    click.echo(summary.line())


CAM_OPTIONS = ("method", "scorecam_batch")  # options of fields of the nested [enhance.cam] table (CamSettings)


def cam_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """Pop the CAM options from the command's ``options`` as spec keys (``--method gradcam++`` -> ``cam.method``)."""
    found = {f"cam.{name}": options.pop(name, None) for name in CAM_OPTIONS}
    return {k: v for k, v in found.items() if v is not None}


def codec_overrides(items: tuple[str, ...]) -> dict[str, str]:
    """``--codec image=jpeg95`` -> ``{"codec.image": "jpeg95"}`` (the spec checks field and codec)."""
    found = {}
    for item in items:
        name, sep, codec = item.partition("=")
        if not sep or not name.strip() or not codec.strip():
            raise click.BadParameter(f"{item!r} is not FIELD=CODEC (e.g. image=jpeg95)", param_hint="--codec")
        found[f"codec.{name.strip()}"] = codec.strip()
    return found


@main.command("run")
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@set_option("Override a setting of the job table (batch_size=16, cam.score=logit) or of [slurm] (slurm.time=1:00:00).")
@click.option(
    "--workers", default=1, show_default=True, help="Processes on this machine (enhance: one per GPU, or N on the CPU)."
)
@click.option("--check", is_flag=True, help="Only validate the job file and print the resolved spec.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@reports_errors
def run_job_file(job_file: str, settings: tuple[str, ...], workers: int, check: bool, progress: bool) -> None:
    """Run a job file (jobs/*.toml) on this machine; its table says what it is ([enhance], ...).

    An enhance job writes every shard (in one process, or in --workers processes) and merges them. Settings: --set
    > ENHANCER_* environment (ENHANCER_SLURM__<KEY> for [slurm]) > the job file > defaults.
    """
    from enhancer.run.jobs import RunContext, load_job, run_job

    job = load_job(job_file, overrides({}, settings))
    if check:
        click.echo(job.resolved_toml(), nl=False)
        return
    context = RunContext(workers=workers, progress=progress, extra_attrs=slurm_ids(), on_line=click.echo)
    for line in stoppable(run_job, job, context):
        click.echo(line)


@main.command()
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@set_option("Override a setting, e.g. slurm.partition=gpu, slurm.array_throttle=20, num_shards=200.")
@click.option(
    "--shards",
    help="Submit only these shards (comma-separated), e.g. those `enhancer merge` names as missing.  [default: all]",
)
@click.option("--dry-run", is_flag=True, help="Print the sbatch commands; submit nothing.")
@reports_errors
def submit(job_file: str, settings: tuple[str, ...], shards: str | None, dry_run: bool) -> None:
    """Submit a job file to SLURM: an enhance job as an array (one shard per task) plus a merge after it succeeds.

    Partition, account, GPU type, CPUs, memory, time, throttle and the environment to activate come from the job's
    [slurm] table, ENHANCER_SLURM__<KEY> variables (e.g. ENHANCER_SLURM__ACCOUNT) or --set slurm.<key>=VALUE.
    """
    from enhancer.run.jobs import load_job
    from enhancer.run.slurm import SubmitError, watch_lines

    job = load_job(job_file, overrides({}, settings))
    if job.kind.submit is None:
        raise EnhancerError(
            f"{job_file}: [{job.kind.table}] jobs have no SLURM submission; run them with `enhancer run`"
        )
    options: dict[str, Any] = {"dry_run": dry_run}
    if shards:
        try:
            options["shards"] = [int(s) for s in shards.split(",") if s.strip()]
        except ValueError:
            raise click.BadParameter(
                f"{shards!r} is not a comma-separated list of shard ids", param_hint="--shards"
            ) from None
    try:
        submitted = job.kind.submit(job, **options)
    except SubmitError as exc:
        raise click.ClickException(str(exc)) from None
    for s in submitted if dry_run else ():
        click.echo(s.shell())
    for line in watch_lines(submitted):
        click.echo(line)
