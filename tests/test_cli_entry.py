"""The console script's exit: the command's code and output intact, the interpreter's teardown skipped only where
that loses nothing (enhancer.cli.entry)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import h5py

from enhancer.cli.entry import teardown_can_be_skipped

# A script that runs the console entry after leaving traces of each exit step: an atexit handler (must run and
# reach stdout) and a module-level object whose finaliser only the interpreter's teardown calls.
SCRIPT = """
import atexit, sys
atexit.register(lambda: print("atexit ran"))
class Witness:
    def __del__(self):
        print("teardown ran")
witness = Witness()
{setup}
sys.argv = ["enhancer", *sys.argv[1:]]
from enhancer.cli.entry import run
run()
"""


def _run(*args: str, setup: str = "") -> subprocess.CompletedProcess[str]:
    code = SCRIPT.format(setup=setup)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_a_finished_command_exits_without_the_teardown_and_keeps_its_output() -> None:
    done = _run("--version")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].startswith("enhancer, version ")
    assert "atexit ran" in lines  # the handlers ran and their output was flushed
    assert "teardown ran" not in lines  # os._exit: no module teardown


def test_exit_codes_and_errors_are_those_of_the_command() -> None:
    bad = _run("enhance", "--no-such-option")
    assert bad.returncode == 2
    assert "No such option" in bad.stderr
    assert "teardown ran" not in bad.stdout
    missing = _run("inspect", "/nonexistent/model.pt")
    assert missing.returncode == 2, missing.stderr
    assert "/nonexistent/model.pt" in missing.stderr


def test_an_open_hdf5_file_gets_the_usual_exit(tmp_path: Path) -> None:
    path = tmp_path / "left-open.h5"
    setup = f"import h5py; f = h5py.File({str(path)!r}, 'w'); f['x'] = [1, 2, 3]"
    done = _run("--version", setup=setup)
    assert done.returncode == 0
    assert "teardown ran" in done.stdout.splitlines()  # the interpreter exited the usual way
    with h5py.File(path, "r") as f:  # and HDF5 closed the file properly
        assert f["x"][:].tolist() == [1, 2, 3]


def test_teardown_is_needed_while_a_file_is_open_or_a_thread_runs(tmp_path: Path) -> None:
    assert teardown_can_be_skipped()
    with h5py.File(tmp_path / "open.h5", "w"):
        assert not teardown_can_be_skipped()
    assert teardown_can_be_skipped()
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        assert not teardown_can_be_skipped()
    finally:
        release.set()
        worker.join()
    daemon = threading.Thread(target=release.wait, daemon=True)  # set already: ends at once; daemons never block
    daemon.start()
    assert teardown_can_be_skipped()
    daemon.join()
