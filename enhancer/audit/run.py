"""The audit job: read a seeded subset of an enhanced dataset, run every check on the device, write the results.

Usage::

    from enhancer.audit.run import run_audit
    result = run_audit(AuditSpec(dataset="enhanced/", checkpoint="best.pt", out="audit/", n_samples=64))
    result.verdict, result.document["randomisation"]["verdict"]

    # the checks on tensors, without a dataset (phantoms, another map function):
    document, figures = audit_batch(model, x, target, maps, labels, class_names, map_fn=my_map_fn)
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from enhancer.audit import checks, figures, per_class, report
from enhancer.audit.inputs import AuditInputs, maps_per_class, read_class_inputs, read_inputs
from enhancer.audit.localisation import mask_index, read_region_masks
from enhancer.audit.maps import MapFn, cam_map_fn
from enhancer.data.loader import resolve_device
from enhancer.explain.classes import sigmoid_settings
from enhancer.explain.localisation import boxes_mask, read_boxes
from enhancer.models.checkpoints import LoadedCheckpoint, load_checkpoint
from enhancer.models.registry import TargetLayer, resolve_target
from enhancer.preprocessing import Preprocessing
from enhancer.provenance import provenance
from enhancer.settings import CamSettings
from enhancer.specs import AuditSpec
from enhancer.store import Manifest

log = logging.getLogger(__name__)


class AuditError(ValueError):
    """The audit cannot run as asked; the message names the input and the fix."""


@dataclass
class Figures:
    """What the PNGs need, kept from the checks."""

    strips: checks.Strips | None = None
    localisation: dict[str, torch.Tensor] = field(default_factory=dict)  # per-sample values
    regions: torch.Tensor | None = None


@dataclass(frozen=True)
class AuditResult:
    out: str
    document: dict[str, Any]
    markdown: str

    @property
    def verdict(self) -> str:
        return self.document["verdict"]


def overall(verdicts: dict[str, str]) -> str:
    """pass when every check that ran passed."""
    ran = [v for v in verdicts.values() if v != checks.NOT_RUN]
    return checks.PASS if ran and all(v == checks.PASS for v in ran) else checks.FAIL


CHECK_ORDER = ("randomisation", "faithfulness", "repeatability", "localisation")


@dataclass
class _BatchAudit:
    """The inputs of one batch's checks and what they produce (``doc``: audit.json sections, ``seconds``, ``figs``)."""

    model: nn.Module
    x: torch.Tensor
    target: torch.Tensor
    maps: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    map_fn: MapFn
    feature_size: tuple[int, int]
    regions: torch.Tensor | None
    region_source: dict[str, Any] | None
    second_model: nn.Module | None
    faithfulness_settings: checks.FaithfulnessSettings | None
    seed: int
    resamples: int
    batch_size: int
    progress: bool
    doc: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    figs: Figures = field(default_factory=Figures)

    @property
    def kw(self) -> dict[str, Any]:
        return {"seed": self.seed, "resamples": self.resamples, "batch_size": self.batch_size}

    def wanted(self, run: tuple[str, ...]) -> dict[str, bool]:
        """Repeatability needs a second model (and randomisation for its baseline); localisation needs regions."""
        repeat = "repeatability" in run and self.second_model is not None
        return {
            "randomisation": "randomisation" in run or repeat,
            "faithfulness": "faithfulness" in run,
            "repeatability": repeat,
            "localisation": "localisation" in run and self.regions is not None,
        }

    def timed(self, name: str) -> None:
        t = time.perf_counter()
        # randomisation and faithfulness count their own steps; the two quick checks get a one-step bar
        quiet = not self.progress or name in ("randomisation", "faithfulness")
        with tqdm(total=1, desc=name, unit="check", disable=quiet) as bar:
            getattr(self, name)()
            bar.update()
        self.seconds[name] = time.perf_counter() - t

    def randomisation(self) -> None:
        self.doc["randomisation"], self.figs.strips = checks.randomisation_check(
            self.model, self.x, self.target, self.maps, self.map_fn, progress=self.progress, **self.kw
        )

    def faithfulness(self) -> None:
        found = checks.faithfulness_check(
            self.model,
            self.x,
            self.target,
            self.maps,
            self.feature_size,
            settings=self.faithfulness_settings,
            progress=self.progress,
            **self.kw,
        )
        self.doc.update(found)

    def repeatability(self) -> None:
        hi = self.doc["randomisation"]["baseline_ssim_hi"]
        self.doc["repeatability"] = checks.repeatability_check(
            self.second_model, self.x, self.target, self.maps, self.map_fn, baseline_ssim_hi=hi, **self.kw
        )

    def localisation(self) -> None:
        self.doc["localisation"], self.figs.localisation = checks.localisation_check(
            self.maps,
            self.regions.to(self.maps.device),
            self.labels,
            self.class_names,
            source=self.region_source or {},
            seed=self.seed,
            resamples=self.resamples,
        )
        self.figs.regions = self.regions


def audit_batch(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    *,
    map_fn: MapFn,
    feature_size: tuple[int, int],
    regions: torch.Tensor | None = None,
    region_source: dict[str, Any] | None = None,
    second_model: nn.Module | None = None,
    run: tuple[str, ...] = CHECK_ORDER,
    faithfulness: checks.FaithfulnessSettings | None = None,
    seed: int = 0,
    resamples: int = 1000,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[dict[str, Any], Figures]:
    """Every requested check on one batch: the ``audit.json`` sections, ``verdicts``, ``verdict`` and ``seconds``.
    Repeatability needs ``second_model`` (and runs randomisation for its baseline), localisation ``regions``."""
    job = _BatchAudit(
        model,
        x,
        target,
        maps,
        labels,
        class_names,
        map_fn,
        feature_size,
        regions,
        region_source,
        second_model,
        faithfulness,
        seed,
        resamples,
        batch_size,
        progress,
    )
    started = time.perf_counter()
    wanted = job.wanted(run)
    for name in CHECK_ORDER:
        if wanted[name]:
            job.timed(name)
    job.seconds["total"] = time.perf_counter() - started
    verdicts = {k: job.doc[k]["verdict"] for k in report.CHECKS if k in job.doc}
    job.doc.update(verdict=overall(verdicts), verdicts=verdicts, seconds=job.seconds)
    return job.doc, job.figs


def _regions(
    spec: AuditSpec, inputs: AuditInputs, class_name: str | None = None
) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    """Lesion regions (N, H, W) bool at the input's resolution from --masks or --boxes, and their description.
    ``class_name``: the boxes of that finding where the box file names findings (NIH's BBox list); masks and other
    box files give every class the image's regions."""
    size = tuple(inputs.x.shape[-2:])
    try:
        if spec.masks:
            index = mask_index(spec.masks)
            regions = read_region_masks(spec.masks, inputs.paths, size, index=index)
            return regions, {"source": "masks", "path": os.path.abspath(spec.masks), "files": len(index)}
        if spec.boxes:
            table = read_boxes(spec.boxes)
            if class_name is not None and table.per_finding:
                found = table.class_batch(inputs.paths, [class_name])[:, 0]
                gt = boxes_mask(found, inputs.orig_size.cpu(), size)
                return gt, {"source": "boxes", "path": table.source, "images": len(table), "finding": class_name}
            gt = boxes_mask(table.batch(inputs.paths), inputs.orig_size.cpu(), size)
            return gt, {"source": "boxes", "path": table.source, "images": len(table)}
    except ValueError as exc:
        raise AuditError(str(exc)) from None
    return None, None


def _check_checkpoint(manifest: Manifest, sha256: str, spec: AuditSpec) -> None:
    made_with = manifest.provenance.get("checkpoint_sha256")
    if made_with and made_with != sha256:
        raise AuditError(
            f"{spec.checkpoint} (sha256 {sha256[:12]}) is not the checkpoint that made the maps of {spec.dataset} "
            f"({manifest.provenance.get('checkpoint', '?')}, sha256 {made_with[:12]}); pass that one as --checkpoint"
        )


def _write(doc: dict[str, Any], figs: Figures, inputs: AuditInputs, out: Path) -> AuditResult:
    doc["figures"] = [p.name for p in _draw(doc, figs, inputs, out)]
    report.write_json(doc, out / "audit.json")
    text = report.markdown(doc)
    (out / "audit.md").write_text(text, encoding="utf-8")
    return AuditResult(str(out), doc, text)


def _draw(doc: dict[str, Any], figs: Figures, inputs: AuditInputs, out: Path) -> list[Path]:
    """The PNGs of one audit (a dataset's, or one class's) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if figs.strips is not None:
        written += figures.draw_strips(figs.strips, out)
    if "deletion" in doc:
        written.append(figures.draw_curves(doc, out / "deletion-insertion.png"))
    if figs.localisation and figs.regions is not None:
        worst = figures.draw_worst(
            inputs.x,
            inputs.maps,
            figs.regions,
            figs.localisation["iou"],
            out / "worst-localised.png",
            names=inputs.paths,
        )
        written += [worst] if worst is not None else []
    return written


def open_dataset_model(path: str, manifest: Manifest) -> tuple[LoadedCheckpoint, TargetLayer]:
    """The checkpoint at ``path`` as the model that made the dataset's maps: the model name, class count, target layer
    and preprocessing the shards record (a dataset made before they were recorded: detected, the defaults)."""
    made = manifest.provenance.get("model") or {}
    ck = load_checkpoint(path, model=made.get("name"), num_classes=made.get("num_classes"))
    if manifest.provenance.get("preprocessing"):
        ck = replace(ck, preprocessing=Preprocessing.from_dict(manifest.provenance["preprocessing"]))
    return ck, resolve_target(ck.model, ck.preprocessing, made.get("target_layer"))


def dataset_map_fn(cam: CamSettings, ck: LoadedCheckpoint, target: TargetLayer) -> MapFn:
    """The maps as the enhance job computed them: its CAM settings (method included) at its target layer, through the
    model's own features/head halves for a zoo model at its default layer (as the job), elsewhere the forward hook
    at the layer (the same maps as the registry's halves the job takes at a family's default layer)."""
    return cam_map_fn(cam, None if target.split is ck.model else target.name)


def run_audit(spec: AuditSpec, *, map_fn: MapFn | None = None, progress: bool = True) -> AuditResult:
    """Audit the maps of ``spec.dataset``: ``audit.json``, ``audit.md`` and PNGs in ``spec.out``. ``map_fn``
    recomputes maps (default: the dataset's CAM method and settings at its target layer, ``dataset_map_fn``). A
    dataset of maps per class is audited class by class (``spec.classes``, default every class with maps)."""
    device = resolve_device(spec.device)
    manifest = Manifest.load(spec.dataset)
    per_class = any(info.get("per_class") for info in manifest.fields.values())
    if spec.classes and not per_class:
        raise AuditError(
            f"{spec.dataset} holds one map per image, not one per class; drop --class (it selects the classes of a "
            "dataset enhanced with --explain)"
        )
    ck, target = open_dataset_model(spec.checkpoint, manifest)
    _check_checkpoint(manifest, ck.sha256, spec)
    if per_class:
        return _run_class_audit(spec, manifest, ck, target, device, map_fn=map_fn, progress=progress)
    inputs = read_inputs(
        spec.dataset, ck.preprocessing, samples=spec.n_samples, seed=spec.seed, data_root=spec.data, device=device
    )
    model = ck.model.to(device).eval()
    second = _second_model(spec, manifest, device)
    if map_fn is None:
        map_fn = dataset_map_fn(inputs.cam, ck, target)
    settings = checks.FaithfulnessSettings(steps=spec.steps, baseline=spec.baseline, score=spec.score)
    job = _AuditJob(spec, model, second, map_fn, settings, target)
    regions, source = _regions(spec, inputs)
    doc, figs = job.checks(inputs, inputs.labels, inputs.class_names, regions, source, progress=progress)
    head = _head(spec, ck, device, map_fn, inputs.cam, inputs.indices)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    return _write({**head, **doc}, figs, inputs, out)


def _second_model(spec: AuditSpec, manifest: Manifest, device: str) -> nn.Module | None:
    if not spec.second_checkpoint:
        return None
    return open_dataset_model(spec.second_checkpoint, manifest)[0].model.to(device).eval()


def _head(
    spec: AuditSpec, ck: LoadedCheckpoint, device: str, map_fn: MapFn, cam: CamSettings, indices: list[int]
) -> dict[str, Any]:
    """What was audited, with what: the dataset-level keys of ``audit.json``."""
    return {
        "dataset": os.path.abspath(spec.dataset),
        "checkpoint": os.path.abspath(spec.checkpoint),
        "checkpoint_sha256": ck.sha256,
        "second_checkpoint": os.path.abspath(spec.second_checkpoint) if spec.second_checkpoint else None,
        "samples": len(indices),
        "indices": indices,
        "seed": spec.seed,
        "resamples": spec.resamples,
        "device": device,
        "maps": getattr(map_fn, "__name__", type(map_fn).__name__),
        "gradcam": cam.to_dict(),
        "spec": spec.to_dict(),
        **provenance(),
    }


@dataclass
class _AuditJob:
    """What the checks of one audit share, and every class's audit of a dataset of maps per class: the spec, the
    models, the map function (the dataset's CAM; per class, explaining the audited class), the faithfulness settings
    (per class, the dataset's activation) and the layer."""

    spec: AuditSpec
    model: nn.Module
    second: nn.Module | None
    map_fn: MapFn
    settings: checks.FaithfulnessSettings
    target: TargetLayer

    def checks(
        self,
        inputs: AuditInputs,
        labels: torch.Tensor,
        names: list[str],
        regions: torch.Tensor | None,
        source: dict[str, Any] | None,
        *,
        progress: bool,
    ) -> tuple[dict[str, Any], Figures]:
        """``audit_batch`` on ``inputs`` with the spec's checks, seed, resamples and batch size: (document, figures)."""
        spec = self.spec
        return audit_batch(
            self.model,
            inputs.x,
            inputs.target,
            inputs.maps,
            labels,
            names,
            map_fn=self.map_fn,
            feature_size=inputs.feature_size or tuple(self.target.shape[-2:]),
            regions=regions,
            region_source=source,
            second_model=self.second,
            run=spec.checks,
            faithfulness=self.settings,
            seed=spec.seed,
            resamples=spec.resamples,
            batch_size=spec.batch_size,
            progress=progress,
        )

    def audit(self, c: int, names: list[str], inputs: AuditInputs, *, progress: bool) -> dict[str, Any]:
        """The audit of class ``c`` on its samples and maps, its figures under ``out/class-<NAME>/``."""
        spec, name = self.spec, names[c]
        regions, source = _regions(spec, inputs, class_name=name)
        # localisation's by_class: the class itself
        doc, figs = self.checks(inputs, inputs.target, names, regions, source, progress=progress)
        sub = per_class.folder(name)
        drawn = [f"{sub}/{p.name}" for p in _draw(doc, figs, inputs, Path(spec.out) / sub)]
        return {"class_id": c, "samples": len(inputs.indices), "indices": inputs.indices, **doc, "figures": drawn}


def _run_class_audit(
    spec: AuditSpec,
    manifest: Manifest,
    ck: LoadedCheckpoint,
    target: TargetLayer,
    device: str,
    *,
    map_fn: MapFn | None,
    progress: bool,
) -> AuditResult:
    """The audit of a dataset of maps per class: one audit per class (its samples, maps, score and findings' boxes),
    figures under ``out/class-<NAME>/``, one ``audit.json`` and ``audit.md`` (``enhancer.audit.per_class``)."""
    counts = maps_per_class(spec.dataset)
    names = list(manifest.class_names or [str(c) for c in range(max(counts, default=-1) + 1)])
    try:
        wanted, skipped = per_class.audited_classes(spec.classes, names, counts, spec.dataset)
    except ValueError as exc:
        raise AuditError(str(exc)) from None
    if not wanted:
        raise AuditError(f"no class of {spec.dataset} has the 2 maps an audit needs: {skipped or 'no maps at all'}")
    by_class = read_class_inputs(
        spec.dataset,
        ck.preprocessing,
        wanted,
        samples=spec.n_samples,
        seed=spec.seed,
        data_root=spec.data,
        device=device,
    )
    cam = CamSettings.from_dict(manifest.provenance.get("gradcam", {}))
    activation = manifest.provenance.get("activation", "softmax")
    map_fn = map_fn or dataset_map_fn(sigmoid_settings(cam, activation), ck, target)
    score = per_class.class_score(spec.score, cam)
    settings = checks.FaithfulnessSettings(steps=spec.steps, baseline=spec.baseline, score=score, activation=activation)
    job = _AuditJob(spec, ck.model.to(device).eval(), _second_model(spec, manifest, device), map_fn, settings, target)
    docs = {names[c]: job.audit(c, names, inputs, progress=progress) for c, inputs in by_class.items()}
    out = Path(spec.out)
    indices = sorted({i for inputs in by_class.values() for i in inputs.indices})
    document = {
        **_head(spec, ck, device, map_fn, cam, indices),
        **per_class.class_document(docs, skipped, activation=activation, score=score),
    }
    document["figures"] = [f for doc in docs.values() for f in doc["figures"]]
    report.write_json(document, out / "audit.json")
    text = per_class.class_markdown(document)
    (out / "audit.md").write_text(text, encoding="utf-8")
    return AuditResult(str(out), document, text)
