"""The audit command: can the heatmaps of an enhanced dataset be trusted?"""

from __future__ import annotations

from typing import Any

import click

from enhancer.cli.app import EnhancerError, main, overrides, reports_errors


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--job", "job_file", type=click.Path(exists=True, dir_okay=False), help="TOML job file ([audit] table).")
@click.option("--checkpoint", help="The checkpoint that made the dataset's maps (required).")
@click.option("--out", help="Output folder: audit.json, audit.md and PNG figures (required).")
@click.option("--data", help="The original ImageFolder, when the dataset stores no image field.  [default: none]")
@click.option("--masks", help="Folder of lesion masks, one <stem>.png per image: localisation.  [default: none]")
@click.option(
    "--boxes", help="Lesion boxes, RSNA CSV or path,x0,y0,x1,y1 (as enhance --boxes): localisation.  [default: none]"
)
@click.option(
    "--samples", "n_samples", type=int, help="Samples audited, a seeded random subset; 0 = all.  [default: 64]"
)
@click.option(
    "--second-checkpoint", help="Another seed or round of the model: repeatability of the maps.  [default: none]"
)
@click.option("--seed", type=int, help="Seed of the subset, randomisation, random maps and bootstrap.  [default: 0]")
@click.option("--batch-size", type=int, help="Images per model pass.  [default: 16]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Compute device.  [default: auto]")
@click.option(
    "--checks",
    help="Checks to run, comma-separated: randomisation, faithfulness, repeatability, localisation.  [default: all]",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other audit setting, e.g. steps=20, baseline=mean, score=logit, resamples=2000.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar per check.")
@reports_errors
def audit(dataset: str, job_file: str | None, settings: tuple[str, ...], progress: bool, **options: Any) -> None:
    """Audit the maps of an enhanced DATASET: model randomisation (do the maps depend on the weights?),
    faithfulness (deletion / insertion AUC, ROAD, confidence change against random maps), repeatability with a
    second checkpoint, and localisation against lesion masks or boxes (mIoU after Otsu, hit rate, energy), each
    with a 95% bootstrap interval and a verdict.

    Writes OUT/audit.json, OUT/audit.md and PNG figures; exit code 0 whatever the verdict (read it from
    audit.json). Settings: command line > ENHANCER_* environment > job file > defaults.
    """
    from enhancer.audit.run import AuditError, run_audit
    from enhancer.specs import AuditSpec, load_spec

    spec = load_spec(
        AuditSpec,
        job_file,
        table="audit" if job_file else None,
        overrides={**overrides(options, settings), "dataset": dataset},
    )
    try:
        result = run_audit(spec, progress=progress)
    except AuditError as exc:
        raise EnhancerError(str(exc)) from None
    click.echo(result.markdown)
    click.echo(f"wrote {result.out}/audit.json, audit.md and {len(result.document['figures'])} figure(s)")
