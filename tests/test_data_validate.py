"""Validation of a dataset with every kind of bad and odd file; ``make_messy_dataset`` is reused by the loader tests."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enhancer.data import REJECTION_CODES, scan, validate

MAX_PIXELS = 2_000_000  # "too_large.png" is 2000 x 1500 = 3 M pixels
NON_UTF8 = b"caf\xe9 \xff.jpeg"  # latin-1 bytes: not decodable as UTF-8


def _grey(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth X-ray-like grey gradient with noise (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 80 * np.sin(xx / (w / 3.0) + seed) * np.cos(yy / (h / 2.0))
    return np.clip(base + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)


def _jpeg(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    (im.convert(mode) if mode else im).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def bad_huffman_jpeg(arr: np.ndarray) -> bytes:
    """A JPEG whose header parses (passes ``header`` validation) but whose Huffman table is bogus: decoding fails."""
    data = bytearray(_jpeg(arr))
    dht = data.find(b"\xff\xc4")
    data[dht + 5 : dht + 21] = b"\xff" * 16
    return bytes(data)


def make_messy_dataset(root: Path) -> dict[str, str | None]:
    """ImageFolder with classes ``good`` and ``odd``; returns {relative path: expected header-level code or None}.

    The bad-Huffman JPEG passes ``header`` (None here) and fails at decode time (``decode_error``).
    """
    (root / "good").mkdir(parents=True)
    (root / "odd" / ".cache" / "deeper").mkdir(parents=True)
    g = _grey(48, 64, 1)
    rgb = np.stack([_grey(48, 64, 2), _grey(48, 64, 3), _grey(48, 64, 4)], axis=-1)
    g16 = (np.linspace(0, 65535, 48 * 64).reshape(48, 64)).astype(np.uint16)
    files: dict[str, tuple[bytes, str | None]] = {
        "good/a_grey.jpeg": (_jpeg(g), None),
        "good/b_rgb.jpeg": (_jpeg(rgb), None),
        "good/c_cmyk.jpeg": (_jpeg(rgb, "CMYK"), None),
        "good/d_rgb.png": (_png(Image.fromarray(rgb)), None),
        "good/e_rgba.png": (_png(Image.fromarray(np.dstack([rgb, g]))), None),
        "good/f_palette.png": (_png(Image.fromarray(rgb).convert("P")), None),
        "good/g_grey16.png": (_png(Image.fromarray(g16)), None),
        "good/h_png_named.jpeg": (_png(Image.fromarray(g)), None),
        "good/i_one_pixel.png": (_png(Image.fromarray(np.full((1, 1), 77, np.uint8))), None),
        "good/j_grey.bmp": (_bmp(g), None),
        "odd/a_empty.jpeg": (b"", "empty"),
        "odd/b_text.jpeg": (b"this is not an image\n" * 10, "not_image"),
        "odd/c_truncated.jpeg": (_jpeg(g)[:-400], "truncated"),
        "odd/d_truncated.png": (_png(Image.fromarray(g))[:-300], "truncated"),
        "odd/e_anim.gif": (_gif(g), "unsupported"),
        "odd/f_too_large.png": (_png(Image.new("L", (2000, 1500), 10)), "too_large"),
        "odd/g_bad_huffman.jpeg": (bad_huffman_jpeg(g), None),
        "odd/h_grey.jpeg": (_jpeg(_grey(48, 64, 5)), None),
        "odd/i_grey.jpeg": (_jpeg(_grey(48, 64, 6)), None),
        "odd/.cache/deeper/hidden.jpeg": (_jpeg(g), "hidden"),
        "odd/.hidden_file.jpeg": (b"", "hidden"),
    }
    expected: dict[str, str | None] = {}
    for rel, (data, code) in files.items():
        (root / rel).write_bytes(data)
        if code != "hidden":
            expected[rel] = code
    with open(os.path.join(os.fsencode(root), b"good", NON_UTF8), "wb") as fh:
        fh.write(_jpeg(_grey(40, 30, 7)))
    expected[os.fsdecode(b"good/" + NON_UTF8)] = None
    os.mkfifo(root / "odd" / "j_fifo.jpeg")  # not a regular file (root can read anything, so no chmod test)
    expected["odd/j_fifo.jpeg"] = "unreadable"
    os.symlink(root / "nowhere.jpeg", root / "odd" / "k_dangling.jpeg")
    expected["odd/k_dangling.jpeg"] = "missing"
    return expected


def _bmp(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "BMP")
    return buf.getvalue()


def _gif(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "GIF")
    return buf.getvalue()


@pytest.fixture()
def messy(tmp_path: Path) -> tuple[Path, dict[str, str | None]]:
    return tmp_path, make_messy_dataset(tmp_path)


def test_scan_sees_every_non_hidden_file(messy: tuple[Path, dict[str, str | None]]) -> None:
    root, expected = messy
    found = scan(root)
    assert sorted(os.path.relpath(s.path, root) for s in found.samples) == sorted(expected)


@pytest.mark.parametrize("workers", [1, 2])
def test_header_validation_codes(messy: tuple[Path, dict[str, str | None]], workers: int) -> None:
    root, expected = messy
    samples = scan(root).samples
    ok, rejected = validate(samples, level="header", workers=workers, max_pixels=MAX_PIXELS)
    assert len(ok) + len(rejected) == len(samples)
    got = {os.path.relpath(r.path, root): r.code for r in rejected}
    assert got == {rel: code for rel, code in expected.items() if code is not None}
    assert all(r.code in REJECTION_CODES and r.message for r in rejected)
    by_index = {s.index: s for s in samples}
    assert all(by_index[r.index].path == r.path for r in rejected)
    assert [s.index for s in ok] == sorted(s.index for s in ok)  # input order kept


def test_full_validation_catches_the_corrupt_jpeg(messy: tuple[Path, dict[str, str | None]]) -> None:
    root, expected = messy
    samples = scan(root).samples
    ok, rejected = validate(samples, level="full", max_pixels=MAX_PIXELS)
    got = {os.path.relpath(r.path, root): r.code for r in rejected}
    want = {rel: code for rel, code in expected.items() if code is not None} | {
        "odd/g_bad_huffman.jpeg": "decode_error"
    }
    assert got == want
    assert len(ok) == len(samples) - len(want)


def test_too_large_depends_on_the_limit(messy: tuple[Path, dict[str, str | None]]) -> None:
    root, _ = messy
    big = [s for s in scan(root).samples if s.path.endswith("f_too_large.png")]
    assert validate(big, max_pixels=3_000_000)[1] == []
    (rej,) = validate(big, max_pixels=2_999_999)[1]
    assert rej.code == "too_large" and "2000x1500" in rej.message


def test_validate_rejects_unknown_level() -> None:
    with pytest.raises(ValueError, match="header, full"):
        validate([], level="deep")


def _jpeg_variants(arr: np.ndarray) -> dict[str, bytes]:
    rgb = np.stack([arr, np.roll(arr, 3, axis=1), np.roll(arr, 5, axis=0)], axis=-1)
    out = {}
    for name, im, kw in (
        ("grey", Image.fromarray(arr), {}),
        ("progressive", Image.fromarray(arr), {"progressive": True}),
        ("optimised colour", Image.fromarray(rgb), {"optimize": True, "subsampling": 2}),
        ("progressive colour", Image.fromarray(rgb), {"progressive": True, "optimize": True}),
        ("cmyk", Image.fromarray(rgb).convert("CMYK"), {}),
        ("restart markers", Image.fromarray(arr), {"restart_marker_blocks": 2}),
    ):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90, **kw)
        out[name] = buf.getvalue()
    return out


def test_well_formed_jpegs_pass_the_strict_structure_check(kermany_dir: Path) -> None:
    from enhancer.data.jpeg_structure import jpeg_structure_problem

    for path in sorted(kermany_dir.rglob("*.jpeg")):
        assert jpeg_structure_problem(path.read_bytes()) is None, path.name
    for name, data in _jpeg_variants(_grey(64, 80, 9)).items():
        assert jpeg_structure_problem(data) is None, name


def test_full_validation_refuses_the_jpegs_libjpeg_repairs_and_dali_crashes_on(tmp_path: Path) -> None:
    # Both found by tests/fuzz: DALI 2.4 crashed the process (SIGSEGV) on them in batches of 32 or more.
    good = _jpeg(_grey(64, 80, 3))
    dht = good.find(b"\xff\xc4\x00\xb5\x10")  # the AC Huffman table
    flipped = bytearray(good)
    flipped[dht] = 0x7F  # one bit: the marker is gone, its table becomes junk that libjpeg skips
    zeroed = bytearray(good)
    zeroed[dht + 31 : dht + 31 + 534] = bytes(534)  # symbols zeroed: a table listing one symbol many times
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "flipped.jpeg").write_bytes(bytes(flipped))
    (tmp_path / "c" / "zeroed.jpeg").write_bytes(bytes(zeroed))
    samples = scan(tmp_path).samples
    assert validate(samples, level="header")[1] == []  # the header and the end marker look fine
    rejected = {os.path.basename(r.path): (r.code, r.message) for r in validate(samples, level="full")[1]}
    junk = f"corrupt JPEG structure: junk bytes between marker segments at offset {dht}"
    assert rejected["flipped.jpeg"] == ("decode_error", junk)
    assert rejected["zeroed.jpeg"][0] == "decode_error"


def test_the_scaled_jpeg_decode_rejects_what_the_full_size_decode_rejects(
    tmp_path: Path, kermany_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``full`` decodes JPEGs at 1/8 scale (every coefficient still entropy-decoded): over a fuzzed set of files
    (truncated, bit-flipped, zeroed blocks, swapped headers, ...) its verdicts equal those of a full-size decode."""
    from PIL import JpegImagePlugin

    from tests.fuzz.mutants import make_fuzz_dataset

    make_fuzz_dataset(kermany_dir, tmp_path / "fuzz", n=400, seed=11)
    samples = scan(str(tmp_path / "fuzz")).samples
    _, scaled = validate(samples, level="full")
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, mode, size: None)
    _, full_size = validate(samples, level="full")
    assert [(r.path, r.code) for r in scaled] == [(r.path, r.code) for r in full_size]
    assert sum(r.code == "decode_error" for r in scaled) >= 20, "the set holds JPEGs that fail to decode"
