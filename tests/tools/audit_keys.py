"""The documented keys of ``audit.json`` (listed in ``enhancer/audit/__init__.py``), written out once for the tests
that check them: the whole-dataset audit (tests/test_audit_cli.py) and the batch audit on phantoms
(tests/test_audit_phantoms.py). Spelled here rather than taken from ``enhancer.audit``, so that a check renamed or
dropped there fails the tests.

Usage::

    assert set(doc["verdicts"]) == VERDICT_KEYS
"""

from __future__ import annotations

# one verdict per check of a full audit
VERDICT_KEYS = frozenset(
    {"randomisation", "deletion", "insertion", "road", "confidence", "repeatability", "localisation"}
)
ROAD_KEYS = frozenset({"morf", "lerf", "combined", "random_morf", "random_lerf", "percentiles"})
CONFIDENCE_KEYS = frozenset({"drop", "increase", "change", "random_drop"})
INTERVAL_KEYS = frozenset({"value", "ci_low", "ci_high", "n"})  # a figure of localisation with its bootstrap interval
