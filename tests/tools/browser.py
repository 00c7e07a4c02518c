"""Headless Chromium driven over the Chrome DevTools Protocol, for tests of the HTML report.

Usage::

    with Chromium(require_command("chromium", install=...)) as browser:
        page = browser.open(Path("report/index.html").resolve().as_uri())
        page.wait_for("document.body.dataset.state === 'ready'")
        assert page.evaluate("document.querySelectorAll('.card').length") == 16
        assert page.console_errors == [] and page.foreign_requests() == []
        png = page.screenshot()

Chromium starts with a fresh profile and without its background services (updates, sync, field trials), whose
connections would fail on a closed network; ``--remote-debugging-port=0`` picks a free loopback port, read back from
the profile's ``DevToolsActivePort``. One websocket to the browser carries every page's session (flat mode).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import websocket

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--window-size=1280,900",
    "--remote-debugging-port=0",
)


class BrowserError(RuntimeError):
    pass


class Chromium:
    """A headless Chromium process and its DevTools connection; a context manager that cleans up after itself."""

    def __init__(self, executable: str, timeout: float = 30.0) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="report-chromium-"))
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        try:
            self.ws = websocket.create_connection(self._ws_url(), timeout=timeout, suppress_origin=True)
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)
            raise

    def _ws_url(self) -> str:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self.proc.returncode}: {self.proc.stderr.read().decode()}")
            lines = port_file.read_text().split() if port_file.is_file() else []
            if len(lines) == 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.05)
        raise BrowserError(f"chromium did not open its DevTools port within {self.timeout} s")

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """One DevTools command; events arriving meanwhile are kept for ``Page``."""
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)
        raise BrowserError(f"{method}: no reply within {self.timeout} s")

    def drain(self) -> None:
        """Collect the events that arrived since the last command (without blocking)."""
        self.ws.settimeout(0.01)
        try:
            while True:
                reply = json.loads(self.ws.recv())
                if "method" in reply:
                    self._events.append(reply)
        except websocket.WebSocketTimeoutException:
            pass
        finally:
            self.ws.settimeout(self.timeout)

    def events(self, session: str) -> list[dict[str, Any]]:
        self.drain()
        return [e for e in self._events if e.get("sessionId") == session]

    def open(self, url: str) -> Page:
        """A new tab with console, exceptions and requests recorded from the start, navigated to ``url``."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        page.navigate(url)
        return page

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (BrowserError, OSError, websocket.WebSocketException):
            pass
        self.ws.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab: evaluate JavaScript, wait for conditions, press keys, read what the page logged and requested."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, self.session)

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited), as JSON."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise BrowserError(f"still false after {timeout} s: {expression}")

    def press(self, key: str, code: str | None = None) -> None:
        """A real key press (keydown + keyup) sent to the focused element, e.g. ``press("ArrowRight")``."""
        params = {"key": key, "code": code or key, "windowsVirtualKeyCode": _KEY_CODES.get(key, 0)}
        self.send("Input.dispatchKeyEvent", {"type": "keyDown", **params})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", **params})

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])

    @property
    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser-logged errors (a missing file, a refused load)."""
        found = []
        for e in self.browser.events(self.session):
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif e["method"] == "Runtime.exceptionThrown":
                found.append(str(p.get("exceptionDetails", {}).get("exception", {}).get("description", p)))
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                found.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif e["method"] == "Network.loadingFailed":
                found.append(f"request failed: {p.get('errorText')} ({p.get('type')})")
        return found

    @property
    def requests(self) -> list[str]:
        """URLs of every request the page made."""
        events = self.browser.events(self.session)
        return [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]

    def foreign_requests(self) -> list[str]:
        """Requests that would go to the network: anything but ``file:`` (and inline ``data:``) URLs."""
        return [u for u in self.requests if not u.startswith(("file:", "data:"))]


_KEY_CODES = {"ArrowLeft": 37, "ArrowRight": 39, "Escape": 27, "Enter": 13}
