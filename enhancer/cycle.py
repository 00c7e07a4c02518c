"""The research cycle, K rounds: enhance the training data with the current model -> fine-tune on the enhanced
data -> evaluate on a held-out test folder; a summary table across rounds.

Usage::

    enhancer cycle --data /data/chest_xray --test /data/chest_xray --checkpoint ResNet-101_GradCAM_Cropped_v4.pth \\
        --out cycles/c1 --rounds 2 --set train.epochs=5

    from enhancer.cycle import run_cycle
    summary = run_cycle(CycleSpec(data=..., test=..., checkpoint=..., out=...)); print(summary.markdown)

Layout of ``out``: ``round-0/eval.json`` (the starting checkpoint on the test set), and per round ``round-K/enhanced``
(the enhanced dataset made with round K-1's model), ``round-K/train`` (the fine-tuning run; its ``best.pt`` is the
model of round K), ``round-K/eval.json``, ``round-K/localisation`` (with a lung model or boxes in ``[cycle.enhance]``:
the test set's localisation metrics for the round's model, next to its accuracy in the summary), ``round-K/audit``
(a quick ``enhancer audit`` of the maps round K trained on, ``audit_samples`` samples: its verdicts go into the
summary); then ``summary.md`` and ``summary.json``. A rerun skips the finished steps: complete shards, merged
datasets and audits are kept and the training run resumes from ``last.pt``.
The cycle runs in one process (the training step does not start DDP here; use ``enhancer train`` for that).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enhancer.audit.run import run_audit
from enhancer.enhance import merge_enhanced, run_enhance
from enhancer.provenance import provenance
from enhancer.specs import AuditSpec, CycleSpec, EvaluateSpec, SpecError
from enhancer.store.layout import MANIFEST, is_merged
from enhancer.train import rundir
from enhancer.train.loop import fit, run_evaluate

log = logging.getLogger(__name__)

COLUMNS = ("round", "loss", "accuracy", "sensitivity", "specificity", "auroc", "best_epoch", "checkpoint")
# Localisation of each round's model on the test set (enhance.lung_model / enhance.boxes): column -> header
LOCALISATION = {
    "lung_energy": "lung energy",
    "lung_hit": "lung hit %",
    "box_energy": "box energy",
    "box_hit": "box hit %",
    "box_iou": "box IoU",
}


@dataclass(frozen=True)
class CycleSummary:
    out: str
    rows: list[dict[str, Any]]
    markdown: str


def split_dir(path: str, split: str) -> str:
    """``path/split`` when that folder exists (the seed's train/test/val layout), else ``path``."""
    return str(Path(path) / split) if (Path(path) / split).is_dir() else path


def _enhance(spec: CycleSpec, data: str, out: Path, checkpoint: str) -> Path:
    if is_merged(out):
        return out  # merged by an earlier run of this cycle
    espec = dataclasses.replace(spec.enhance, data=data, out=str(out), checkpoint=checkpoint, shard_id=0, num_shards=1)
    run_enhance(espec, progress=False)
    merge_enhanced(out)
    return out


def _localise(spec: CycleSpec, test_data: str, out: Path, checkpoint: str) -> dict[str, Any]:
    """Localisation means of ``checkpoint`` on the test set (``enhancer.explain.localisation``), when the cycle's
    enhance settings name a lung model or boxes: an enhance pass storing only the measured fields, then its merge
    summary."""
    if not (spec.enhance.lung_model or spec.enhance.boxes):
        return {}
    if not is_merged(out):
        espec = dataclasses.replace(
            spec.enhance,
            data=test_data,
            out=str(out),
            checkpoint=checkpoint,
            shard_id=0,
            num_shards=1,
            fields=(),
            lung_mask_in_enhanced=False,
        )
        run_enhance(espec, progress=False)
        merge_enhanced(out)
    summary = json.loads((out / MANIFEST).read_text()).get("localisation", {})
    return {k: summary[k]["mean"] for k in LOCALISATION if k in summary}


def _audit(spec: CycleSpec, enhanced: Path, data: str, checkpoint: str, out: Path) -> dict[str, Any]:
    """Verdicts of a quick audit of the maps in ``enhanced`` (made with ``checkpoint``); {} with audit_samples 0."""
    if not spec.audit_samples:
        return {}
    if not (out / "audit.json").is_file():  # a rerun keeps the finished audit
        device = spec.train.device if spec.enhance.device == "auto" else spec.enhance.device
        aspec = AuditSpec(
            dataset=str(enhanced),
            checkpoint=checkpoint,
            out=str(out),
            data=data,
            n_samples=spec.audit_samples,
            device=device,
        )
        run_audit(aspec, progress=False)
    document = json.loads((out / "audit.json").read_text())
    return {"audit": document["verdict"], "audit_verdicts": document["verdicts"]}


def _evaluate(spec: CycleSpec, data: str, checkpoint: str, json_path: Path, field: str = "enhanced") -> dict[str, Any]:
    espec = EvaluateSpec(
        data=data,
        checkpoint=checkpoint,
        field=field,
        device=spec.train.device,
        num_workers=min(spec.train.num_workers, 2),
        json=str(json_path),
    )
    report = run_evaluate(espec)
    if report["activation"] != "softmax":
        raise SpecError(
            f"{checkpoint}: a model with one sigmoid per class (it records activation {report['activation']!r}); "
            "enhancer cycle runs single-label rounds of a softmax model only; for multi-label data run enhance "
            "--labels, train --loss bce, evaluate and audit one by one (README: Multi-label datasets)"
        )
    return report["metrics"]


def _row(k: int, metrics: dict[str, Any], checkpoint: str, best_epoch: int | None, **extra: Any) -> dict[str, Any]:
    return {
        "round": k,
        **{c: metrics.get(c) for c in COLUMNS[1:6]},
        "best_epoch": best_epoch,
        "checkpoint": checkpoint,
        "confusion_matrix": metrics["confusion_matrix"],
        **extra,
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def cell(c: str, v: Any) -> str:
        if v is None:
            return "n/a"
        if c in ("accuracy", "sensitivity", "specificity"):
            return f"{100 * v:.2f}"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    has_enh = any("enhanced_test_accuracy" in r for r in rows)
    loc = [c for c in LOCALISATION if any(c in r for r in rows)]
    audit = ["audit"] if any("audit" in r for r in rows) else []
    cols = [*COLUMNS[:-1], *(["enhanced_test_accuracy"] if has_enh else []), *loc, *audit, COLUMNS[-1]]
    head = [
        "round",
        "test loss",
        "acc %",
        "sens %",
        "spec %",
        "AUROC",
        "best epoch",
        *(["acc % (enhanced test)"] if has_enh else []),
        *(LOCALISATION[c] for c in loc),
        *(["maps audit"] if audit else []),
        "checkpoint",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            cell("accuracy" if c in ("enhanced_test_accuracy", "lung_hit", "box_hit") else c, r.get(c)) for c in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_cycle(spec: CycleSpec, *, on_line: Callable[[str], None] | None = None) -> CycleSummary:
    """Run (or finish) ``spec.rounds`` rounds; returns the summary, also written to ``out/summary.{md,json}``."""
    say = on_line or (lambda line: log.info("%s", line))
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    train_data = split_dir(spec.data, "train")
    test_data = split_dir(spec.test, "test")
    checkpoint = str(Path(spec.checkpoint).resolve())
    (out / "round-0").mkdir(exist_ok=True)
    metrics = _evaluate(spec, test_data, checkpoint, out / "round-0" / "eval.json")
    loc = _localise(spec, test_data, out / "round-0" / "localisation", checkpoint)
    rows = [_row(0, metrics, checkpoint, None, **loc)]
    say(f"round 0 (starting model): test accuracy {_pct(metrics['accuracy'])}")
    for k in range(1, spec.rounds + 1):
        rd = out / f"round-{k}"
        enhanced = _enhance(spec, train_data, rd / "enhanced", checkpoint)
        say(f"round {k}: enhanced {train_data} with {checkpoint} -> {enhanced}")
        extra: dict[str, Any] = _audit(spec, enhanced, train_data, checkpoint, rd / "audit")
        if extra:
            say(f"round {k}: audit of its maps: {extra['audit']} ({rd / 'audit' / 'audit.md'})")
        if spec.enhance_test:
            test_enh = _enhance(spec, test_data, rd / "test-enhanced", checkpoint)
        tspec = dataclasses.replace(spec.train, data=str(enhanced), out=str(rd / "train"), init=checkpoint)
        result = fit(tspec)
        checkpoint = str((rd / "train" / rundir.BEST).resolve())
        say(f"round {k}: {result.line()}")
        metrics = _evaluate(spec, test_data, checkpoint, rd / "eval.json")
        if spec.enhance_test:
            enh_metrics = _evaluate(spec, str(test_enh), checkpoint, rd / "eval-enhanced-test.json", spec.train.field)
            extra = {"enhanced_test_accuracy": enh_metrics["accuracy"], "enhanced_test_loss": enh_metrics["loss"]}
        extra.update(_localise(spec, test_data, rd / "localisation", checkpoint))
        rows.append(_row(k, metrics, checkpoint, result.best_epoch, **extra))
        say(f"round {k}: test accuracy {_pct(metrics['accuracy'])}")
    table = markdown_table(rows)
    document = {"rounds": rows, "spec": spec.to_dict(), **provenance()}
    (out / "summary.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "summary.md").write_text(f"# Cycle summary: {out}\n\nTest set: {test_data}\n\n{table}\n{audit_lines(rows)}")
    return CycleSummary(str(out), rows, table)


def audit_lines(rows: list[dict[str, Any]]) -> str:
    """The per-check verdicts of each round's maps audit (the maps the round trained on), as a markdown list."""
    lines = [
        f"- round {r['round']}: "
        + ", ".join(f"{k} {v}" for k, v in r["audit_verdicts"].items())
        + f" (round-{r['round']}/audit/audit.md)"
        for r in rows
        if "audit_verdicts" in r
    ]
    return "\n## Maps audit (the maps each round trained on)\n\n" + "\n".join(lines) + "\n" if lines else ""


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"
