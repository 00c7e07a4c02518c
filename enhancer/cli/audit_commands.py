"""The audit command: can the heatmaps of an enhanced dataset be trusted?"""

from __future__ import annotations

from typing import Any

import click

from enhancer.cli.app import EnhancerError, main, overrides, reports_errors
from enhancer.cli.options import set_option, spec_option
from enhancer.specs import AuditSpec


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--job", "job_file", type=click.Path(exists=True, dir_okay=False), help="TOML job file ([audit] table).")
@spec_option(AuditSpec, "checkpoint", "The checkpoint that made the dataset's maps.")
@spec_option(AuditSpec, "out", "Output folder: audit.json, audit.md and PNG figures.")
@spec_option(AuditSpec, "data", "The original ImageFolder, when the dataset stores no image field.")
@spec_option(AuditSpec, "masks", "Folder of lesion masks, one <stem>.png per image: localisation.")
@spec_option(AuditSpec, "boxes", "Lesion boxes, RSNA CSV or path,x0,y0,x1,y1 (as enhance --boxes): localisation.")
@spec_option(AuditSpec, "n_samples", "Samples audited, a seeded random subset; 0 = all.", flag="--samples")
@spec_option(AuditSpec, "second_checkpoint", "Another seed or round of the model: repeatability of the maps.")
@spec_option(AuditSpec, "seed", "Seed of the subset, randomisation, random maps and bootstrap.")
@spec_option(AuditSpec, "batch_size", "Images per model pass.")
@spec_option(AuditSpec, "device", "Compute device.")
@spec_option(
    AuditSpec,
    "checks",
    "Checks to run, comma-separated (repeatability needs --second-checkpoint, localisation --masks or --boxes).",
)
@click.option(
    "--class",
    "class_names",
    multiple=True,
    metavar="NAME",
    help="A dataset of maps per class (enhanced with --explain): audit this class's maps; repeatable or "
    "comma-separated.  [default: every class that has maps]",
)
@set_option("Any other audit setting, e.g. steps=20, baseline=mean, score=logit, resamples=2000.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar per check.")
@reports_errors
def audit(
    dataset: str,
    job_file: str | None,
    class_names: tuple[str, ...],
    settings: tuple[str, ...],
    progress: bool,
    **options: Any,
) -> None:
    """Audit the maps of an enhanced DATASET: model randomisation (do the maps depend on the weights?),
    faithfulness (deletion / insertion AUC, ROAD, confidence change against random maps), repeatability with a
    second checkpoint, and localisation against lesion masks or boxes (mIoU after Otsu, hit rate, energy), each
    with a 95% bootstrap interval and a verdict.

    A dataset of maps per class (multi-label, enhanced with --explain) is audited class by class: each class on the
    samples with a map of it, its score under the dataset's activation (sigmoid or softmax), its findings' boxes
    where the box file names them (NIH BBox list); audit.json holds one audit per class under "classes".

    Writes OUT/audit.json, OUT/audit.md and PNG figures; exit code 0 whatever the verdict (read it from
    audit.json). Settings: command line > ENHANCER_* environment > job file > defaults.
    """
    from enhancer.audit.run import AuditError, run_audit
    from enhancer.specs import load_spec

    spec = load_spec(
        AuditSpec,
        job_file,
        table="audit" if job_file else None,
        overrides={**overrides(options, settings), **_classes(class_names), "dataset": dataset},
    )
    try:
        result = run_audit(spec, progress=progress)
    except AuditError as exc:
        raise EnhancerError(str(exc)) from None
    click.echo(result.markdown)
    click.echo(f"wrote {result.out}/audit.json, audit.md and {len(result.document['figures'])} figure(s)")


def _classes(given: tuple[str, ...]) -> dict[str, Any]:
    """``--class A --class B,C`` as the spec's ``classes``; nothing when not given (the job file's value holds)."""
    names = tuple(n.strip() for item in given for n in item.split(",") if n.strip())
    return {"classes": names} if names else {}
