"""The ``enhancer`` command line: thin click commands that parse options and call one library function each.

Usage: ``enhancer --help``; ``enhancer inspect ResNet-101_GradCAM_Cropped_v4.pth``; ``enhancer models``.
Heavy imports (torch, DALI) happen inside the commands so that ``enhancer --help`` is instant.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from enhancer import __version__

F = TypeVar("F", bound=Callable[..., Any])


class EnhancerError(click.ClickException):
    """A user-facing error: one clear message, exit code 2 (bad input), no traceback."""

    exit_code = 2


def reports_errors(func: F) -> F:
    """Turn the library's input errors (which carry the file and the fix in their message) into exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from enhancer.checkpoints import CheckpointError
        from enhancer.data import DataError
        from enhancer.distributed import DistributedError
        from enhancer.models import ModelError
        from enhancer.samples import FetchError
        from enhancer.specs import SpecError
        from enhancer.store import StoreError

        try:
            return func(*args, **kwargs)
        except (CheckpointError, ModelError, SpecError, StoreError, FetchError, DataError, DistributedError) as exc:
            raise EnhancerError(str(exc)) from None
        except OSError as exc:  # a full disk, a permission: name the file, no traceback
            raise EnhancerError(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "-V", "--version", prog_name="enhancer")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Grad-CAM enhancement of chest X-ray datasets, in large GPU batches, into HDF5 shards.

    Point it at an ImageFolder dataset and a trained classifier checkpoint (including the original research's
    ResNet-101 / ResNet-152 / VGG-16 / TinyVGG files); it writes heatmaps, Grad-CAM-guided crops and enhanced
    images for every image, and the same training code fine-tunes the model on the result.
    """
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@main.command()
def models() -> None:
    """List the model zoo: architectures, heads, input and Grad-CAM target layer."""
    from enhancer.models import ZOO

    for name, info in ZOO.items():
        heads = f" heads: {', '.join(info.heads)} (default {info.default_head})" if info.heads else ""
        p = info.preprocessing
        click.echo(f"{name:<13} {info.description}")
        click.echo(f"{'':<13} input {p.in_chans}ch mean {list(p.mean)} std {list(p.std)};{heads}")


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=str))
@click.option("--arch", default=None, help="Architecture, when detection from the weights is not wanted.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")
@reports_errors
def inspect(checkpoint: str, arch: str | None, as_json: bool) -> None:
    """Describe a checkpoint: architecture, parameters (total and trainable), head, input spec, metadata.

    Accepts the original research's files, bare state_dicts and enhancer's own format. Files are read with
    torch.load(weights_only=True): a checkpoint that would run pickled code is refused.
    """
    from enhancer.checkpoints import load_checkpoint
    from enhancer.models import ZOO, count_parameters

    ck = load_checkpoint(checkpoint, arch=arch)
    total, trainable = count_parameters(ck.model)
    head_params = sum(p.numel() for m in ck.model.param_groups()["head"] for p in m.parameters())
    report = {
        "path": ck.path,
        "sha256": ck.sha256,
        "format": ck.source_format,
        "architecture": ck.config.arch,
        "head": ck.config.head,
        "num_classes": ck.config.num_classes,
        "class_names": list(ck.class_names),
        "parameters": {"total": total, "trainable_default": trainable, "head": head_params},
        "default_trainable_groups": list(ZOO[ck.config.arch].default_trainable),
        "target_layer": ck.model.target_layer,
        "input": ck.preprocessing.to_dict(),
        "meta": ck.meta,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(f"{ck.path}  ({ck.source_format} format, sha256 {ck.sha256[:16]}...)")
    click.echo(f"  architecture   {ck.config.arch}" + (f"  head {ck.config.head}" if ck.config.head else ""))
    click.echo(f"  classes        {', '.join(ck.class_names)}")
    click.echo(f"  parameters     {total:,} total, {trainable:,} trainable by default "
               f"({'+'.join(report['default_trainable_groups'])}), head {head_params:,}")  # fmt: skip
    p = ck.preprocessing
    click.echo(f"  input          {p.in_chans}ch {p.size[0]}x{p.size[1]}, mean {list(p.mean)}, std {list(p.std)}")
    click.echo(f"  Grad-CAM layer {ck.model.target_layer}")
    for key, value in ck.meta.items():
        click.echo(f"  {key:<14} {value}")


def _overrides(options: dict[str, Any], settings: tuple[str, ...]) -> dict[str, Any]:
    """Options given on the command line (None = not given) plus ``--set key=value`` pairs, as spec overrides."""
    from enhancer.specs import parse_value

    found = {k: v for k, v in options.items() if v is not None}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. cam.score=logit)", param_hint="--set")
        found[key.strip()] = parse_value(value.strip())
    return found


def slurm_ids() -> dict[str, Any]:
    """SLURM's job ids, for provenance (read here at the edge; library code never reads SLURM_* itself)."""
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_CLUSTER_NAME")
    found = {k.lower(): os.environ[k] for k in keys if k in os.environ}
    return {"slurm": found} if found else {}


@main.command()
@click.option("--job", "job_file", type=click.Path(exists=True, dir_okay=False), help="TOML job file ([enhance] table).")
@click.option("--data", help="ImageFolder root (<root>/<CLASS>/<file>) or a path,label CSV.")
@click.option("--checkpoint", help="Classifier checkpoint (the research notebook's .pth, a state_dict or ours).")
@click.option("--out", help="Output directory of the enhanced dataset (one dataset per directory).")
@click.option("--arch", help="Architecture, when detection from the weights is not wanted (see `enhancer models`).")
@click.option("--shard-id", type=int, help="Which shard to write.  [default: 0]")
@click.option("--num-shards", type=int, help="Total number of shards (e.g. SLURM array size).  [default: 1]")
@click.option("--batch-size", type=int, help="Images per batch.  [default: 64]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Compute device.  [default: auto]")
@click.option("--loader", type=click.Choice(["auto", "dali", "torch"]), help="Image loader.  [default: auto = DALI]")
@click.option("--num-threads", type=int, help="Loader CPU threads / workers.  [default: 2]")
@click.option("--amp/--no-amp", default=None, help="bf16 autocast + channels_last on CUDA.  [default: off]")
@click.option("--fields", help="Optional fields to store, comma-separated (image,cam,heatmap,crop,crop_box,"
              "enhanced) or 'all'; index, label, pred, prob, path, orig_size are always stored.  [default: all]")
@click.option("--compression", type=click.Choice(["gzip", "lzf", "none"]), help="HDF5 compression.  [default: gzip]")
@click.option("--validate", type=click.Choice(["header", "full"]), help="File check before decoding.  [default: header]")
@click.option("--lung-model", help="Lung-segmentation U-Net weights (the public VGG11-encoder model's state_dict): "
              "stores lung_mask, lung_energy, lung_hit.  [default: none]")
@click.option("--lung-mask-in-enhanced/--no-lung-mask-in-enhanced", default=None,
              help="Also suppress outside the lungs in the enhanced image (needs --lung-model).  [default: off]")
@click.option("--boxes", help="Annotated boxes, RSNA CSV (patientId,x,y,width,height,Target) or path,x0,y0,x1,y1: "
              "stores box_energy, box_hit, box_iou.  [default: none]")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other spec setting, e.g. cam.score=logit, crop.threshold=0.4, enhance.floor=0.2.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@click.option("--workers", default=1, show_default=True, help="Processes on this machine, one per GPU (N on the "
              "CPU); worker k writes shards k, k+N, ... of --num-shards (default N). Logs in OUT/logs/.")
@reports_errors
def enhance(job_file: str | None, settings: tuple[str, ...], progress: bool, workers: int, **options: Any) -> None:
    """Write Grad-CAM heatmaps, crops and enhanced images of every image into an HDF5 shard.

    Settings come from (highest first) the command line, ENHANCER_* environment variables (ENHANCER_BATCH_SIZE,
    ENHANCER_CAM__SCORE, ...), the job file, then the defaults. A complete shard is skipped when run again; an
    interrupted one (also by SIGTERM or SIGUSR1: a clean stop) is rewritten. After all shards: `enhancer merge OUT`.
    """
    from enhancer.enhance import run_enhance
    from enhancer.specs import EnhanceSpec, load_spec

    spec = load_spec(EnhanceSpec, job_file, table="enhance" if job_file else None,
                     overrides=_overrides(options, settings))  # fmt: skip
    if workers > 1:
        import dataclasses

        from enhancer.launch import run_enhance_workers

        if options["shard_id"] is not None:
            raise click.BadParameter("give either --workers (all shards) or --shard-id (one)", param_hint="--workers")
        spec = dataclasses.replace(spec, num_shards=max(spec.num_shards, workers))
        for line in _stoppable(run_enhance_workers, spec, workers):
            click.echo(line)
        return
    summary = _stoppable(run_enhance, spec, progress=progress, extra_attrs=slurm_ids())
    click.echo(summary.line())


def _stoppable(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``func`` with SIGTERM/SIGUSR1 (SLURM's cancel, requeue and time-limit warning) turned into a clean stop:
    the shard being written is discarded, never completed; exit code 128 + the signal."""
    from enhancer.jobs import Preempted, stop_on_signals
    from enhancer.launch import WorkerError

    try:
        with stop_on_signals():
            return func(*args, **kwargs)
    except Preempted as exc:
        click.echo(f"{exc}: the shard being written was discarded; run the command again (or let SLURM requeue "
                   "the task) to write it; complete shards are skipped", err=True)  # fmt: skip
        raise SystemExit(128 + exc.signum) from None
    except WorkerError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("run")
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a setting of the job table (batch_size=16, cam.score=logit) or of [slurm] (slurm.time=1:00:00).")
@click.option("--workers", default=1, show_default=True, help="Processes on this machine (enhance: one per GPU, or N on the CPU).")
@click.option("--check", is_flag=True, help="Only validate the job file and print the resolved spec.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@reports_errors
def run_job_file(job_file: str, settings: tuple[str, ...], workers: int, check: bool, progress: bool) -> None:
    """Run a job file (jobs/*.toml) on this machine; its table says what it is ([enhance], ...).

    An enhance job writes every shard (in one process, or in --workers processes) and merges them. Settings: --set
    > ENHANCER_* environment (ENHANCER_SLURM__<KEY> for [slurm]) > the job file > defaults.
    """
    from enhancer.jobs import RunContext, load_job, run_job

    job = load_job(job_file, _overrides({}, settings))
    if check:
        click.echo(job.resolved_toml(), nl=False)
        return
    context = RunContext(workers=workers, progress=progress, extra_attrs=slurm_ids(), on_line=click.echo)
    for line in _stoppable(run_job, job, context):
        click.echo(line)


@main.command()
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a setting, e.g. slurm.partition=gpu, slurm.array_throttle=20, num_shards=200.")
@click.option("--shards", help="Submit only these shards (comma-separated), e.g. those `enhancer merge` names as "
              "missing.  [default: all]")
@click.option("--dry-run", is_flag=True, help="Print the sbatch commands; submit nothing.")
@reports_errors
def submit(job_file: str, settings: tuple[str, ...], shards: str | None, dry_run: bool) -> None:
    """Submit a job file to SLURM: an enhance job as an array (one shard per task) plus a merge after it succeeds.

    Partition, account, GPU type, CPUs, memory, time, throttle and the environment to activate come from the job's
    [slurm] table, ENHANCER_SLURM__<KEY> variables (e.g. ENHANCER_SLURM__ACCOUNT) or --set slurm.<key>=VALUE.
    """
    from enhancer.jobs import load_job
    from enhancer.slurm import SubmitError, watch_lines

    job = load_job(job_file, _overrides({}, settings))
    if job.kind.submit is None:
        raise EnhancerError(f"{job_file}: [{job.kind.table}] jobs have no SLURM submission; run them with `enhancer run`")
    options: dict[str, Any] = {"dry_run": dry_run}
    if shards:
        try:
            options["shards"] = [int(s) for s in shards.split(",") if s.strip()]
        except ValueError:
            raise click.BadParameter(f"{shards!r} is not a comma-separated list of shard ids", param_hint="--shards")
    try:
        submitted = job.kind.submit(job, **options)
    except SubmitError as exc:
        raise click.ClickException(str(exc)) from None
    for s in submitted if dry_run else ():
        click.echo(s.shell())
    for line in watch_lines(submitted):
        click.echo(line)


@main.command()
@click.option("--job", "job_file", type=click.Path(exists=True, dir_okay=False), help="TOML job file ([train] table).")
@click.option("--data", help="ImageFolder root (its train/ sub-folder when present) or an enhanced dataset directory.")
@click.option("--field", type=click.Choice(["enhanced", "crop", "image"]),
              help="Image field of an enhanced dataset.  [default: enhanced]")
@click.option("--arch", help="Architecture (see `enhancer models`).  [default: the --init checkpoint's, else resnet101]")
@click.option("--head", help="Seed head of a fresh ResNet (220k, 10k, 15k).  [default: the architecture's]")
@click.option("--input-size", type=int, help="Model input size.  [default: the checkpoint's, else 224]")
@click.option("--init", help="Start from CHECKPOINT (seed .pth files work), imagenet, random or auto.  [default: auto]")
@click.option("--unfreeze", help="Trainable groups, comma-separated: head, fc, layer4, layer4[2], all, ...  "
              "[default: the architecture's, head+fc+layer4 for the seed ResNets]")
@click.option("--unfreeze-schedule", help="Groups unfrozen one at a time, comma-separated, e.g. "
              "'layer4[1],layer4[0]'.  [default: none]")
@click.option("--unfreeze-every", type=int, help="Epochs between two steps of --unfreeze-schedule.  [default: 0]")
@click.option("--out", help="Run directory (checkpoints, metrics, curves); an existing run there is resumed.")
@click.option("--epochs", type=int, help="Maximum number of epochs.  [default: 20]")
@click.option("--batch-size", type=int, help="Global batch size (split over DDP ranks).  [default: 32]")
@click.option("--lr", type=float, help="RAdam learning rate.  [default: 0.0001]")
@click.option("--weight-decay", type=float, help="RAdam weight decay.  [default: 0.001]")
@click.option("--val-fraction", type=float, help="Stratified validation split of the training data.  [default: 0.1]")
@click.option("--patience", type=int, help="Early stopping patience in epochs (0: off).  [default: 5]")
@click.option("--seed", type=int, help="Seed of the split, the initialisation and every epoch.  [default: 0]")
@click.option("--augment/--no-augment", default=None, help="The seed's training augmentations.  [default: on]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Compute device.  [default: auto]")
@click.option("--num-workers", type=int, help="DataLoader workers per process.  [default: 4]")
@click.option("--amp/--no-amp", default=None, help="bf16 autocast + channels_last on CUDA.  [default: on]")
@click.option("--resume/--no-resume", default=None,
              help="Require / refuse an existing run in --out.  [default: resume it when there is one]")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other spec setting, e.g. t_max=10, min_delta=0.002, crop_fraction=0.8.")
@reports_errors
def train(job_file: str | None, settings: tuple[str, ...], **options: Any) -> None:
    """Train or fine-tune a classifier with the seed recipe, early-stopped on a validation split (never the test set).

    RAdam lr 1e-4 wd 1e-3, cosine T_max 15, batch 32, up to 20 epochs, patience 5 / min_delta 0.001 with the best
    weights restored. Several processes: `torchrun --nproc-per-node N -m enhancer.cli train ...` or `srun` tasks
    (gloo on CPU, NCCL on GPU); only rank 0 writes. Writes OUT/best.pt, last.pt, metrics.csv, curves.png.
    """
    from enhancer.specs import TrainSpec, load_spec
    from enhancer.train import fit

    spec = load_spec(TrainSpec, job_file, table="train" if job_file else None,
                     overrides=_overrides(options, settings))  # fmt: skip
    result = fit(spec, on_epoch=_print_epoch)
    if result.is_main:
        click.echo(result.line())


def _print_epoch(r: dict[str, Any]) -> None:
    def f(v: Any, pct: bool = False) -> str:
        return "n/a" if v is None else (f"{100 * v:.2f}%" if pct else f"{v:.4f}")

    click.echo(f"epoch {r['epoch']:>3}  train loss {f(r['train_loss'])} acc {f(r['train_acc'], True)}  "
               f"val loss {f(r['val_loss'])} acc {f(r['val_acc'], True)} sens {f(r['val_sensitivity'], True)} "
               f"spec {f(r['val_specificity'], True)} AUROC {f(r['val_auroc'])}  [{r['trainable']}, "
               f"{r['seconds']:.1f} s]{'  *best' if r['best'] else ''}")  # fmt: skip
    if r["unreadable"]:
        shown = ", ".join(r["unreadable"][:5]) + (" ..." if len(r["unreadable"]) > 5 else "")
        click.echo(f"  {len(r['unreadable'])} unreadable image(s) skipped: {shown} (listed in unreadable.csv)")


@main.command()
@click.option("--job", "job_file", type=click.Path(exists=True, dir_okay=False), help="TOML job file ([evaluate] table).")
@click.option("--data", help="ImageFolder root (its test/ sub-folder when present) or an enhanced dataset directory.")
@click.option("--checkpoint", help="Checkpoint to evaluate (the research notebook's .pth, a state_dict or ours).")
@click.option("--arch", help="Architecture, when detection from the weights is not wanted.")
@click.option("--field", type=click.Choice(["enhanced", "crop", "image"]),
              help="Image field of an enhanced dataset.  [default: enhanced]")
@click.option("--batch-size", type=int, help="Images per batch.  [default: 64]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Compute device.  [default: auto]")
@click.option("--num-workers", type=int, help="DataLoader workers.  [default: 2]")
@click.option("--json", "json_out", help="Also write the report as JSON to this file.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Any other spec setting.")
@reports_errors
def evaluate(job_file: str | None, settings: tuple[str, ...], json_out: str | None, **options: Any) -> None:
    """Loss, accuracy, sensitivity, specificity (PNEUMONIA positive), AUROC and confusion matrix of a checkpoint."""
    from enhancer.metrics import format_metrics
    from enhancer.specs import EvaluateSpec, load_spec
    from enhancer.train import run_evaluate

    spec = load_spec(EvaluateSpec, job_file, table="evaluate" if job_file else None,
                     overrides=_overrides({**options, "json": json_out}, settings))  # fmt: skip
    report = run_evaluate(spec)
    click.echo(f"{report['checkpoint']} on {report['data']}")
    click.echo(format_metrics(report["metrics"]))
    if report["unreadable"]:
        click.echo(f"{len(report['unreadable'])} unreadable image(s) not evaluated: "
                   + ", ".join(u["path"] for u in report["unreadable"][:5]))  # fmt: skip
    if spec.json:
        click.echo(f"wrote {spec.json}")


@main.command()
@click.option("--job", "job_file", type=click.Path(exists=True, dir_okay=False), help="TOML job file ([cycle] table).")
@click.option("--data", help="ImageFolder the rounds enhance and train on (its train/ sub-folder when present).")
@click.option("--test", help="Held-out ImageFolder evaluated after every round (its test/ sub-folder when present).")
@click.option("--checkpoint", help="The model of round 0 (the research notebook's .pth files work).")
@click.option("--out", help="Output directory: round-1/, round-2/, ..., summary.md, summary.json.")
@click.option("--rounds", type=int, help="Number of enhance -> train -> evaluate rounds.  [default: 1]")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Step settings, e.g. train.epochs=5, train.field=crop, enhance.batch_size=32.")
@reports_errors
def cycle(job_file: str | None, settings: tuple[str, ...], **options: Any) -> None:
    """The research cycle, K rounds: enhance with the current model -> fine-tune on the enhanced data -> evaluate.

    Each round's outputs go to OUT/round-K/; a rerun skips finished steps. The summary table compares the rounds
    on the held-out test set (round 0: the starting checkpoint).
    """
    from enhancer.cycle import run_cycle
    from enhancer.specs import CycleSpec, load_spec

    spec = load_spec(CycleSpec, job_file, table="cycle" if job_file else None,
                     overrides=_overrides(options, settings))  # fmt: skip
    summary = run_cycle(spec, on_line=click.echo)
    click.echo(summary.markdown)


@main.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@reports_errors
def merge(out_dir: str) -> None:
    """Check all shards of OUT_DIR and write manifest.json, rejected.csv and the dataset card README.md.

    Every scanned image must be in exactly one shard, written or rejected; missing or incomplete shards are named
    with the command to rerun them (exit code 2).
    """
    from enhancer.enhance import merge_enhanced

    manifest = merge_enhanced(out_dir)
    click.echo(f"{out_dir}: {manifest.n_written} written, {manifest.n_rejected} rejected of {manifest.n_in} "
               f"in {len(manifest.shards)} shard(s); manifest.json, rejected.csv and README.md written")  # fmt: skip


@main.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@reports_errors
def verify(out_dir: str) -> None:
    """Deep check of an enhanced dataset: shard hashes against the manifest, every chunk readable, invariants.

    Exit code 0 when everything holds, 1 with the list of problems otherwise.
    """
    from enhancer.store import verify as verify_dataset

    report = verify_dataset(out_dir)
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    if not report.ok:
        raise SystemExit(1)
    click.echo(f"{out_dir}: ok ({report.n_samples} samples checked)")


@main.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "png", default="grid.png", show_default=True, help="PNG file to write.")
@click.option("-n", "--samples", default=8, show_default=True, help="Number of samples (rows).")
@click.option("--good", default=0.85, show_default=True, help="Probability above which a correct row is 'Good'.")
@reports_errors
def show(out_dir: str, png: str, samples: int, good: float) -> None:
    """Draw a PNG grid: image | heatmap overlay | crop | enhanced, titled like the original research figures."""
    from enhancer.show import draw_grid

    click.echo(f"wrote {draw_grid(out_dir, png, n=samples, good_threshold=good)}")


@main.command("export")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--field", default="enhanced", show_default=True, help="Field to export (enhanced, crop, image, heatmap).")
@reports_errors
def export(out_dir: str, dest: str, field: str) -> None:
    """Export one field of an enhanced dataset as a PNG ImageFolder (DEST/<CLASS>/<name>.png)."""
    from enhancer.store import export_imagefolder

    n = export_imagefolder(out_dir, dest, field=field)
    click.echo(f"wrote {n} PNG files under {dest}")


@main.command("fetch-samples")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--from", "source", type=click.Path(exists=True, file_okay=False),
              help="Copy from a local folder holding the 16 files instead of downloading them.  "
                   "[default: $ENHANCER_SAMPLES when set, else the package index]")
@reports_errors
def fetch_samples(dest: str, source: str | None) -> None:
    """Get the 16 real sample chest X-rays (CC BY 4.0, Kermany et al.), check their hashes, lay out as ImageFolder."""
    from enhancer.samples import fetch_samples as fetch

    click.echo(f"16 sample X-rays (8 NORMAL, 8 PNEUMONIA) ready in {fetch(dest, source=source)}")


@main.command("demo-model")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--arch", default="resnet101", show_default=True, help="Zoo architecture.")
@click.option("--seed", default=0, show_default=True, help="Random seed of the weights.")
@click.option("--data", type=click.Path(exists=True, file_okay=False),
              help="ImageFolder to calibrate on and fit the output layer to (e.g. the samples).  "
              "[default: synthetic X-ray-like images]")
@reports_errors
def demo_model(path: str, arch: str, seed: int, data: str | None) -> None:
    """Write a demonstration checkpoint (random weights, calibrated BatchNorm): heatmaps without a trained model.

    Its maps show the pipeline working; they are not medical evidence. Use a trained checkpoint for real work.
    """
    from enhancer.demo_model import save_demo_checkpoint

    click.echo(f"wrote demonstration checkpoint {save_demo_checkpoint(path, arch, seed=seed, data=data)} ({arch})")


if __name__ == "__main__":
    main()
