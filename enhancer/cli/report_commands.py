"""``enhancer report``: a static HTML report of an enhanced dataset (gallery, summary, cycle rounds, audit)."""

from __future__ import annotations

import click

from enhancer.cli.app import EnhancerError, main, reports_errors


@main.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Report folder to write.")
@click.option(
    "--limit",
    default=1000,
    show_default=True,
    help="Samples in the gallery (with thumbnails): every wrong prediction first, then correct ones sampled in "
    "proportion to their class. 0: all samples. The summary always covers every sample.",
)
@click.option(
    "--good", default=0.85, show_default=True, help="Probability at or above which a correct sample is 'Good'."
)
@click.option(
    "--cycle",
    "cycle",
    type=click.Path(exists=True, file_okay=False),
    help="Output folder of `enhancer cycle`: per-round curves from its summary.json.",
)
@click.option(
    "--audit",
    "audit",
    type=click.Path(exists=True, file_okay=False),
    help="Output folder of `enhancer audit`: its verdicts (audit.json) and plots (PNG).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the stratified sample.")
@click.option("--workers", type=int, help="Threads encoding thumbnails.  [default: CPU count, at most 8]")
@reports_errors
def report(
    dataset_dir: str,
    out: str,
    limit: int,
    good: float,
    cycle: str | None,
    audit: str | None,
    seed: int,
    workers: int | None,
) -> None:
    """Write a static HTML report of DATASET_DIR (a merged enhanced dataset) into --out; open OUT/index.html.

    It works offline from the folder (no server, no network): a gallery with filters (true class, prediction,
    correct / wrong / Good, metric ranges), sorting and a page per sample; counts with the rejected files, class
    balance, confusion matrix, probability and metric distributions as charts. A dataset of maps per class
    (multi-label, enhanced with --explain) gets a section per explained class: thumbnails of its maps, its targets,
    localisation metrics and, with --audit, its audit.
    """
    from enhancer.report.errors import ReportError
    from enhancer.report.site import write_report

    try:
        result = write_report(
            dataset_dir, out, audit=audit, cycle=cycle, limit=limit, good=good, seed=seed, workers=workers
        )
    except ReportError as exc:
        raise EnhancerError(str(exc)) from None
    click.echo(result.line())
