"""The shard writer alone, per codec configuration and thread count: can the host store what the GPU computes?

Usage::

    .venv/bin/python benchmarks/store_bench.py                         # 2048 samples, threads 1 and 2, 3 rounds
    .venv/bin/python benchmarks/store_bench.py --threads 1,2,4,8 --json store.json
    .venv/bin/python benchmarks/store_bench.py --n 256 --repeats 1 --configs default,jpeg95   # a quick run

The samples are real-X-ray-derived: the 16 sample X-rays (``enhancer fetch-samples``) through a demonstration
ResNet-101 (``enhancer.models.demo``, BatchNorm calibrated and output layer fitted on them) and the enhance job's own
``compute_outputs``: model-resolution image, raw cam, heatmap, crop, crop box and enhanced image, the default
fields. They are cycled to ``--n`` samples (indices and paths unique) and written in batches through
``AsyncShardWriter`` exactly as the job writes them. ``samples/s`` is timed from opening the shard to its last HDF5
write (the host's work: encoding, HDF5, copies into the page cache); ``with fsync`` adds the shard's completion,
where the disk catches up (fsync, rename): on a slow disk that, not the host, is the limit, and bytes/sample counts.
Every shard is read back: lossless fields must equal the input, JPEG fields report their PSNR. Configurations and
thread counts alternate over ``--repeats`` rounds; the median counts, the minimum is shown beside it.

JSON (``--json FILE``): ``{"configs": [{"name", "codecs", "threads", "samples_per_s", "bytes_per_sample",
"readback_ok", "psnr_db", ...}], "default": "<name of the default config>", "machine": ...}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, sample_data

from enhancer.specs import EnhanceSpec
from enhancer.store import AsyncShardWriter, per_sample_shapes
from enhancer.store.codecs import JPEG_FIELDS, resolve_codecs
from enhancer.store.encoding import default_write_threads
from enhancer.store.layout import shard_path
from enhancer.store.reading import read_rows

PSNR_MIN_DB = 40.0
JPEG_PLANES = {name: "jpeg95" for name in JPEG_FIELDS}


@dataclass(frozen=True)
class Config:
    """One way to store the fields: per-field ``codecs`` over the blanket ``compression``."""

    name: str
    compression: str
    codecs: dict[str, str]
    about: str


CONFIGS = {
    c.name: c
    for c in (
        Config("default", "auto", {}, "the job's default: X-ray planes raw, heatmap gzip1"),
        Config("none", "none", {}, "nothing compressed"),
        Config("gzip4", "gzip", {}, "deflate level 4 on every field (the writer's former default)"),
        Config(
            "gzip1",
            "none",
            {n: "gzip1" for n in ("image", "heatmap", "crop", "enhanced")},
            "deflate level 1 on the planes",
        ),
        Config("gzip1-enhanced", "auto", {"enhanced": "gzip1"}, "the default + the enhanced plane gzip1"),
        Config("jpeg95", "auto", JPEG_PLANES, "X-ray planes as JPEG quality 95, heatmap gzip1"),
        Config("jpeg90", "auto", {name: "jpeg90" for name in JPEG_FIELDS}, "X-ray planes as JPEG quality 90"),
    )
}


def real_samples(checkpoint: Path | None, tmp: Path) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]]]:
    """The default fields of the 16 sample X-rays, computed by the enhance job's code; and their shapes."""
    from enhancer.data import make_loader, scan, validate
    from enhancer.enhance.batch_outputs import compute_outputs
    from enhancer.enhance.job_settings import load_model, measured_fields, output_settings
    from enhancer.models.demo import save_demo_checkpoint

    data = sample_data()
    if checkpoint is None:
        checkpoint = Path(save_demo_checkpoint(str(tmp / "demo-resnet101.pt"), "resnet101", data=str(data)))
    spec = EnhanceSpec(data=str(data), out=str(tmp / "unused"), checkpoint=str(checkpoint))
    ck, target = load_model(spec)
    settings = output_settings(spec, ck, "cpu")
    ok, _ = validate(list(scan(data).samples))
    loader = make_loader(ok, ck.preprocessing, batch_size=len(ok), loader="torch", device="cpu", num_threads=0)
    model = ck.model.eval()
    parts = [compute_outputs(model, batch, settings, target=target) for batch in loader]
    arrays = {k: torch.cat([p[k] for p in parts]).detach().numpy() for k in parts[0]}
    (h, w), (H, W), C = arrays["cam"].shape[-2:], ck.preprocessing.size, arrays["prob"].shape[1]
    shapes = per_sample_shapes(
        measured_fields(spec), H=H, W=W, h=h, w=w, Hc=spec.crop.size[0], Wc=spec.crop.size[1], C=C
    )
    return arrays, shapes


def make_batches(real: dict[str, np.ndarray], n: int, batch_size: int) -> list[dict[str, Any]]:
    """``n`` samples cycling over the real ones, in batches; index and path unique per sample."""
    k = len(real["index"])
    batches = []
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(n, start + batch_size))
        batch = {name: np.ascontiguousarray(value[rows % k]) for name, value in real.items()}
        batch["index"] = rows.astype(np.int64)
        batch["path"] = [f"NORMAL/sample_{i:06d}.jpeg" for i in rows]
        batches.append(batch)
    return batches


def write_once(
    out: Path, config: Config, threads: int, batches: list[dict[str, Any]], shapes: dict
) -> tuple[float, float, float]:
    """Seconds to write ``batches`` into one shard as the job does (async writer, its queue), the seconds its
    completion took after that (HDF5 close, fsync: the disk catching up, rename), and the CPU seconds of all the
    process's threads for the whole (which other load on the machine barely changes, unlike the wall clock)."""
    shutil.rmtree(out, ignore_errors=True)
    cpu = time.process_time()
    start = time.perf_counter()
    writer = AsyncShardWriter(
        out,
        0,
        1,
        maxsize=4,
        copy=False,
        shapes=shapes,
        fields=tuple(shapes),
        codecs=config.codecs,
        compression=config.compression,
        write_threads=threads,
        overwrite=True,
    )
    with writer:
        for batch in batches:
            writer.put(dict(batch))
    total = time.perf_counter() - start
    return total - writer.writer.finish_s, writer.writer.finish_s, time.process_time() - cpu


def read_back(path: Path, batches: list[dict[str, Any]]) -> tuple[bool, float | None]:
    """Lossless fields equal to what was written; the lowest PSNR of the JPEG fields (None without JPEG)."""
    ok, psnrs = True, []
    with h5py.File(path, "r") as f:
        for name in batches[0]:
            if name == "path":
                ok &= [p.decode() for p in f[name][:]] == [p for b in batches for p in b["path"]]
                continue
            stored = read_rows(f[name], slice(None))
            sent = np.concatenate([b[name] for b in batches])
            if str(f[name].attrs.get("codec", "")).startswith("jpeg"):
                mse = np.mean((stored.astype(np.float64) - sent) ** 2)
                psnrs.append(float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse))
            else:
                ok &= bool(np.array_equal(stored, sent))
    psnr = float(min(psnrs)) if psnrs else None
    return bool(ok and (psnr is None or psnr >= PSNR_MIN_DB)), psnr


def readable_by(codecs: dict[str, str]) -> str:
    names = set(codecs.values())
    if "lzf" in names:
        return "h5py only (lzf)"
    if any(n.startswith("jpeg") for n in names):
        return "any HDF5 reader; JPEG planes as bytes (any JPEG decoder)"
    return "any HDF5 reader (h5dump 1.10, h5py)"


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    real, shapes = real_samples(args.checkpoint, tmp)
    batches = make_batches(real, args.n, args.batch_size)
    raw_per_sample = sum(v[0].nbytes for k, v in real.items() if k != "path") + 30
    runs = [(CONFIGS[name], t) for name in args.configs for t in args.threads]
    write_once(tmp / "warm", CONFIGS["default"], 1, batches[:2], shapes)
    times: dict[tuple[str, int], list[tuple[float, float, float]]] = {(c.name, t): [] for c, t in runs}
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for _ in range(args.repeats):
        for config, threads in runs:
            out = tmp / "out"
            times[(config.name, threads)].append(write_once(out, config, threads, batches, shapes))
            path = shard_path(out, 0, 1)
            if (config.name, threads) not in results:
                ok, psnr = read_back(path, batches)
                size = path.stat().st_size / args.n
                results[(config.name, threads)] = {"bytes_per_sample": size, "readback_ok": ok, "psnr_db": psnr}
    configs = []
    for config, threads in runs:
        codecs = {k: c.name for k, c in resolve_codecs(tuple(shapes), config.codecs, config.compression).items()}
        entry = {"name": f"{config.name}@{threads}", "config": config.name, "codecs": codecs, "threads": threads}
        entry.update(_rates(times[(config.name, threads)], args.n, raw_per_sample))
        configs.append({**entry, "readable_by": readable_by(codecs), **results[(config.name, threads)]})
    default_threads = default_write_threads(EnhanceSpec().num_threads)
    return {
        "configs": configs,
        "default": f"default@{default_threads}",
        "default_note": f"default codecs at the job's default write threads here ({default_threads}: "
        f"the cores left after num_threads={EnhanceSpec().num_threads} loader threads)",
        "n": args.n,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "date": date.today().isoformat(),
        "machine": machine(),
    }


def _rates(times: list[tuple[float, float, float]], n: int, raw_per_sample: int) -> dict[str, Any]:
    """samples/s to the last HDF5 write (median, min, all rounds), including the shard's completion (fsync), and
    CPU milliseconds per sample (all threads)."""
    rates = [n / write for write, _, _ in times]
    with_fsync = [n / (write + finish) for write, finish, _ in times]
    return {
        "samples_per_s": statistics.median(rates),
        "samples_per_s_min": min(rates),
        "samples_per_s_all": rates,
        "samples_per_s_with_fsync": statistics.median(with_fsync),
        "cpu_ms_per_sample": statistics.median(1e3 * cpu / n for _, _, cpu in times),
        "finish_s": statistics.median(finish for _, finish, _ in times),
        "mib_per_s": statistics.median(rates) * raw_per_sample / 2**20,
        "raw_bytes_per_sample": raw_per_sample,
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{report['n']} samples, batch {report['batch_size']}, median (min) of {report['repeats']} rounds\n")
    print(
        "| config | threads | samples/s | with fsync | CPU ms/sample | MiB/s in | bytes/sample | vs raw | read back | "
        "PSNR dB | readable by |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
    for c in report["configs"]:
        psnr = f"{c['psnr_db']:.1f}" if c["psnr_db"] is not None else "lossless"
        print(
            f"| {c['config']} | {c['threads']} | {c['samples_per_s']:,.0f} ({c['samples_per_s_min']:,.0f}) | "
            f"{c['samples_per_s_with_fsync']:,.0f} | {c['cpu_ms_per_sample']:.2f} | {c['mib_per_s']:,.0f} | "
            f"{c['bytes_per_sample']:,.0f} | "
            f"{c['raw_bytes_per_sample'] / c['bytes_per_sample']:.2f}x | {'ok' if c['readback_ok'] else 'FAILED'} | "
            f"{psnr} | {c['readable_by']} |"
        )
    by_name = {c["name"]: c for c in report["configs"]}
    default = by_name.get(report["default"])
    if default:
        print(f"\ndefault ({report['default']}): {default['samples_per_s']:,.0f} samples/s (>= 2,000 expected)")
    one, two = by_name.get("gzip4@1"), by_name.get("gzip4@2")
    if one and two:
        print(f"gzip4 on every field, 2 threads / 1 thread: {two['samples_per_s'] / one['samples_per_s']:.2f}x")
    print("codecs: " + "; ".join(f"{c.name}: {c.about}" for c in CONFIGS.values() if c.about))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2048, help="samples per shard (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per put (default: %(default)s)")
    parser.add_argument("--threads", default="1,2", help="write thread counts, comma-separated (default: %(default)s)")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"codec configurations (default: {','.join(CONFIGS)})"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the median counts (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path, help="model for the heatmaps (default: a demo ResNet-101)")
    parser.add_argument("--tmp", type=Path, help="folder for the shards (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    args.configs = [c.strip() for c in args.configs.split(",")]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    print(machine())
    with tempfile.TemporaryDirectory(prefix="store-bench-", dir=args.tmp) as tmp:
        report = run(args, Path(tmp))
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
