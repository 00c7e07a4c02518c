"""What made an output: package version, code revision, time and host; stored next to every result."""

from __future__ import annotations

import datetime
import socket
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from enhancer import __version__


@cache
def code_revision() -> str:
    """The git commit of the installed source tree (with ``+dirty`` for local changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "") if rev else "unknown"


def provenance() -> dict[str, Any]:
    return {
        "package_version": __version__,
        "code_revision": code_revision(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
    }
