"""Commands on an enhanced dataset: merge, verify, show, export; and fetching the sample X-rays."""

from __future__ import annotations

import click

from enhancer.cli.app import main, reports_errors


@main.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@reports_errors
def merge(out_dir: str) -> None:
    """Check all shards of OUT_DIR and write manifest.json, rejected.csv and the dataset card README.md.

    Every scanned image must be in exactly one shard, written or rejected; missing or incomplete shards are named
    with the command to rerun them (exit code 2).
    """
    from enhancer.enhance import merge_enhanced
    from enhancer.store.layout import CARD, MANIFEST, REJECTED

    manifest = merge_enhanced(out_dir)
    click.echo(
        f"{out_dir}: {manifest.n_written} written, {manifest.n_rejected} rejected of {manifest.n_in} "
        f"in {len(manifest.shards)} shard(s); {MANIFEST}, {REJECTED} and {CARD} written"
    )


@main.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--repair-list",
    is_flag=True,
    help="Print the ids of the shards to rerun on stdout, one per line, and on stderr the commands that rewrite them.",
)
@reports_errors
def verify(out_dir: str, repair_list: bool) -> None:
    """Deep check of an enhanced dataset: shard hashes against the manifest, every chunk readable, every sample's
    checksum (a damaged byte is named by shard, sample and field), invariants.

    Exit code 0 when everything holds, 1 with the list of problems otherwise.
    """
    from enhancer.store import verify as verify_dataset

    report = verify_dataset(out_dir)
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    if repair_list:
        _print_repairs(out_dir, sorted(report.rerun))
    if not report.ok:
        raise SystemExit(1)
    click.echo(f"{out_dir}: ok ({report.n_samples} samples checked)", err=repair_list)


def _print_repairs(out_dir: str, shard_ids: list[int]) -> None:
    """The shard ids to rerun (stdout) and the commands that do it (stderr)."""
    from enhancer.cli.repair import repair_commands
    from enhancer.store import Manifest

    for i in shard_ids:
        click.echo(str(i))
    if shard_ids:
        click.echo(f"{len(shard_ids)} shard(s) to rerun; to rewrite them and merge again:", err=True)
        for line in repair_commands(out_dir, Manifest.load(out_dir), shard_ids):
            click.echo(f"  {line}", err=True)


@main.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "png", default="grid.png", show_default=True, help="PNG file to write.")
@click.option("-n", "--samples", default=8, show_default=True, help="Number of samples (rows).")
@click.option("--good", default=0.85, show_default=True, help="Probability above which a correct row is 'Good'.")
@reports_errors
def show(out_dir: str, png: str, samples: int, good: float) -> None:
    """Draw a PNG grid: image | heatmap overlay | crop | enhanced, titled like the original research figures."""
    from enhancer.report.grid import draw_grid

    click.echo(f"wrote {draw_grid(out_dir, png, n=samples, good_threshold=good)}")


@main.command("export")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option(
    "--field", default="enhanced", show_default=True, help="Field to export (enhanced, crop, image, heatmap)."
)
@reports_errors
def export(out_dir: str, dest: str, field: str) -> None:
    """Export one field of an enhanced dataset as a PNG ImageFolder (DEST/<CLASS>/<name>.png)."""
    from enhancer.store import export_imagefolder

    n = export_imagefolder(out_dir, dest, field=field)
    click.echo(f"wrote {n} PNG files under {dest}")


@main.command("fetch-samples")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option(
    "--from",
    "source",
    type=click.Path(exists=True, file_okay=False),
    help="Copy from a local folder holding the 16 files instead of downloading them.  "
    "[default: $ENHANCER_SAMPLES when set, else the package index]",
)
@reports_errors
def fetch_samples(dest: str, source: str | None) -> None:
    """Get the 16 real sample chest X-rays (CC BY 4.0, Kermany et al.), check their hashes, lay out as ImageFolder."""
    from enhancer.data.samples import fetch_samples as fetch

    click.echo(f"16 sample X-rays (8 NORMAL, 8 PNEUMONIA) ready in {fetch(dest, source=source)}")
