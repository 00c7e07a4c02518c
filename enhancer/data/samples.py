"""The 16 real sample chest X-rays (the public dataset's ``val`` split), fetched and checked by hash.

Usage: ``enhancer fetch-samples data/kermany-val`` (or ``fetch_samples(dest)``); ``cached_samples()`` keeps one
checked copy in the user cache (``$ENHANCER_CACHE``, else ``$XDG_CACHE_HOME/enhancer``, else ``~/.cache/enhancer``),
which the tests and benchmarks use.

Source: Kermany, Zhang, Goldbaum, "Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for
Classification", Mendeley Data v2, doi:10.17632/rscbjbr9sj.2, licence CC BY 4.0. The files travel inside the PyPI
wheel of ``pneumonia-model-package==0.3.0`` (so a machine that reaches only PyPI can get them); they are taken from
there, or copied from a local folder, and laid out as an ImageFolder (NORMAL/, PNEUMONIA/). Offline, point
``ENHANCER_SAMPLES`` at a folder holding the 16 files: it is used instead of the package index.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from enhancer.atomic import move_into_place
from enhancer.hashing import file_sha256

log = logging.getLogger(__name__)

SOURCE_ENV = "ENHANCER_SAMPLES"  # a local folder holding the 16 files: the offline source
CACHE_ENV = "ENHANCER_CACHE"
WHEEL_REQUIREMENT = "pneumonia-model-package==0.3.0"
WHEEL_MEMBER_DIR = "pneumonia_model_package/datasets/pneumonia-data/val/"
ATTRIBUTION = (
    "Kermany, Zhang, Goldbaum, 'Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for "
    "Classification', Mendeley Data v2, doi:10.17632/rscbjbr9sj.2. Licence: CC BY 4.0 (attribution required)."
)
SAMPLE_SHA256 = {
    "NORMAL/NORMAL2-IM-1427-0001.jpeg": "95fe6dd24fc010ee526e40457ff34ef057d257c71b22ac9fd312094d4d7b2a37",
    "NORMAL/NORMAL2-IM-1430-0001.jpeg": "ba2d0ff79c2758dc75331c3242dfc05b0108df3affc5402b55b6d9b81f44c2a0",
    "NORMAL/NORMAL2-IM-1431-0001.jpeg": "1eab167cd836a153ddeb61a0e59ff21b276fb79b0aab70491605a77ffc52f4ac",
    "NORMAL/NORMAL2-IM-1436-0001.jpeg": "1b96b8ba4d279362a396c2864f76eb3f30ba910f63573491ed2203b4e728f5c7",
    "NORMAL/NORMAL2-IM-1437-0001.jpeg": "a73c06abbb473b57c90374424f86f0d7876bdbdb5c3ed8c681e4bd6f09778c38",
    "NORMAL/NORMAL2-IM-1438-0001.jpeg": "19deafbd4cb13b7bca7e9c83466066c0d0c9e1678861519dcb1d0a45a79b0362",
    "NORMAL/NORMAL2-IM-1440-0001.jpeg": "91c3cb7e4c579b7f9d7f48780575caacfbc51898841cdc0d0d1a388bbba47203",
    "NORMAL/NORMAL2-IM-1442-0001.jpeg": "d30b85c96b78dabe1ddf05867a687dffe7a9a067cd72485abace2fc959c2a503",
    "PNEUMONIA/person1946_bacteria_4874.jpeg": "8bbf92ad61e43b7ff8c12eff396594cfbc631e4a1daff80deba3d929f6199cb0",
    "PNEUMONIA/person1946_bacteria_4875.jpeg": "905a703da2ca12326f2d88ce9b9823290bad97e98c8179e77393c56f86978caa",
    "PNEUMONIA/person1947_bacteria_4876.jpeg": "a10dda144959f77c7589b2c874da00d9649e34ee96660b87ef8d720083524154",
    "PNEUMONIA/person1949_bacteria_4880.jpeg": "5bde846e4a137b37e568c66a61752b4c5cfe2057b0f4af6bfd3cfab3db1202b8",
    "PNEUMONIA/person1950_bacteria_4881.jpeg": "e1d5161b6a6d82ccbee47fd8dfb1a6d44eded1d7e4f164121dd2a229bdc43f5d",
    "PNEUMONIA/person1951_bacteria_4882.jpeg": "1136fa7a74528c4b6dd55b7318dedefdbc7b523db09928b1ebdf276fef31f08b",
    "PNEUMONIA/person1952_bacteria_4883.jpeg": "3fef55b2ba3c51c66ad41122ed4f640c19bb549d850d53fbbe3a4f18d9eb4e82",
    "PNEUMONIA/person1954_bacteria_4886.jpeg": "9904f0fec6adc349c35452fa9909721b9dfcb02a254c76b9d329f3432151ed39",
}


class FetchError(RuntimeError):
    """The samples could not be obtained or failed their hash check; the message says what to do."""


def class_of(file_name: str) -> str:
    """The label rule of the wheel's flat folder: ``NORMAL*`` -> NORMAL, ``person*_bacteria_*`` -> PNEUMONIA."""
    if file_name.startswith("NORMAL"):
        return "NORMAL"
    if file_name.startswith("person") and ("_bacteria_" in file_name or "_virus_" in file_name):
        return "PNEUMONIA"
    raise FetchError(f"cannot tell the class of sample file {file_name!r}")


def verify_samples(dest: str | os.PathLike[str]) -> list[str]:
    """Problems with the samples under ``dest`` (missing files, wrong hashes); empty when all 16 are right."""
    dest = Path(dest)
    problems = []
    for rel, digest in SAMPLE_SHA256.items():
        path = dest / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif file_sha256(path) != digest:
            problems.append(f"{path}: sha256 differs from the published file")
    return problems


def _download_wheel(workdir: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), WHEEL_REQUIREMENT]
    log.info("downloading %s", WHEEL_REQUIREMENT)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(workdir.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise FetchError(
            f"could not download {WHEEL_REQUIREMENT} from the package index ({reason}); on a machine without "
            f"access, copy the 16 files from elsewhere and pass --from DIR (or set {SOURCE_ENV}=DIR)"
        )
    return wheels[0]


def cache_dir() -> Path:
    """enhancer's user cache: ``$ENHANCER_CACHE``, else ``$XDG_CACHE_HOME/enhancer``, else ``~/.cache/enhancer``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "enhancer"


def cached_samples() -> Path:
    """The 16 samples in the user cache (``cache_dir()/samples/kermany-val``), fetched and checked on first use
    (from ``$ENHANCER_SAMPLES`` when set, else the package index); later calls only re-check the hashes."""
    return fetch_samples(cache_dir() / "samples" / "kermany-val")


def fetch_samples(dest: str | os.PathLike[str], *, source: str | os.PathLike[str] | None = None) -> Path:
    """Lay the 16 samples out under ``dest`` as ImageFolder and check their hashes. ``source`` is a local folder
    holding them (flat or as NORMAL/, PNEUMONIA/); without it ``$ENHANCER_SAMPLES``, else the PyPI wheel.
    Idempotent; safe when several processes fetch into the same ``dest`` at once (each file lands by rename)."""
    dest = Path(dest)
    if source is None and os.environ.get(SOURCE_ENV):
        source = os.environ[SOURCE_ENV]
        if not Path(source).is_dir():
            raise FetchError(f"{SOURCE_ENV}={source}: no such folder; point it at a copy of the 16 sample files")
    if not verify_samples(dest):
        log.info("samples already present in %s", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-fetch-", dir=dest.parent))  # same filesystem: rename works
    try:
        if source is not None:
            found = {p.name: p for p in Path(source).rglob("*.jpeg")}
            for rel in SAMPLE_SHA256:
                name = Path(rel).name
                if name not in found:
                    raise FetchError(
                        f"{source}: has no {name}; point --from (or {SOURCE_ENV}) at the folder holding the 16 samples"
                    )
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(found[name], staging / rel)
        else:
            with zipfile.ZipFile(_download_wheel(staging)) as wheel:
                for member in wheel.namelist():
                    name = member.rsplit("/", 1)[-1]
                    if member.startswith(WHEEL_MEMBER_DIR) and name.endswith(".jpeg"):
                        target = staging / class_of(name) / name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(wheel.read(member))
        problems = verify_samples(staging)
        if problems:
            raise FetchError("the fetched samples are not the published ones: " + "; ".join(problems[:3]))
        for rel in SAMPLE_SHA256:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            move_into_place(staging / rel, dest / rel)
        (dest / "ATTRIBUTION.md").write_text(f"# Sample chest X-rays\n\n{ATTRIBUTION}\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
