"""Commands about models: the zoo, a checkpoint's description, demonstration checkpoints."""

from __future__ import annotations

import json
from typing import Any

import click

from enhancer.cli.app import main, reports_errors
from enhancer.cli.model_options import model_options, model_overrides


@main.command()
def models() -> None:
    """List the model zoo (architectures, heads, input, Grad-CAM target layer) and the other models --model takes."""
    from enhancer.models.registry import zoo_target_layer
    from enhancer.models.zoo import ZOO

    for name, info in ZOO.items():
        heads = f" heads: {', '.join(info.heads)} (default {info.default_head})" if info.heads else ""
        p = info.preprocessing
        click.echo(f"{name:<13} {info.description}")
        click.echo(
            f"{'':<13} input {p.in_chans}ch mean {list(p.mean)} std {list(p.std)}; target layer "
            f"{zoo_target_layer(name)};{heads}"
        )
    click.echo(
        "\nAlso: --model tv:NAME (any torchvision classifier, e.g. tv:densenet121, tv:efficientnet_b0), timm:NAME "
        "(with timm installed) or package.module:callable (your builder, called with num_classes=); "
        "`enhancer inspect CHECKPOINT --model M --layers` lists a model's target layers."
    )


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=str))
@click.option("--arch", default=None, help="Zoo architecture, when detection from the weights is not wanted.")
@model_options()
@click.option("--layers", is_flag=True, help="Also list the candidate target layers: name, type, output shape.")
@click.option(
    "--depth", default=3, show_default=True, help="With --layers: deepest dotted level listed (0: every module)."
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")
@reports_errors
def inspect(checkpoint: str, arch: str | None, layers: bool, depth: int, as_json: bool, **options: Any) -> None:
    """Describe a checkpoint: model, parameters, head, target layer, input preprocessing, metadata.

    Accepts the original research's files, bare state_dicts (any model with --model) and enhancer's own format.
    Files are read with torch.load(weights_only=True): a checkpoint that would run pickled code is refused.
    """
    from enhancer.models.inspection import candidate_layers, describe, open_model

    chosen = model_overrides(options)
    ck, target = open_model(
        checkpoint,
        arch=arch,
        model=chosen.get("model"),
        num_classes=chosen.get("num_classes"),
        target_layer=chosen.get("target_layer"),
        size=chosen.get("input.size"),
        mean=tuple(chosen.get("input.mean", ())),
        std=tuple(chosen.get("input.std", ())),
        channels=chosen.get("input.channels"),
    )
    report = describe(ck, target)
    rows, hidden = candidate_layers(target, depth) if layers else ([], 0)
    if layers:
        report["layers"] = rows
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    _print_report(report)
    if layers:
        _print_layers(rows, hidden, report["input"])


def _print_report(report: dict[str, Any]) -> None:
    click.echo(f"{report['path']}  ({report['format']} format, sha256 {report['sha256'][:16]}...)")
    seed_head = f"  head {report['head']}" if report["head"] else ""
    click.echo(f"  architecture   {report['architecture']}{seed_head}  (family {report['family']})")
    click.echo(f"  classes        {', '.join(report['class_names'])}")
    n = report["parameters"]
    click.echo(
        f"  parameters     {n['total']:,} total, {n['trainable_default']:,} trainable by default "
        f"({'+'.join(report['default_trainable_groups'])}), head {n['head']:,}"
    )
    p = report["input"]
    click.echo(f"  input          {p['in_chans']}ch {p['size'][0]}x{p['size'][1]}, mean {p['mean']}, std {p['std']}")
    how = "head-only split" if report["head_only_split"] else "no features/head split (needs the generic gradient)"
    kind = "default" if report["target_is_default"] else "chosen"
    shape = tuple(report["target_shape"])
    click.echo(f"  target layer   {report['target_layer']} -> {shape}  ({kind}; {how})")
    click.echo(f"  head           {report['head_layer']}")
    for key, value in report["meta"].items():
        click.echo(f"  {key:<14} {value}")


def _print_layers(rows: list[dict[str, Any]], hidden: int, preprocessing: dict[str, Any]) -> None:
    size = "x".join(map(str, preprocessing["size"]))
    click.echo(f"  candidate target layers (spatial output for one {size} input; * = target):")
    width = max((len(r["name"]) for r in rows), default=10)
    for r in rows:
        mark = "*" if r["target"] else " "
        click.echo(f"  {mark} {r['name']:<{width}}  {r['type']:<20} {tuple(r['shape'])}")
    if hidden:
        click.echo(f"  ... and {hidden} deeper ones (--depth 0 lists every module)")


@main.command("demo-model")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--arch", default="resnet101", show_default=True, help="Zoo architecture.")
@click.option("--seed", default=0, show_default=True, help="Random seed of the weights.")
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False),
    help="ImageFolder to calibrate on and fit the output layer to (e.g. the samples).  "
    "[default: synthetic X-ray-like images]",
)
@reports_errors
def demo_model(path: str, arch: str, seed: int, data: str | None) -> None:
    """Write a demonstration checkpoint (random weights, calibrated BatchNorm): heatmaps without a trained model.

    Its maps show the pipeline working; they are not medical evidence. Use a trained checkpoint for real work.
    """
    from enhancer.models.demo import save_demo_checkpoint

    click.echo(f"wrote demonstration checkpoint {save_demo_checkpoint(path, arch, seed=seed, data=data)} ({arch})")
