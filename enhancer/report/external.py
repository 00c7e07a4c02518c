"""Report sections from other commands' outputs: the rounds of ``enhancer cycle`` and the verdicts of
``enhancer audit``.

Usage::

    rounds = load_cycle("cycles/c1")            # summary.json's rows
    html = cycle_html(rounds)
    audit = load_audit("audit/")                # audit.json, read defensively
    html = audit_html(audit, copy_audit_images("audit/", "report/"))

The audit's keys are those its issue fixes (``randomisation.stages[].ssim`` / ``.baseline_ssim_hi`` / ``.verdict``,
``deletion.auc``, ``insertion.auc``, ``road.*``, ``localisation.miou`` / ``.hit_rate`` as ``{value, ci_low,
ci_high}``, ``verdict``); a missing key shows as "n/a" rather than failing, and figures under other keys are listed
as they are.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from html import escape
from pathlib import Path
from typing import Any

from enhancer.report.errors import ReportError
from enhancer.report.sections import section, table
from enhancer.report.svg import line_chart

QUALITY = ("accuracy", "sensitivity", "specificity", "auroc", "enhanced_test_accuracy")
LOCALISATION = ("lung_energy", "lung_hit", "box_energy", "box_hit", "box_iou")
AUDIT_KNOWN = ("verdict", "randomisation", "deletion", "insertion", "road", "localisation")
MAX_LISTED = 60  # scalar figures listed per audit part


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ReportError(f"{path} not found: pass the output directory of {what}")
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} cannot be read as JSON ({exc}); rerun {what} to rewrite it") from None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def fmt(v: Any) -> str:
    """A figure for a table cell (escaped): numbers to 4 significant digits, missing as n/a."""
    number = _number(v)
    if number is not None:
        return str(int(number)) if isinstance(v, int) else f"{number:.4g}"
    return "n/a" if v is None else escape(str(v))


def verdict_badge(v: Any) -> str:
    text = "n/a" if v is None else str(v)
    kind = {"pass": "pass", "passed": "pass", "ok": "pass", "fail": "fail", "failed": "fail"}.get(text.lower(), "other")
    return f'<span class="verdict verdict-{kind}">{escape(text)}</span>'


def load_cycle(cycle_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of ``summary.json`` written by ``enhancer cycle`` (round 0 = the starting model)."""
    doc = _read_json(Path(cycle_dir) / "summary.json", "enhancer cycle")
    rounds = doc.get("rounds") if isinstance(doc, dict) else None
    if not isinstance(rounds, list) or not all(isinstance(r, dict) for r in rounds):
        raise ReportError(f"{Path(cycle_dir) / 'summary.json'} has no list of rounds; rerun enhancer cycle")
    return rounds


def cycle_html(rounds: list[dict[str, Any]]) -> str:
    x = [r.get("round", k) for k, r in enumerate(rounds)]
    charts = []
    quality = {
        c: [_number(r.get(c)) for r in rounds] for c in QUALITY if any(_number(r.get(c)) is not None for r in rounds)
    }
    if quality:
        charts.append(line_chart(x, quality, title="Test metrics per round", xlabel="round", y_range=(0.0, 1.0)))
    if any(_number(r.get("loss")) is not None for r in rounds):
        loss = {"test loss": [_number(r.get("loss")) for r in rounds]}
        charts.append(line_chart(x, loss, title="Test loss per round", xlabel="round"))
    loc = {
        c: [_number(r.get(c)) for r in rounds]
        for c in LOCALISATION
        if any(_number(r.get(c)) is not None for r in rounds)
    }
    if loc:
        charts.append(line_chart(x, loc, title="Localisation per round", xlabel="round", y_range=(0.0, 1.0)))
    cols = ["round", "loss", *[c for c in QUALITY if c in quality], *loc, "best_epoch"]
    rows = [[fmt(r.get(c)) for c in cols] for r in rounds]
    return section("cycle", "Cycle rounds", "".join(charts) + table([escape(c) for c in cols], rows))


def load_audit(audit_dir: str | os.PathLike[str]) -> dict[str, Any]:
    doc = _read_json(Path(audit_dir) / "audit.json", "enhancer audit")
    if not isinstance(doc, dict):
        raise ReportError(f"{Path(audit_dir) / 'audit.json'} is not a JSON object; rerun enhancer audit")
    return doc


def copy_audit_images(audit_dir: str | os.PathLike[str], report_dir: str | os.PathLike[str]) -> list[str]:
    """Copy the audit's PNGs into ``report_dir/audit/``; returns their paths relative to the report."""
    audit_dir, report_dir = Path(audit_dir), Path(report_dir)
    found = []
    for src in sorted(audit_dir.rglob("*.png")):
        rel = Path("audit") / src.relative_to(audit_dir)
        (report_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, report_dir / rel)
        found.append(rel.as_posix())
    return found


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar leaves of nested dicts/lists as (dotted key, value)."""
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, list):
        return [kv for k, v in enumerate(obj) for kv in flatten(v, f"{prefix}[{k}]")]
    return [(prefix, obj)]


def _randomisation_html(part: Any) -> str:
    if not isinstance(part, dict):
        return "<p>randomisation: n/a</p>"
    stages = [s for s in part.get("stages") or [] if isinstance(s, dict)]
    names = [str(s.get("stage") or s.get("name") or s.get("layer") or k) for k, s in enumerate(stages)]
    rows = [
        [
            escape(n),
            fmt(s.get("ssim")),
            fmt(s.get("baseline_ssim_hi")),
            fmt(s.get("spearman")),
            verdict_badge(s.get("verdict")),
        ]
        for n, s in zip(names, stages, strict=True)
    ]
    chart = ""
    if stages:
        series = {"SSIM": [_number(s.get("ssim")) for s in stages]}
        series["random pairs, upper bound"] = [_number(s.get("baseline_ssim_hi")) for s in stages]
        chart = line_chart(list(range(len(stages))), series, title="Randomisation: SSIM per stage", xlabel="stage")
    head = ["stage", "SSIM", "baseline SSIM (upper)", "Spearman", "verdict"]
    return f"<h3>Model randomisation {verdict_badge(part.get('verdict'))}</h3>{chart}" + table(
        head, rows, cls="audit-stages"
    )


def _interval_rows(part: Any) -> list[list[str]]:
    if not isinstance(part, dict):
        return []
    rows = []
    for key, v in part.items():
        if isinstance(v, dict) and "value" in v:
            ci = f"{fmt(v.get('ci_low'))} \u2013 {fmt(v.get('ci_high'))}"
            rows.append([escape(str(key)), fmt(v.get("value")), ci])
    return rows


def audit_parts(audit: dict[str, Any]) -> list[str]:
    """The randomisation, faithfulness and localisation tables of an audit (or of one class's audit)."""
    parts = [_randomisation_html(audit.get("randomisation"))]
    faithful = [[escape(k), fmt(v)] for k, v in flatten({p: audit.get(p) for p in ("deletion", "insertion", "road")})]
    parts.append("<h3>Faithfulness</h3>" + table(["figure", "value"], faithful[:MAX_LISTED], cls="audit-faithfulness"))
    loc = _interval_rows(audit.get("localisation"))
    parts.append("<h3>Localisation</h3>" + table(["metric", "value", "95% CI"], loc or [["n/a", "", ""]]))
    return parts


def figures_html(images: list[str]) -> str:
    figures = "".join(
        f'<figure><img src="{escape(p)}" alt="{escape(p)}" loading="lazy"><figcaption>{escape(Path(p).name)}'
        "</figcaption></figure>"
        for p in images
    )
    return f'<div class="figures">{figures}</div>' if figures else ""


def _class_verdicts_html(audit: dict[str, Any]) -> str:
    """An audit of maps per class: each class's verdict and checks, linked to its section of the report."""
    rows = []
    for name, part in audit["classes"].items():
        part = part if isinstance(part, dict) else {}
        checks = part.get("verdicts") if isinstance(part.get("verdicts"), dict) else {}
        anchor = f"#class-{part['class_id']}" if isinstance(part.get("class_id"), int) else ""
        cell = f'<a href="{anchor}">{escape(str(name))}</a>' if anchor else escape(str(name))
        listed = ", ".join(f"{escape(str(k))} {escape(str(v))}" for k, v in checks.items())
        rows.append([cell, fmt(part.get("samples")), verdict_badge(part.get("verdict")), listed])
    skipped = audit.get("classes_not_audited")
    rows += [[escape(str(k)), "", "not audited", escape(str(v))] for k, v in (skipped or {}).items()]
    return table(["class", "samples", "verdict", "checks"], rows, cls="audit-classes")


def audit_html(audit: dict[str, Any], images: list[str]) -> str:
    parts = [f"<p>Overall verdict: {verdict_badge(audit.get('verdict'))}</p>"]
    if isinstance(audit.get("classes"), dict):  # one audit per class: the details are in the classes' sections
        parts.append(_class_verdicts_html(audit))
        own = {
            f"audit/{f}"
            for part in audit["classes"].values()
            if isinstance(part, dict)
            for f in part.get("figures") or []
        }
        return section("audit", "Audit", "".join(parts) + figures_html([p for p in images if p not in own]))
    parts += audit_parts(audit)
    other = [[escape(k), fmt(v)] for k, v in flatten({k: v for k, v in audit.items() if k not in AUDIT_KNOWN})]
    if other:
        parts.append("<h3>Other figures</h3>" + table(["figure", "value"], other[:MAX_LISTED]))
    return section("audit", "Audit", "".join(parts) + figures_html(images))
