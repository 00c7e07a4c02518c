"""The tables and goal lines of ``e2e_bench.py`` (Markdown, pasted into RESULTS.md), from its report dict."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from e2e_contenders import CLASSIC, CONTENDERS, FORWARD

GOAL_VS_CLASSIC = 4.0  # (a) / (b) and (a) / (b')
GOAL_VS_BEST_FORWARD = 0.9  # (a) / the fastest of (c), (c'), (c'')
GOAL_VS_EAGER = 1.0  # (a) / (c)
GOAL_WHOLE_PROCESS = 3.0  # the enhance command / the classic script, 64 files, start-up included
GOAL_MEMORY_GROWTH = 1.10  # (a)'s peak RSS at 4N / at N
GOAL_PRED_AGREEMENT = 0.99
GOAL_HEATMAP_P999_LEVELS = 4.0  # maps are sparse: their mean difference says little, the tail does


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _goal(goals: dict[str, Any], key: str, value: float, goal: float, text: str, above: bool = True) -> None:
    ok = value >= goal if above else value <= goal
    goals[key] = {"value": value, "goal": goal, "passed": ok}
    print(f"{text} = {value:.2f} (goal {'>=' if above else '<='} {goal}): {_verdict(ok)}")


def print_report(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    """Every table and goal line; returns the goal figures for the JSON."""
    goals: dict[str, Any] = {}
    _main_table(args, report["main"])
    _ratios(report["main"], goals)
    if report.get("checks"):
        _output_checks(report["checks"], goals)
    if report["scaling"]:
        _scaling(args, report["main"], report["scaling"], goals)
    if report["sweep"]:
        print(f"\nbatch sweep of (a) at N={args.n}, {args.extra_repeats} round(s)\n")
        print("| batch | images/s | peak RSS MiB | peak PSS MiB, with workers |")
        print("|---:|---:|---:|---:|")
        for b, s in report["sweep"].items():
            print(f"| {b} | {s['images_per_s']:.2f} | {s['peak_rss_mib']:.0f} | {s['tree_peak_pss_mib']:.0f} |")
    if report.get("whole_process_s"):
        _whole_process(args, report["whole_process_s"], goals)
    return goals


def _main_table(args: argparse.Namespace, main: dict[str, Any]) -> None:
    print(
        f"\n{args.arch} at 224, N={args.n} files (the 16 real X-rays repeated), batch {args.batch_size or 'default'}, "
        f"{args.device}, {args.threads} loader threads; median of {args.repeats} rounds, each a fresh process after a "
        "warm-up pass\n"
    )
    print("| contender | loader | images/s (median) | all rounds | peak RSS MiB | peak PSS MiB, with workers | load |")
    print("|---|---|---:|---|---:|---:|---|")
    for c, s in main.items():
        rounds = ", ".join(f"{v:.2f}" for v in s["rounds"])
        load = ", ".join(f"{v:.1f}" for v in s["load_average"])
        print(
            f"| {CONTENDERS[c]} | {s['loader']} | {s['images_per_s']:.2f} | {rounds} | {s['peak_rss_mib']:.0f} | "
            f"{s['tree_peak_pss_mib']:.0f} | {load} |"
        )


def _ratios(main: dict[str, Any], goals: dict[str, Any]) -> None:
    rate = {c: s["images_per_s"] for c, s in main.items()}
    print()
    if "enhance" not in rate:
        return
    for c in CLASSIC:
        if c in rate:
            _goal(goals, f"a_over_{c}", rate["enhance"] / rate[c], GOAL_VS_CLASSIC, f"(a) / {CONTENDERS[c][:4]}")
    forward = {c: rate[c] for c in FORWARD if c in rate}
    if forward:
        best = max(forward, key=forward.__getitem__)
        _goal(goals, "a_over_best_forward", rate["enhance"] / forward[best], GOAL_VS_BEST_FORWARD,
              f"(a) / the fastest forward, {CONTENDERS[best].split(' ', 1)[0]}")  # fmt: skip
    if "forward-eager" in rate:
        _goal(goals, "a_over_eager", rate["enhance"] / rate["forward-eager"], GOAL_VS_EAGER, "(a) / (c) eager")


def _output_checks(checks: dict[str, Any], goals: dict[str, Any]) -> None:
    print("\noutputs of each timed contender against the timed classic pipeline's (first round, file by file)\n")
    print("| contender | files | predictions equal | heatmap mean / 99.9% / max, grey levels | crop box, median px |")
    print("|---|---:|---:|---|---:|")
    ok = True
    for c, r in checks.items():
        if not r["same_files"]:
            print(f"| {CONTENDERS[c]} | {r['n']} | different files | - | - |")
            ok = False
            continue
        heat = (
            f"{r['heatmap_mean_levels']:.2f} / {r['heatmap_p999_levels']:.1f} / {r['heatmap_max_levels']:.0f}"
            if "heatmap_mean_levels" in r
            else "-"
        )
        box = f"{r['crop_box_median_px']:.0f}" if "crop_box_median_px" in r else "-"
        print(f"| {CONTENDERS[c]} | {r['n']} | {r['pred_agreement']:.1%} | {heat} | {box} |")
        ok &= r["pred_agreement"] >= GOAL_PRED_AGREEMENT
        ok &= r.get("heatmap_p999_levels", 0.0) <= GOAL_HEATMAP_P999_LEVELS
    goals["outputs_match_classic"] = {"passed": ok}
    print(
        f"\nevery timed contender's outputs match the classic pipeline's (predictions >= "
        f"{GOAL_PRED_AGREEMENT:.0%} equal, 99.9% of heatmap pixels within {GOAL_HEATMAP_P999_LEVELS:g} grey levels): "
        f"{_verdict(ok)}"
    )


def _scaling(args: argparse.Namespace, main: dict[str, Any], scaling: dict[str, Any], goals: dict[str, Any]) -> None:
    big = args.n * args.scale
    base, s = main["enhance"], scaling["enhance"]
    print(f"\n(a) at N={args.n} (main table) and at {args.scale}N={big}, {args.extra_repeats} round(s)\n")
    print("| files | images/s | peak RSS MiB | peak PSS MiB, with workers |\n|---:|---:|---:|---:|")
    for n, row in ((args.n, base), (big, s)):
        print(f"| {n} | {row['images_per_s']:.2f} | {row['peak_rss_mib']:.0f} | {row['tree_peak_pss_mib']:.0f} |")
    print()
    _goal(goals, "memory_growth", s["peak_rss_mib"] / base["peak_rss_mib"], GOAL_MEMORY_GROWTH,
          f"(a) peak RSS {big} / {args.n} files", above=False)  # fmt: skip


def _whole_process(args: argparse.Namespace, seconds: dict[str, list[float]], goals: dict[str, Any]) -> None:
    print(f"\nwhole process on {args.whole_n} files, command line to exit (start-up included), {args.repeats} rounds\n")
    print("| command | seconds (median) | all rounds |\n|---|---:|---|")
    median = {k: statistics.median(v) for k, v in seconds.items()}
    for k, v in seconds.items():
        print(f"| {k} | {median[k]:.1f} | {', '.join(f'{x:.1f}' for x in v)} |")
    print()
    for c in CLASSIC:
        if c in median and "enhance" in median:
            _goal(goals, f"whole_process_over_{c}", median[c] / median["enhance"], GOAL_WHOLE_PROCESS,
                  f"whole process, {c} / enhance")  # fmt: skip
