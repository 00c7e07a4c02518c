"""The dataset card (``README.md``) written next to a merged enhanced dataset.

Usage: ``render_card(Manifest.load(out_dir))`` returns the Markdown text; ``merge`` writes it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from enhancer.store.layout import MANIFEST, REJECTED, shard_name

if TYPE_CHECKING:
    from enhancer.store.manifest import Manifest


def render_card(m: Manifest) -> str:
    """Markdown card: what it is, counts, fields, provenance, how to load it."""
    img = next((n for n in ("enhanced", "image", "heatmap", "crop", "cam") if n in m.fields), "prob")
    names = list(m.class_names) if m.class_names else sorted(set(m.class_counts["label"]) | set(m.class_counts["pred"]))
    lines = _summary(m, names)
    if m.localisation:
        lines += _localisation(m, names)
    lines += _fields(m) + _provenance(m) + _loading(m, img)
    return "\n".join(lines)


def _summary(m: Manifest, names: list[str]) -> list[str]:
    """Title, what the dataset holds, counts and the per-class table."""
    lines = [
        "# Grad-CAM enhanced dataset",
        "",
        "Chest X-ray images passed through a classifier; for each image the shards hold the model-resolution input,",
        "the Grad-CAM map, a heatmap, a Grad-CAM-guided crop and an enhanced image (salient regions kept, the rest",
        (
            "suppressed), with label, prediction and probabilities. Written by `enhancer` "
            f"(schema version {m.schema_version}); created {m.created}."
        ),
        *_method_lines(m.provenance),
        "",
        "## Counts",
        "",
        f"- inputs: {m.n_in}; written: {m.n_written}; rejected: {m.n_rejected} (see `{REJECTED}`)",
        f"- shards: {m.num_shards} (`{shard_name(0, m.num_shards)}` ...), listed with sha256 in `{MANIFEST}`",
    ]
    if m.rejected_codes:
        lines.append("- rejected by reason: " + ", ".join(f"{k}: {v}" for k, v in m.rejected_codes.items()))
    lines += ["", "| class | samples (label) | predicted |", "|---|---:|---:|"]
    for name in names:
        lines.append(f"| {name} | {m.class_counts['label'].get(name, 0)} | {m.class_counts['pred'].get(name, 0)} |")
    return lines


def _localisation(m: Manifest, names: list[str]) -> list[str]:
    lines = [
        "",
        "## Localisation",
        "",
        "Means over the samples where a metric is defined (hits: pointing-game hit rate); definitions in the",
        "shards' `localisation` attribute.",
        "",
        "| metric | all (n) | " + " | ".join(f"{c} (n)" for c in names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for metric, st in m.localisation.items():
        cells = [_mean_n(st)] + [_mean_n(st["by_class"].get(c, {"mean": None, "n": 0})) for c in names]
        lines.append(f"| `{metric}` | " + " | ".join(cells) + " |")
    return lines


def _fields(m: Manifest) -> list[str]:
    lines = [
        "",
        "## Fields",
        "",
        "First axis = sample; one HDF5 chunk per sample. Codecs: `none` raw and `gzipN` (HDF5's deflate filter, level",
        "N) read as arrays in any HDF5 reader; `jpegQ` fields hold one JPEG file (quality Q) per sample in a",
        "variable-length uint8 dataset (any HDF5 reader returns the bytes, any JPEG decoder the pixels; the dataset's",
        "`sample_shape` attribute gives the decoded shape); `lzf` needs h5py.",
        "",
        "| field | dtype | shape | codec | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, info in m.fields.items():
        shape = "(N, " + ", ".join(str(s) for s in info["shape"][1:]) + ")" if len(info["shape"]) > 1 else "(N,)"
        lines.append(f"| `{name}` | {info['dtype']} | {shape} | {info.get('codec', '')} | {info.get('doc', '')} |")
    return lines + [
        "",
        "`orig_size` is (height, width); `crop_box` is (x0, y0, x1, y1) in original pixels. Shards also hold a",
        "`rejected` group (index, path, code, message) with the inputs that were not written.",
    ]


def _provenance(m: Manifest) -> list[str]:
    lines = ["", "## Provenance", ""]
    if m.provenance:
        for key, value in sorted(m.provenance.items()):
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            lines.append(f"- `{key}`: {text}")
    else:
        lines.append("- (no provenance attributes were recorded)")
    per_shard = sorted({k for s in m.shards for k in s.attrs})
    if per_shard:
        lines.append(f"- per shard (see `{MANIFEST}`): {', '.join(per_shard)}")
    return lines


def _loading(m: Manifest, img: str) -> list[str]:
    """How to read the dataset: EnhancedDataset, plain h5py through the manifest, PNG export."""
    return [
        "",
        "## Loading",
        "",
        f"With PyTorch (reads through `{MANIFEST}`; safe with DataLoader workers):",
        "",
        "```python",
        "from enhancer.store import EnhancedDataset, verify",
        "assert verify('.').ok                      # optional deep check: sha256, every chunk, invariants",
        f"ds = EnhancedDataset('.', fields=('{img}', 'label'))",
        f"sample = ds[0]                             # {{'{img}': tensor, 'label': tensor}}",
        "```",
        "",
        "With plain h5py (global sample i lives in the shard whose `offset` <= i, at row i - offset):",
        "",
        "```python",
        "import json, h5py",
        f"m = json.load(open('{MANIFEST}'))",
        "for s in m['shards']:",
        "    with h5py.File(s['file'], 'r') as f:",
        f"        x, y, path = f['{img}'][0], f['label'][0], f['path'][0].decode()",
        "```",
        *_jpeg_note(m, img),
        "",
        "As image files: `enhancer.store.export_imagefolder('.', 'png_out', field='enhanced')` writes",
        "`png_out/<CLASS>/<stem>.png`.",
        "",
    ]


def _jpeg_note(m: Manifest, img: str) -> list[str]:
    if not str(m.fields.get(img, {}).get("codec", "")).startswith("jpeg"):
        return []
    return [
        "",
        f"`{img}` is stored as JPEG: `f['{img}'][0]` is the file's bytes; decode them, e.g.",
        f"`PIL.Image.open(io.BytesIO(f['{img}'][0].tobytes()))`.",
    ]


def _method_lines(provenance: dict) -> list[str]:
    """Which CAM method made the maps, at which layer (the ``cam`` field and everything derived from it)."""
    method = provenance.get("cam_method")
    if not method:
        return []
    layer = provenance.get("target_layer")
    definition = provenance.get("cam_method_definition")
    return [
        "",
        f"Maps: CAM method `{method}`"
        + (f" at layer `{layer}`" if layer else "")
        + (f": {definition}." if definition else "."),
    ]


def _mean_n(st: dict) -> str:
    return f"{st['mean']:.3f} ({st['n']})" if st.get("mean") is not None else f"n/a ({st.get('n', 0)})"
