"""Rules on the source itself, checked with ast: each file name is spelled in one module, files are renamed only by
``enhancer.atomic``, and no function is longer than 60 lines.

File names. A name is *spelled* when a string literal of the code holds it: a path, a glob, a message, an f-string
(its placeholders count as ``{}``, so ``f"shard-{i:05d}-of-{n:05d}.h5"`` is seen as ``shard-{}-of-{}.h5``). Two
kinds of string are prose for readers and may name files freely: docstrings (the first statement of a module, class
or function) and click ``help=`` texts. Comments are not in the syntax tree. Everything else takes the names from
their one module, so renaming a file is a one-line change: ``enhancer/store/layout.py`` for the enhanced dataset and
the enhance job's output directory, ``enhancer/train/rundir.py`` for a training run's directory.

Renames. ``os.replace``, ``os.rename``, ``os.renames``, ``shutil.move`` and ``.rename(...)`` calls, and
``.replace(x)`` with exactly one argument (``Path.replace``; ``str.replace`` takes two, ``dataclasses.replace``
takes keywords) appear only in ``enhancer/atomic.py``: a hand-made temporary + rename forgets the fsync or the
clean-up on error.

Function length. From the ``def`` line to the last line of the body (docstring included, decorators not), for every
function and method, nested ones too, in ``enhancer/``, ``benchmarks/`` and ``scripts/``; tests are exempt.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60

# module that spells them (relative to the repository) -> the names, as regular expressions
FILE_NAMES: dict[str, dict[str, str]] = {
    "enhancer/store/layout.py": {
        "manifest.json": r"manifest\.json",
        "rejected.csv": r"rejected\.csv",
        "README.md": r"README\.md",
        "enhance-spec.toml": r"-spec\.toml",
        "shard file names": r"shard-[\d*{]",
        ".h5": r"\.h5\b",
        ".tmp": r"\.tmp\b",
        ".lock": r"\.lock\b",
        "logs/": r"(^|/)logs(/|$)",
        "worker-K.log": r"worker-.*\.log",
        "SLURM log patterns": r"-%[Aj]",
    },
    "enhancer/train/rundir.py": {
        "last.pt": r"\blast\.pt\b",
        "best.pt": r"\bbest\.pt\b",
        "metrics.csv / metrics.jsonl": r"\bmetrics\.(csv|jsonl)\b",
        "curves.png": r"\bcurves\.png\b",
        "unreadable.csv": r"\bunreadable\.csv\b",
    },
}
RENAMING_MODULE = "enhancer/atomic.py"


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def _prose_nodes(tree: ast.AST) -> set[int]:
    """ids of the docstring constants and of everything inside ``help=`` arguments."""
    prose: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                prose.add(id(first.value))
        if isinstance(node, ast.keyword) and node.arg == "help":
            prose |= {id(n) for n in ast.walk(node.value)}
    return prose


def string_literals(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, text) of every string literal that is not prose; f-strings whole, placeholders as ``{}``."""
    skip = _prose_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.JoinedStr):
            skip |= {id(n) for n in ast.walk(node)}
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            yield node.lineno, text
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def spelled_names(source: str, names: dict[str, str]) -> list[tuple[int, str, str]]:
    """(line, literal, name) for each literal of ``source`` that spells one of ``names``."""
    found = []
    for line, text in string_literals(ast.parse(source)):
        for name, pattern in names.items():
            if re.search(pattern, text):
                found.append((line, text, name))
    return sorted(found)


def renames(source: str) -> list[tuple[int, str]]:
    """(line, call) of every call that renames a file."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        call = ast.unparse(node.func)
        if call in ("os.replace", "os.rename", "os.renames", "shutil.move") or node.func.attr == "rename":
            found.append((node.lineno, call))
        elif node.func.attr == "replace" and len(node.args) == 1 and not node.keywords:
            found.append((node.lineno, call))
    return sorted(found)


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(name, def line, length) of every function longer than ``limit`` lines."""
    return [
        (node.name, node.lineno, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > limit
    ]


def test_each_file_name_is_spelled_only_in_its_layout_module() -> None:
    problems = []
    for path in python_files("enhancer"):
        rel = path.relative_to(REPO).as_posix()
        source = path.read_text()
        for owner, names in FILE_NAMES.items():
            if rel != owner:
                problems += [
                    f"{rel}:{line}: {text!r} spells {name}; take it from {owner}"
                    for line, text, name in spelled_names(source, names)
                ]
    assert problems == []


def test_the_layout_modules_hold_every_name() -> None:
    for owner, names in FILE_NAMES.items():
        spelled = {name for _, _, name in spelled_names((REPO / owner).read_text(), names)}
        assert spelled == set(names), f"{owner} no longer spells {sorted(set(names) - spelled)}: update FILE_NAMES"


def test_only_the_atomic_module_renames_files() -> None:
    problems = []
    for path in python_files("enhancer"):
        rel = path.relative_to(REPO).as_posix()
        if rel != RENAMING_MODULE:
            problems += [f"{rel}:{line}: {call}(...); use enhancer.atomic" for line, call in renames(path.read_text())]
    assert problems == []
    assert [call for _, call in renames((REPO / RENAMING_MODULE).read_text())] == ["os.replace"]


def test_no_function_is_longer_than_60_lines() -> None:
    problems = [
        f"{path.relative_to(REPO)}:{line}: {name} has {length} lines (at most {MAX_FUNCTION_LINES}): split it into "
        "named steps"
        for path in python_files("enhancer", "benchmarks", "scripts")
        for name, line, length in long_functions(path.read_text())
    ]
    assert problems == []


EXAMPLE = '''
"""Module prose may say manifest.json."""
import click, os, shutil


@click.option("--out", help="writes OUT/logs/worker-K.log and manifest.json")
def f(out, i, n, text):
    """Prose: rejected.csv, shard-00000-of-00001.h5."""
    shard = f"shard-{i:05d}-of-{n:05d}.h5"
    os.replace(out + ".tmp", out)
    out.rename("x")
    out.replace("y")
    shutil.move(out, "z")
    text.replace("a", "b")
    return shard, "manifest.json", out / "logs"
'''


def test_the_checks_find_what_they_look_for() -> None:
    names = FILE_NAMES["enhancer/store/layout.py"]
    assert spelled_names(EXAMPLE, names) == [
        (9, "shard-{}-of-{}.h5", ".h5"),
        (9, "shard-{}-of-{}.h5", "shard file names"),
        (10, ".tmp", ".tmp"),
        (15, "logs", "logs/"),
        (15, "manifest.json", "manifest.json"),
    ]
    assert renames(EXAMPLE) == [(10, "os.replace"), (11, "out.rename"), (12, "out.replace"), (13, "shutil.move")]
    assert long_functions(EXAMPLE, limit=8) == [("f", 7, 9)]  # def line to return line
    assert long_functions(EXAMPLE, limit=9) == []
