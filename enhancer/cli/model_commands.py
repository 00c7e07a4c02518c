"""Commands about models: the zoo, a checkpoint's description, demonstration checkpoints."""

from __future__ import annotations

import json

import click

from enhancer.cli.app import main, reports_errors


@main.command()
def models() -> None:
    """List the model zoo: architectures, heads, input and Grad-CAM target layer."""
    from enhancer.models.zoo import ZOO

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
    from enhancer.models.checkpoints import load_checkpoint
    from enhancer.models.zoo import ZOO, count_parameters

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
    click.echo(
        f"  parameters     {total:,} total, {trainable:,} trainable by default "
        f"({'+'.join(report['default_trainable_groups'])}), head {head_params:,}"
    )
    p = ck.preprocessing
    click.echo(f"  input          {p.in_chans}ch {p.size[0]}x{p.size[1]}, mean {list(p.mean)}, std {list(p.std)}")
    click.echo(f"  Grad-CAM layer {ck.model.target_layer}")
    for key, value in ck.meta.items():
        click.echo(f"  {key:<14} {value}")


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
