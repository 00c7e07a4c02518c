"""Commands of the research cycle's training side: train, evaluate, cycle."""

from __future__ import annotations

from typing import Any

import click

from enhancer.cli.app import main, overrides, reports_errors


@main.command()
@click.option("--job", "job_file", type=click.Path(exists=True, dir_okay=False), help="TOML job file ([train] table).")
@click.option("--data", help="ImageFolder root (its train/ sub-folder when present) or an enhanced dataset directory.")
@click.option(
    "--field",
    type=click.Choice(["enhanced", "crop", "image"]),
    help="Image field of an enhanced dataset.  [default: enhanced]",
)
@click.option(
    "--arch", help="Architecture (see `enhancer models`).  [default: the --init checkpoint's, else resnet101]"
)
@click.option("--head", help="Seed head of a fresh ResNet (220k, 10k, 15k).  [default: the architecture's]")
@click.option("--input-size", type=int, help="Model input size.  [default: the checkpoint's, else 224]")
@click.option("--init", help="Start from CHECKPOINT (seed .pth files work), imagenet, random or auto.  [default: auto]")
@click.option(
    "--unfreeze",
    help="Trainable groups, comma-separated: head, fc, layer4, layer4[2], all, ...  "
    "[default: the architecture's, head+fc+layer4 for the seed ResNets]",
)
@click.option(
    "--unfreeze-schedule",
    help="Groups unfrozen one at a time, comma-separated, e.g. 'layer4[1],layer4[0]'.  [default: none]",
)
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
@click.option(
    "--resume/--no-resume",
    default=None,
    help="Require / refuse an existing run in --out.  [default: resume it when there is one]",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other spec setting, e.g. t_max=10, min_delta=0.002, crop_fraction=0.8.",
)
@reports_errors
def train(job_file: str | None, settings: tuple[str, ...], **options: Any) -> None:
    """Train or fine-tune a classifier with the seed recipe, early-stopped on a validation split (never the test set).

    RAdam lr 1e-4 wd 1e-3, cosine T_max 15, batch 32, up to 20 epochs, patience 5 / min_delta 0.001 with the best
    weights restored. Several processes: `torchrun --nproc-per-node N -m enhancer.cli train ...` or `srun` tasks
    (gloo on CPU, NCCL on GPU); only rank 0 writes. Writes OUT/best.pt, last.pt, metrics.csv, curves.png.
    """
    from enhancer.specs import TrainSpec, load_spec
    from enhancer.train.loop import fit

    spec = load_spec(TrainSpec, job_file, table="train" if job_file else None, overrides=overrides(options, settings))
    result = fit(spec, on_epoch=_print_epoch)
    if result.is_main:
        click.echo(result.line())


def _print_epoch(r: dict[str, Any]) -> None:
    def f(v: Any, pct: bool = False) -> str:
        return "n/a" if v is None else (f"{100 * v:.2f}%" if pct else f"{v:.4f}")

    click.echo(
        f"epoch {r['epoch']:>3}  train loss {f(r['train_loss'])} acc {f(r['train_acc'], True)}  "
        f"val loss {f(r['val_loss'])} acc {f(r['val_acc'], True)} sens {f(r['val_sensitivity'], True)} "
        f"spec {f(r['val_specificity'], True)} AUROC {f(r['val_auroc'])}  [{r['trainable']}, "
        f"{r['seconds']:.1f} s]{'  *best' if r['best'] else ''}"
    )
    if r["unreadable"]:
        from enhancer.train.rundir import UNREADABLE  # fit has loaded the training modules by now

        shown = ", ".join(r["unreadable"][:5]) + (" ..." if len(r["unreadable"]) > 5 else "")
        click.echo(f"  {len(r['unreadable'])} unreadable image(s) skipped: {shown} (listed in {UNREADABLE})")


@main.command()
@click.option(
    "--job", "job_file", type=click.Path(exists=True, dir_okay=False), help="TOML job file ([evaluate] table)."
)
@click.option("--data", help="ImageFolder root (its test/ sub-folder when present) or an enhanced dataset directory.")
@click.option("--checkpoint", help="Checkpoint to evaluate (the research notebook's .pth, a state_dict or ours).")
@click.option("--arch", help="Architecture, when detection from the weights is not wanted.")
@click.option(
    "--field",
    type=click.Choice(["enhanced", "crop", "image"]),
    help="Image field of an enhanced dataset.  [default: enhanced]",
)
@click.option("--batch-size", type=int, help="Images per batch.  [default: 64]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Compute device.  [default: auto]")
@click.option("--num-workers", type=int, help="DataLoader workers.  [default: 2]")
@click.option("--json", "json_out", help="Also write the report as JSON to this file.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Any other spec setting.")
@reports_errors
def evaluate(job_file: str | None, settings: tuple[str, ...], json_out: str | None, **options: Any) -> None:
    """Loss, accuracy, sensitivity, specificity (PNEUMONIA positive), AUROC and confusion matrix of a checkpoint."""
    from enhancer.specs import EvaluateSpec, load_spec
    from enhancer.train.loop import run_evaluate
    from enhancer.train.metrics import format_metrics

    spec = load_spec(
        EvaluateSpec,
        job_file,
        table="evaluate" if job_file else None,
        overrides=overrides({**options, "json": json_out}, settings),
    )
    report = run_evaluate(spec)
    click.echo(f"{report['checkpoint']} on {report['data']}")
    click.echo(format_metrics(report["metrics"]))
    if report["unreadable"]:
        click.echo(
            f"{len(report['unreadable'])} unreadable image(s) not evaluated: "
            + ", ".join(u["path"] for u in report["unreadable"][:5])
        )
    if spec.json:
        click.echo(f"wrote {spec.json}")


@main.command()
@click.option("--job", "job_file", type=click.Path(exists=True, dir_okay=False), help="TOML job file ([cycle] table).")
@click.option("--data", help="ImageFolder the rounds enhance and train on (its train/ sub-folder when present).")
@click.option("--test", help="Held-out ImageFolder evaluated after every round (its test/ sub-folder when present).")
@click.option("--checkpoint", help="The model of round 0 (the research notebook's .pth files work).")
@click.option("--out", help="Output directory: round-1/, round-2/, ..., summary.md, summary.json.")
@click.option("--rounds", type=int, help="Number of enhance -> train -> evaluate rounds.  [default: 1]")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Step settings, e.g. train.epochs=5, train.field=crop, enhance.batch_size=32.",
)
@reports_errors
def cycle(job_file: str | None, settings: tuple[str, ...], **options: Any) -> None:
    """The research cycle, K rounds: enhance with the current model -> fine-tune on the enhanced data -> evaluate.

    Each round's outputs go to OUT/round-K/; a rerun skips finished steps. The summary table compares the rounds
    on the held-out test set (round 0: the starting checkpoint).
    """
    from enhancer.cycle import run_cycle
    from enhancer.specs import CycleSpec, load_spec

    spec = load_spec(CycleSpec, job_file, table="cycle" if job_file else None, overrides=overrides(options, settings))
    summary = run_cycle(spec, on_line=click.echo)
    click.echo(summary.markdown)
