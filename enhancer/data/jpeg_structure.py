"""A strict check of a JPEG file's structure, for files that a crashing decoder (DALI) will see.

Usage::

    from enhancer.data.jpeg_structure import jpeg_structure_problem
    problem = jpeg_structure_problem(Path("a.jpeg").read_bytes())   # None, or what is wrong, in words

libjpeg (behind PIL) repairs what it can: bytes between marker segments are skipped with a warning, a missing
Huffman table is replaced by the standard one. DALI 2.4's decoder crashes the whole process on some of those same
files (SIGSEGV; a bit flipped in a DHT marker, found by tests/fuzz), so ``validate(level="full")`` also refuses
what libjpeg would only warn about: junk between segments, a segment running past the end, a Huffman table that
is not a prefix code or lists a symbol twice, a scan using a table never defined, an invalid marker inside the
entropy-coded data. Well-formed files from any encoder pass; the check reads the bytes once (the entropy data as one
numpy comparison), far cheaper than decoding.
"""

from __future__ import annotations

import struct

import numpy as np

_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field
# Inside entropy-coded data 0xFF is followed by 0x00 (a stuffed byte), RST0-7, or fill bytes 0xFF; anything else
# is the marker that ends the scan.
_IN_SCAN = np.zeros(256, dtype=bool)
_IN_SCAN[[0x00, *range(0xD0, 0xD8), 0xFF]] = True


def _scan_end(data: bytes, start: int) -> int | None:
    """The offset of the 0xFF that starts the marker ending the entropy-coded data from ``start`` (the last of its fill
    bytes), or None when the data ends first."""
    tail = np.frombuffer(data, dtype=np.uint8, offset=start)
    ff = np.flatnonzero(tail[:-1] == 0xFF)
    ends = ff[~_IN_SCAN[tail[ff + 1]]]
    return start + int(ends[0]) if ends.size else None


def _huffman_problem(body: bytes) -> tuple[str | None, set[tuple[int, int]]]:
    """(what is wrong with a DHT segment's tables or None, the (class, id) tables it defines)."""
    defined: set[tuple[int, int]] = set()
    i = 0
    while i < len(body):
        if i + 17 > len(body):
            return "a Huffman table header runs past its segment", defined
        kind, ident = body[i] >> 4, body[i] & 0x0F
        counts = body[i + 1 : i + 17]
        n = sum(counts)
        symbols = body[i + 17 : i + 17 + n]
        if kind > 1 or ident > 3:
            return f"a Huffman table of class {kind} id {ident} (valid: class 0-1, id 0-3)", defined
        if n == 0 or n > 256 or len(symbols) < n:
            return f"a Huffman table with {n} codes for {len(symbols)} symbols", defined
        if sum(c << (16 - length) for length, c in enumerate(counts, start=1)) > 1 << 16:
            return "a Huffman table with more codes than its code lengths allow", defined
        if len(set(symbols)) != n:
            return "a Huffman table that lists a symbol twice", defined
        defined.add((kind, ident))
        i += 17 + n
    return None, defined


def _scan_tables(body: bytes) -> set[tuple[int, int]]:
    """The (class, id) Huffman tables a SOS segment uses: DC tables in a scan starting at coefficient 0 (not in a
    progressive DC refinement), AC tables in a scan reaching past it."""
    n = body[0] if body else 0
    if len(body) < 4 + 2 * n:
        return set()
    ss, se, ah = body[1 + 2 * n], body[2 + 2 * n], body[3 + 2 * n] >> 4
    used: set[tuple[int, int]] = set()
    for k in range(n):
        selectors = body[2 + 2 * k]
        if ss == 0 and ah == 0:
            used.add((0, selectors >> 4))
        if se > 0:
            used.add((1, selectors & 0x0F))
    return used


def jpeg_structure_problem(data: bytes) -> str | None:
    """What is wrong with the structure of the JPEG file ``data`` (see the module docstring), or None."""
    if data[:2] != b"\xff\xd8":
        return "no JPEG start-of-image marker"
    i, frame, scans, tables = 2, False, 0, set()
    while i < len(data):
        if data[i] != 0xFF:
            return f"junk bytes between marker segments at offset {i}"
        while i + 1 < len(data) and data[i + 1] == 0xFF:  # fill bytes before a marker
            i += 1
        if i + 1 >= len(data):
            break
        marker = data[i + 1]
        if marker == 0xD9:
            return None if frame and scans else "an end-of-image marker before any frame or scan"
        if marker in _STANDALONE:
            i += 2
            continue
        if i + 4 > len(data):
            break
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        body = data[i + 4 : i + 2 + length]
        if length < 2 or i + 2 + length > len(data):
            return f"a marker segment (FF {marker:02X}) running past the end of the file at offset {i}"
        if marker in _SOF:
            frame = True
        elif marker == 0xC4:
            problem, defined = _huffman_problem(body)
            if problem:
                return f"{problem} at offset {i}"
            tables |= defined
        elif marker == 0xDA:
            if not frame:
                return "a scan before its frame header"
            missing = _scan_tables(body) - tables
            if missing and tables:  # no DHT at all: arithmetic coding, or motion JPEG's implied standard tables
                return f"a scan using Huffman tables {sorted(missing)} that were never defined"
            scans += 1
            end = _scan_end(data, i + 2 + length)
            if end is None:
                break
            i = end  # at the last 0xFF before the marker
            continue
        i += 2 + length
    return "the file ends before its end-of-image marker"
