"""The audit's checks over one batch of samples: each returns its ``audit.json`` section (figures with bootstrap
intervals, baselines, a verdict) and what its figure needs. ``enhancer.audit.run`` reads the data and writes the
results; the key layout is documented in ``enhancer.audit``.

Usage::

    section, strips = randomisation_check(model, x, target, maps, map_fn, seed=0)
    sections, curves = faithfulness_check(model, x, target, maps, feature_size, seed=0)
    section = repeatability_check(model2, x, target, maps, map_fn, baseline_ssim_hi=...)
    section, per_sample = localisation_check(maps, regions, labels, class_names, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from enhancer.audit import faithfulness as fa
from enhancer.audit.bootstrap import RESAMPLES, Estimate, bootstrap_ci
from enhancer.audit.localisation import localisation_values
from enhancer.audit.maps import MapFn, compute_maps
from enhancer.audit.randomisation import cascading_randomisation, pair_baseline, randomisation_stages
from enhancer.audit.similarity import spearman, ssim

PASS, FAIL, NOT_RUN = "pass", "fail", "not run"
STRIP_SAMPLES = 6  # samples shown in each randomisation strip


def _g(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _figure(name: str, est: Estimate) -> dict[str, Any]:
    """``{name: value, name_ci: [low, high]}``: a figure and its interval side by side."""
    return {name: est.value, f"{name}_ci": [est.ci_low, est.ci_high]}


@dataclass
class Strips:
    """Maps of the first few samples for the randomisation figure: original (K, H, W) and one per stage."""

    images: torch.Tensor
    original: torch.Tensor
    stages: list[tuple[str, float, torch.Tensor]]  # (stage name, mean SSIM, maps (K, H, W))


def randomisation_check(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    map_fn: MapFn,
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[dict[str, Any], Strips]:
    """Cascading randomisation: SSIM and Spearman between the original and the randomised maps per stage, against
    random pairs of original maps. Pass: the fully randomised maps' mean SSIM <= the pair baseline's upper bound."""
    pair_ssim, pair_rho = pair_baseline(maps, generator=_g(seed))
    base_ssim = bootstrap_ci(pair_ssim, resamples=resamples, seed=seed)
    base_rho = bootstrap_ci(pair_rho, resamples=resamples, seed=seed)
    stages = randomisation_stages(model, x[:1])
    k = min(STRIP_SAMPLES, len(x))
    strips = Strips(x[:k, :1].detach().cpu(), maps[:k].detach().cpu(), [])
    rows = []
    bar = tqdm(total=len(stages), desc="randomisation", unit="stage", disable=not progress)
    for stage, randomised in cascading_randomisation(
        model, stages, x, target, map_fn, seed=seed, batch_size=batch_size
    ):
        s = bootstrap_ci(ssim(maps, randomised), resamples=resamples, seed=seed)
        rho = bootstrap_ci(spearman(maps, randomised), resamples=resamples, seed=seed)
        rows.append(
            {"name": stage.name, "modules": list(stage.modules), **_figure("ssim", s), **_figure("spearman", rho)}
        )
        strips.stages.append((stage.name, s.value, randomised[:k].detach().cpu()))
        bar.update()
    bar.close()
    for row in rows:  # per stage too: has the cascade down to this stage moved the maps as far as random pairs?
        row.update(baseline_ssim_hi=base_ssim.ci_high, verdict=PASS if row["ssim"] <= base_ssim.ci_high else FAIL)
    verdict = rows[-1]["verdict"]
    section = {
        "stages": rows,
        **_figure("baseline_ssim", base_ssim),
        "baseline_ssim_hi": base_ssim.ci_high,
        **_figure("baseline_spearman", base_rho),
        "baseline_spearman_hi": base_rho.ci_high,
        "pairs": len(pair_ssim),
        "n": len(x),
        "verdict": verdict,
    }
    return section, strips


def repeatability_check(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    map_fn: MapFn,
    *,
    baseline_ssim_hi: float,
    seed: int = 0,
    resamples: int = RESAMPLES,
    batch_size: int = 32,
) -> dict[str, Any]:
    """SSIM and Spearman between each sample's map and the map of a second model (another seed or round). Pass:
    the SSIM interval lies above the random-pair baseline's upper bound (the two models agree more than chance)."""
    second = compute_maps(map_fn, model, x, target, batch_size=batch_size)
    s = bootstrap_ci(ssim(maps, second), resamples=resamples, seed=seed)
    rho = bootstrap_ci(spearman(maps, second), resamples=resamples, seed=seed)
    verdict = PASS if s.ci_low > baseline_ssim_hi else FAIL
    return {
        **_figure("ssim", s),
        **_figure("spearman", rho),
        "baseline_ssim_hi": baseline_ssim_hi,
        "n": len(x),
        "verdict": verdict,
    }


@dataclass(frozen=True)
class FaithfulnessSettings:
    """How the faithfulness checks perturb: deletion/insertion steps and baseline, ROAD percentiles and noise, the
    score (``prob`` or ``logit`` of the explained class) and the model's output ``activation`` that makes ``prob``
    (``softmax``; ``sigmoid`` for a multi-label model: each class's own probability)."""

    steps: int = 10
    baseline: str = "blur"
    blur_sigma: float = 5.0
    percentiles: tuple[float, ...] = fa.PERCENTILES
    noise: float = fa.NOISE
    score: str = "prob"
    solver: str = "auto"
    activation: str = "softmax"

    def passes(self) -> int:
        """Model passes over the batch per map kind (the unperturbed and baseline images are shared)."""
        return 2 * (self.steps - 1) + 2 * len(self.percentiles) + 1


def _paired(name: str, ours: torch.Tensor, random: torch.Tensor, *, better: str, seed: int, resamples: int) -> dict:
    """Figures of our maps and the random maps, and the verdict from the paired difference's interval."""
    a = bootstrap_ci(ours, resamples=resamples, seed=seed)
    b = bootstrap_ci(random, resamples=resamples, seed=seed)
    d = bootstrap_ci(ours - random, resamples=resamples, seed=seed)
    ok = d.ci_low > 0 if better == "higher" else d.ci_high < 0
    return {
        **_figure(name, a),
        **_figure(f"random_{name}", b),
        **_figure(f"{name}_minus_random", d),
        "better": better,
        "verdict": PASS if ok else FAIL,
    }


def _measure(
    scorer: fa.Scorer, x: torch.Tensor, maps: torch.Tensor, s: FaithfulnessSettings, ends: tuple, seed: int
) -> dict[str, torch.Tensor]:
    """Per-sample faithfulness values of one kind of map."""
    g = _g(seed, x.device)
    curves = fa.perturbation_curves(
        scorer, x, maps, steps=s.steps, baseline=s.baseline, blur_sigma=s.blur_sigma, generator=g, ends=ends
    )
    road = {
        order: fa.road(
            scorer,
            x,
            maps,
            order=order,
            percentiles=s.percentiles,
            noise=s.noise,
            generator=g,
            before=ends[0],
            solver=s.solver,
        )
        for order in fa.ROAD_ORDERS
    }
    change = fa.confidence_change(scorer, x, maps, before=ends[0])
    return {
        "deletion_curve": curves.deletion,
        "insertion_curve": curves.insertion,
        "deletion": fa.auc(curves.deletion),
        "insertion": fa.auc(curves.insertion),
        "morf": road["morf"],
        "lerf": road["lerf"],
        "combined": (road["lerf"] - road["morf"]) / 2,
        "change": change,
    }


def faithfulness_check(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    feature_size: tuple[int, int],
    *,
    settings: FaithfulnessSettings | None = None,
    seed: int = 0,
    resamples: int = RESAMPLES,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """Deletion, insertion, ROAD and confidence change of ``maps`` and of random maps of the same smoothness;
    returns the ``deletion``, ``insertion``, ``road`` and ``confidence`` sections."""
    settings = settings or FaithfulnessSettings()
    random = fa.random_maps(
        len(x), feature_size, tuple(x.shape[-2:]), generator=_g(seed + 1, x.device), device=x.device
    )
    bar = tqdm(total=len(x) * (2 * settings.passes() + 2), desc="faithfulness", unit="image", disable=not progress)
    scorer = fa.Scorer(
        model,
        target,
        score=settings.score,
        activation=settings.activation,
        batch_size=batch_size,
        on_scored=bar.update,
    )
    base = fa.baseline_images(x, settings.baseline, blur_sigma=settings.blur_sigma)
    ends = (scorer(x), scorer(base))
    ours = _measure(scorer, x, maps, settings, ends, seed)
    rand = _measure(scorer, x, random, settings, ends, seed)
    bar.close()
    return _faithfulness_sections(ours, rand, settings, seed=seed, resamples=resamples)


def _faithfulness_sections(
    ours: dict[str, torch.Tensor], rand: dict[str, torch.Tensor], settings: FaithfulnessSettings, **kw: Any
) -> dict[str, Any]:
    """The deletion, insertion, road and confidence sections from the per-sample values of both kinds of maps."""
    fractions = torch.linspace(0, 1, settings.steps + 1).tolist()
    common = {"score": settings.score, "n": len(ours["change"])}
    sections: dict[str, Any] = {}
    for kind, better in (("deletion", "lower"), ("insertion", "higher")):
        sections[kind] = {
            **_paired("auc", ours[kind], rand[kind], better=better, **kw),
            "fractions": fractions,
            "curve": ours[f"{kind}_curve"].mean(0).tolist(),
            "random_curve": rand[f"{kind}_curve"].mean(0).tolist(),
            "baseline": settings.baseline,
            **common,
        }
    sections["road"] = {
        **_figure("morf", bootstrap_ci(ours["morf"], **kw)),
        **_figure("lerf", bootstrap_ci(ours["lerf"], **kw)),
        **_figure("random_morf", bootstrap_ci(rand["morf"], **kw)),
        **_figure("random_lerf", bootstrap_ci(rand["lerf"], **kw)),
        **_paired("combined", ours["combined"], rand["combined"], better="higher", **kw),
        "percentiles": list(settings.percentiles),
        "noise": settings.noise,
        **common,
    }
    sections["confidence"] = {
        **_paired("change", ours["change"], rand["change"], better="higher", **kw),
        **_figure("drop", bootstrap_ci((-ours["change"]).clamp_min(0), **kw)),
        **_figure("increase", bootstrap_ci((ours["change"] > 0).float(), **kw)),
        **_figure("random_drop", bootstrap_ci((-rand["change"]).clamp_min(0), **kw)),
        **_figure("random_increase", bootstrap_ci((rand["change"] > 0).float(), **kw)),
        **common,
    }
    return sections


def localisation_check(
    maps: torch.Tensor,
    regions: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    *,
    source: dict[str, Any],
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """mIoU (Otsu), hit rate and energy with 95% intervals, overall and per class, over the samples with a region.
    Pass: the hit rate's interval lies above chance (the mean region area share)."""
    values = localisation_values(maps, regions)
    kw = {"seed": seed, "resamples": resamples}

    def summary(select: torch.Tensor) -> dict[str, Any]:
        v = {k: t[select] for k, t in values.items()}
        area = bootstrap_ci(v["area"], **kw)
        return {
            "n": area.n,
            "miou": bootstrap_ci(v["iou"], **kw).to_dict(),
            "hit_rate": bootstrap_ci(v["hit"], **kw).to_dict(),
            "energy": bootstrap_ci(v["energy"], **kw).to_dict(),
            "hit_chance": area.value,
        }

    everything = summary(torch.ones_like(labels, dtype=torch.bool))
    by_class = {name: summary(labels == c) for c, name in enumerate(class_names) if bool((labels == c).any())}
    if everything["n"] == 0:
        verdict = NOT_RUN
    else:
        verdict = PASS if everything["hit_rate"]["ci_low"] > everything["hit_chance"] else FAIL
    return {**source, **everything, "by_class": by_class, "verdict": verdict}, values
