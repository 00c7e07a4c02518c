"""The audit of a dataset of maps per class (multi-label): which classes, their score, the document that gathers
one audit per class, and its ``audit.md``.

Usage::

    wanted, skipped = audited_classes(("Effusion",), class_names, maps_per_class("enhanced/"), "enhanced/")
    score = class_score("prob", cam_settings)          # "logit" where the dataset's maps explain the logit
    document = {**head, **class_document(per_class_docs, skipped, activation="sigmoid", score=score)}
    text = class_markdown(document)

Each class is audited like a dataset of one map per image: its samples are those with a map of it, its maps those
maps, the explained class that class (randomisation, faithfulness and repeatability recompute that class's maps and
score), and localisation uses that finding's boxes where the box file names findings (NIH ``BBox_List_2017.csv``).
The document keeps the dataset-level keys of a single-map audit (``dataset``, ``checkpoint``, ``samples`` (distinct
samples over all classes), ``indices``, ``seed``, ...) and adds ``classes`` {class name: the keys of a single-map
audit's checks, ``verdict``, ``verdicts``, ``seconds``, ``samples``, ``indices``, ``class_id``, ``figures``},
``classes_not_audited`` {class name: why}, ``activation`` and ``score``; its ``verdict`` passes when every audited
class passes and ``verdicts`` holds each class's verdict.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from enhancer.audit import report
from enhancer.audit.checks import FAIL, PASS
from enhancer.settings import CamSettings

MIN_MAPS = 2  # the random-pair baseline needs two maps of the class


def audited_classes(
    asked: Sequence[str], class_names: Sequence[str], counts: dict[int, int], dataset: str
) -> tuple[list[int], dict[str, str]]:
    """The class ids to audit (``asked`` by name, or every class with maps) and the classes left out with why.
    Raises ValueError naming the valid classes for an unknown name, and naming the count for an asked class with
    too few maps."""
    names = list(class_names)
    unknown = [a for a in asked if a not in names]
    if unknown:
        raise ValueError(f"no class {unknown[0]!r} in {dataset}; its classes: {', '.join(names)}")
    explained = [n for c, n in enumerate(names) if counts.get(c)]
    for a in asked:
        if counts.get(names.index(a), 0) < MIN_MAPS:
            raise ValueError(
                f"class {a!r} has {counts.get(names.index(a), 0)} map(s) in {dataset}, the audit needs at least "
                f"{MIN_MAPS}; audit a class with maps: {', '.join(explained) or 'none'}"
            )
    wanted = [names.index(a) for a in dict.fromkeys(asked)] if asked else sorted(counts)
    skipped = {
        names[c]: f"{counts[c]} map(s), the audit needs at least {MIN_MAPS}" for c in wanted if counts[c] < MIN_MAPS
    }
    return [c for c in wanted if counts[c] >= MIN_MAPS], skipped


def class_score(asked: str, cam: CamSettings) -> str:
    """The faithfulness score of a dataset of maps per class: the logit where its maps explain the logit
    (``gradcam.score = logit``), else ``asked`` (``prob``: the probability under the dataset's activation)."""
    return "logit" if cam.score == "logit" else asked


def folder(name: str) -> str:
    """A class name as a folder name for its figures (letters, digits, ``-``, ``_`` and ``.`` kept)."""
    return "class-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "unnamed")


def class_document(
    classes: dict[str, dict[str, Any]], skipped: dict[str, str], *, activation: str, score: str
) -> dict[str, Any]:
    """The per-class part of ``audit.json``: each class's audit, the classes left out, the overall verdict."""
    verdicts = {name: doc["verdict"] for name, doc in classes.items()}
    verdict = PASS if verdicts and all(v == PASS for v in verdicts.values()) else FAIL
    seconds = {name: doc["seconds"]["total"] for name, doc in classes.items()}
    seconds["total"] = sum(seconds.values())
    return {
        "activation": activation,
        "score": score,
        "classes": classes,
        "classes_not_audited": skipped,
        "verdict": verdict,
        "verdicts": verdicts,
        "seconds": seconds,
    }


def class_markdown(document: dict[str, Any]) -> str:
    """``audit.md`` of a dataset of maps per class: what was audited, the overall verdict, one table per class."""
    classes = document["classes"]
    lines = [
        f"# Audit: {document['dataset']}",
        "",
        f"Checkpoint `{document['checkpoint']}`; maps per class ({document['activation']} outputs, faithfulness "
        f"score: {document['score']}); {len(classes)} class(es) on {document['samples']} distinct samples (seed "
        f"{document['seed']}); maps: {document['maps']}; {document['resamples']} bootstrap resamples for the 95% "
        f"intervals; {document['seconds']['total']:.0f} s on {document['device']}.",
        "",
        report.verdict_line(document),
    ]
    if document["classes_not_audited"]:
        lines += ["", "Not audited: " + "; ".join(f"{k} ({v})" for k, v in document["classes_not_audited"].items())]
    for name, doc in classes.items():
        lines += [
            "",
            f"## {name}",
            "",
            f"{doc['samples']} samples with a map of {name}. " + report.verdict_line(doc),
            "",
            *report.table_lines(doc),
            "",
            "Figures: " + ", ".join(f"`{f}`" for f in doc.get("figures", [])),
        ]
    return "\n".join([*lines, ""])
