"""Commands of the research cycle's training side: train, evaluate, cycle."""

from __future__ import annotations

from typing import Any

import click

from enhancer.cli.app import main, overrides, reports_errors
from enhancer.cli.model_options import model_options, model_overrides
from enhancer.cli.options import label_options, set_option, spec_option
from enhancer.specs import CycleSpec, EvaluateSpec, TrainSpec


@main.command()
@click.option("--job", "job_file", type=click.Path(exists=True, dir_okay=False), help="TOML job file ([train] table).")
@spec_option(
    TrainSpec, "data", "ImageFolder root (its train/ sub-folder when present) or an enhanced dataset directory."
)
@spec_option(TrainSpec, "field", "Image field of an enhanced dataset.")
@label_options(TrainSpec)
@spec_option(
    TrainSpec,
    "loss",
    "ce: softmax cross-entropy (the seed's); bce: one sigmoid per class, masked binary cross-entropy "
    "(multi-label); auto: bce for multi-label data.",
)
@spec_option(
    TrainSpec, "class_weights", "bce: prevalence weighs each class's positives by its negatives/positives ratio."
)
@spec_option(TrainSpec, "arch", "Architecture (see `enhancer models`); none: the --init checkpoint's, else resnet101.")
@spec_option(TrainSpec, "head", "Seed head of a fresh ResNet (220k, 10k, 15k); none: the architecture's.")
@spec_option(TrainSpec, "input_size", "Model input size; none: the --init checkpoint's, else 224.")
@spec_option(
    TrainSpec,
    "init",
    "Start from CHECKPOINT (seed .pth files work), imagenet, random or auto (imagenet when the architecture has "
    "weights, else random).",
)
@spec_option(
    TrainSpec,
    "unfreeze",
    "Trainable groups, comma-separated: head, fc, layer4, layer4[2], all, ...; none: the architecture's "
    "(head+fc+layer4 for the seed ResNets).",
)
@spec_option(
    TrainSpec, "unfreeze_schedule", "Groups unfrozen one at a time, comma-separated, e.g. 'layer4[1],layer4[0]'."
)
@spec_option(TrainSpec, "unfreeze_every", "Epochs between two steps of --unfreeze-schedule.")
@spec_option(TrainSpec, "out", "Run directory (checkpoints, metrics, curves); an existing run there is resumed.")
@spec_option(TrainSpec, "epochs", "Maximum number of epochs.")
@spec_option(TrainSpec, "batch_size", "Global batch size (split over DDP ranks).")
@spec_option(TrainSpec, "lr", "RAdam learning rate.")
@spec_option(TrainSpec, "weight_decay", "RAdam weight decay.")
@spec_option(TrainSpec, "val_fraction", "Stratified validation split of the training data.")
@spec_option(TrainSpec, "patience", "Early stopping patience in epochs (0: off).")
@spec_option(TrainSpec, "seed", "Seed of the split, the initialisation and every epoch.")
@spec_option(TrainSpec, "augment", "The seed's training augmentations.")
@spec_option(TrainSpec, "device", "Compute device.")
@spec_option(TrainSpec, "num_workers", "DataLoader workers per process.")
@spec_option(TrainSpec, "amp", "bf16 autocast + channels_last on CUDA.")
@spec_option(TrainSpec, "resume", "Require / refuse an existing run in --out; none: resume it when there is one.")
@set_option("Any other spec setting, e.g. t_max=10, min_delta=0.002, crop_fraction=0.8.")
@reports_errors
def train(job_file: str | None, settings: tuple[str, ...], **options: Any) -> None:
    """Train or fine-tune a classifier with the seed recipe, early-stopped on a validation split (never the test set).

    RAdam lr 1e-4 wd 1e-3, cosine T_max 15, batch 32, up to 20 epochs, patience 5 / min_delta 0.001 with the best
    weights restored. Several processes: `torchrun --nproc-per-node N -m enhancer.cli train ...` or `srun` tasks
    (gloo on CPU, NCCL on GPU); only rank 0 writes. Writes OUT/best.pt, last.pt, metrics.csv, curves.png.
    """
    from enhancer.specs import load_spec
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
@spec_option(
    EvaluateSpec, "data", "ImageFolder root (its test/ sub-folder when present) or an enhanced dataset directory."
)
@spec_option(EvaluateSpec, "checkpoint", "Checkpoint to evaluate (the research notebook's .pth, a state_dict or ours).")
@spec_option(
    EvaluateSpec, "arch", "Zoo architecture (see `enhancer models`; or use --model); none: detected from the weights."
)
@model_options(EvaluateSpec, target_layer=False)
@spec_option(EvaluateSpec, "field", "Image field of an enhanced dataset.")
@label_options(EvaluateSpec)
@spec_option(
    EvaluateSpec,
    "head",
    "Output activation: softmax (one class per image) or sigmoid (one yes/no per class: per-class AUROC and "
    "average precision); auto: what the checkpoint records, else softmax.",
)
@spec_option(EvaluateSpec, "threshold", "sigmoid: probability from which a class counts as predicted.")
@spec_option(EvaluateSpec, "batch_size", "Images per batch.")
@spec_option(EvaluateSpec, "device", "Compute device.")
@spec_option(EvaluateSpec, "num_workers", "DataLoader workers.")
@spec_option(EvaluateSpec, "json", "Also write the report as JSON to this file.")
@set_option()
@reports_errors
def evaluate(job_file: str | None, settings: tuple[str, ...], **options: Any) -> None:
    """Loss, accuracy, sensitivity, specificity (PNEUMONIA positive), AUROC and confusion matrix of a checkpoint.

    A sigmoid model (multi-label, --labels): per-class AUROC and average precision with their means, and the counts
    at --threshold."""
    from enhancer.specs import load_spec
    from enhancer.train.loop import run_evaluate
    from enhancer.train.metrics import format_metrics

    chosen = model_overrides(options)
    spec = load_spec(
        EvaluateSpec,
        job_file,
        table="evaluate" if job_file else None,
        overrides={**chosen, **overrides(options, settings)},
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
@spec_option(CycleSpec, "data", "ImageFolder the rounds enhance and train on (its train/ sub-folder when present).")
@spec_option(CycleSpec, "test", "Held-out ImageFolder evaluated after every round (its test/ sub-folder when present).")
@spec_option(CycleSpec, "checkpoint", "The model of round 0 (the research notebook's .pth files work).")
@spec_option(CycleSpec, "out", "Output directory: round-1/, round-2/, ..., summary.md, summary.json.")
@spec_option(CycleSpec, "rounds", "Number of enhance -> train -> evaluate rounds.")
@set_option("Step settings, e.g. train.epochs=5, train.field=crop, enhance.batch_size=32.")
@reports_errors
def cycle(job_file: str | None, settings: tuple[str, ...], **options: Any) -> None:
    """The research cycle, K rounds: enhance with the current model -> fine-tune on the enhanced data -> evaluate.

    Each round's outputs go to OUT/round-K/; a rerun skips finished steps. The summary table compares the rounds
    on the held-out test set (round 0: the starting checkpoint).
    """
    from enhancer.cycle import run_cycle
    from enhancer.specs import load_spec

    spec = load_spec(CycleSpec, job_file, table="cycle" if job_file else None, overrides=overrides(options, settings))
    summary = run_cycle(spec, on_line=click.echo)
    click.echo(summary.markdown)
