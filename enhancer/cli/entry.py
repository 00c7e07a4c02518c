"""The ``enhancer`` console script (and ``python -m enhancer.cli``): the click group, then a quick exit.

Once a command has returned, tearing the interpreter down deallocates every module's objects and unloads torch's
native libraries (and DALI's): 0.3-0.5 s on a 2-core x86 VM after any command that imported torch, with nothing
left to do. ``run`` ends the process with ``os._exit`` instead, once that loses nothing: the atexit handlers have
run (logging's final flush, multiprocessing's children, temporary folders) and stdout / stderr are flushed. Where
it could lose something, the interpreter exits the usual way: a non-daemon thread still running (the interpreter
would wait for it), or an HDF5 file still open (HDF5 flushes those in its own C exit handler, which ``os._exit``
skips).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

from enhancer.cli import main


def run() -> NoReturn:
    """Run the command line (``sys.argv``) and exit with its code."""
    try:
        main.main()  # click's standalone mode: always ends in SystemExit
    except SystemExit as stop:
        code = stop.code
    else:  # pragma: no cover (standalone mode always exits)
        code = 0
    if code is not None and not isinstance(code, int):  # sys.exit("message"): as the interpreter would
        print(code, file=sys.stderr)
        code = 1
    if not teardown_can_be_skipped():
        sys.exit(code)
    atexit._run_exitfuncs()  # what the interpreter would run first; no public name for it
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe, a closed stream: nothing more can reach it anyway
            pass
    os._exit(code or 0)


def teardown_can_be_skipped() -> bool:
    """Whether ending the process without the interpreter's teardown loses nothing: no non-daemon thread is still
    running and no HDF5 file is still open."""
    main_thread = threading.main_thread()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not main_thread):
        return False
    h5f = sys.modules.get("h5py.h5f")
    return h5f is None or h5f.get_obj_count(h5f.OBJ_ALL, h5f.OBJ_FILE) == 0
