"""Writing the audit: ``audit.json`` (every figure, interval, baseline and verdict) and ``audit.md`` (the table a
reviewer reads). NaN (undefined) is written as JSON null.

Usage::

    write_json(document, out / "audit.json"); (out / "audit.md").write_text(markdown(document))
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from enhancer.atomic import atomic_write

CHECKS = ("randomisation", "deletion", "insertion", "road", "confidence", "repeatability", "localisation")


def _plain(value: Any) -> Any:
    """JSON-ready: NaN and infinities become None, tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def write_json(document: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(_plain(document), indent=2, allow_nan=False) + "\n")
    return path


def _num(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _ci(pair: Any) -> str:
    return "n/a" if not pair else f"{_num(pair[0])} to {_num(pair[1])}"


def _row(check: str, figure: str, value: Any, ci: Any, baseline: str, verdict: str = "") -> str:
    return f"| {check} | {figure} | {_num(value)} | {_ci(ci)} | {baseline} | {verdict} |"


def _randomisation_rows(r: dict[str, Any]) -> list[str]:
    base = f"random pairs: {_num(r['baseline_ssim'])} (upper {_num(r['baseline_ssim_hi'])})"
    rows = [
        _row("randomisation", f"SSIM, randomised down to {s['name']}", s["ssim"], s["ssim_ci"], base)
        for s in r["stages"]
    ]
    last = r["stages"][-1]
    rows.append(
        _row(
            "randomisation",
            "Spearman, fully randomised",
            last["spearman"],
            last["spearman_ci"],
            f"random pairs: {_num(r['baseline_spearman'])}",
            r["verdict"],
        )
    )
    return rows


def _paired_row(check: str, figure: str, section: dict[str, Any], name: str) -> str:
    base = f"random maps: {_num(section[f'random_{name}'])} ({section['better']} is better)"
    return _row(check, figure, section[name], section[f"{name}_ci"], base, section["verdict"])


def _localisation_rows(loc: dict[str, Any]) -> list[str]:
    chance = f"chance: {_num(loc['hit_chance'])}"
    rows = []
    for scope, part in (("all", loc), *loc["by_class"].items()):
        if not part["n"]:
            continue
        for key, label in (("miou", "mIoU (Otsu)"), ("hit_rate", "hit rate"), ("energy", "energy in region")):
            est = part[key]
            verdict = loc["verdict"] if scope == "all" and key == "hit_rate" else ""
            base = chance if key != "miou" else ""
            rows.append(
                _row(
                    "localisation",
                    f"{label}, {scope} (n={part['n']})",
                    est["value"],
                    [est["ci_low"], est["ci_high"]],
                    base,
                    verdict,
                )
            )
    return rows


def markdown(document: dict[str, Any]) -> str:
    """``audit.md``: what was audited, the overall verdict and one table of every figure with its 95% interval."""
    lines = [
        f"# Audit: {document['dataset']}",
        "",
        f"Checkpoint `{document['checkpoint']}`; {document['samples']} samples (seed {document['seed']}); maps: "
        f"{document['maps']}; {document['resamples']} bootstrap resamples for the 95% intervals; "
        f"{document['seconds']['total']:.0f} s on {document['device']}.",
        "",
        verdict_line(document),
        "",
        *table_lines(document),
        "",
        "Figures: " + ", ".join(f"`{f}`" for f in document.get("figures", [])),
        "",
    ]
    return "\n".join(lines)


def verdict_line(document: dict[str, Any]) -> str:
    """``**Verdict: PASS** (randomisation pass, ...)``: the overall verdict and each part's."""
    return (
        f"**Verdict: {document['verdict'].upper()}** ("
        + ", ".join(f"{k} {v}" for k, v in document["verdicts"].items())
        + ")"
    )


def table_lines(document: dict[str, Any]) -> list[str]:
    """The markdown table of every figure of the checks in ``document`` (an audit, or one class's audit)."""
    lines = [
        "| check | figure | value | 95% CI | baseline | verdict |",
        "|---|---|---:|---|---|---|",
    ]
    if "randomisation" in document:
        lines += _randomisation_rows(document["randomisation"])
    for kind in ("deletion", "insertion"):
        if kind in document:
            lines.append(_paired_row(kind, "AUC", document[kind], "auc"))
    if "road" in document:
        road = document["road"]
        lines.append(
            _row(
                "ROAD", "MoRF score change", road["morf"], road["morf_ci"], f"random maps: {_num(road['random_morf'])}"
            )
        )
        lines.append(
            _row(
                "ROAD", "LeRF score change", road["lerf"], road["lerf_ci"], f"random maps: {_num(road['random_lerf'])}"
            )
        )
        lines.append(_paired_row("ROAD", "(LeRF - MoRF) / 2", road, "combined"))
    if "confidence" in document:
        c = document["confidence"]
        lines.append(_paired_row("confidence", "score change (x * map)", c, "change"))
        lines.append(_row("confidence", "drop", c["drop"], c["drop_ci"], f"random maps: {_num(c['random_drop'])}"))
        lines.append(
            _row(
                "confidence",
                "increase (share)",
                c["increase"],
                c["increase_ci"],
                f"random maps: {_num(c['random_increase'])}",
            )
        )
    if "repeatability" in document:
        r = document["repeatability"]
        base = f"random pairs upper {_num(r['baseline_ssim_hi'])}"
        lines.append(_row("repeatability", "SSIM", r["ssim"], r["ssim_ci"], base, r["verdict"]))
        lines.append(_row("repeatability", "Spearman", r["spearman"], r["spearman_ci"], ""))
    if "localisation" in document:
        lines += _localisation_rows(document["localisation"])
    return lines
