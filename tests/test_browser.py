"""The report opened in a real browser: headless Chromium renders ``index.html`` and ``interactive.html``
from disk, and the test reads the rendered DOM and the page's console through the Chrome DevTools protocol.

The protocol runs over a WebSocket; the few lines of client below use the standard library only, so the
test needs Chromium and nothing else (Debian's ``chromium`` package; ``.ci/run`` installs it).  Chromium
picks its own free port (``--remote-debugging-port=0``, written to ``DevToolsActivePort`` in its profile),
so there is no race for a port; it runs in its own process group, which the test stops by the pid it
started.  Host names resolve nowhere, so a page that needed the network would fail here.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_report import write_trials

from sweep import report
from sweep.report.colours import method_styles

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
STARTUP_S = 60  # a cold Chromium on a loaded 2-core machine takes a few seconds; leave room
PAGE_S = 60  # interactive.html holds 5 MB of plotly.js to parse


def _chromium() -> str | None:
    return next((p for p in CHROMIUM_PATHS if os.access(p, os.X_OK)), None) or shutil.which("chromium")


# --------------------------------------------------------------------------- a minimal WebSocket client


class WebSocket:
    """RFC 6455 client for text messages: enough for the DevTools protocol (no extensions)."""

    def __init__(self, url: str, timeout: float) -> None:
        host_port, path = url.removeprefix("ws://").split("/", 1)
        host, port = host_port.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        # No Origin header: Chromium only checks origins that a request declares
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())  # fmt: skip
        self.buf = b""
        head = self._read_until(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"WebSocket upgrade refused: {head[:200]!r}")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(marker, 1)
        return head

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the browser closed the DevTools connection")
        self.buf += chunk

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, text: str) -> None:
        payload = text.encode()
        n = len(payload)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                  bytes([0x80 | 126]) + struct.pack("!H", n) if n < 1 << 16 else
                                  bytes([0x80 | 127]) + struct.pack("!Q", n))  # fmt: skip
        mask = os.urandom(4)  # clients must mask every frame
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self) -> str:
        """The next text message (fragments joined; pings answered)."""
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n >= 126:  # 126: a 16-bit length follows, 127: a 64-bit one
                n = struct.unpack("!H" if n == 126 else "!Q", self._read(2 if n == 126 else 8))[0]
            payload = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("the browser closed the DevTools connection")
            if opcode == 0x9:  # ping: answer with a masked pong carrying the same data
                mask = os.urandom(4)
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask +
                                  bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))  # fmt: skip
                continue
            parts.append(payload)
            if b0 & 0x80:
                return b"".join(parts).decode()

    def close(self) -> None:
        self.sock.close()


class DevTools:
    """Commands to one page target; events are kept in ``events`` as they arrive."""

    def __init__(self, ws_url: str) -> None:
        self.ws = WebSocket(ws_url, timeout=PAGE_S)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == name for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {name} within {timeout} s")
            self.events.append(json.loads(self.ws.recv()))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_true(self, expression: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            time.sleep(0.2)

    def errors(self) -> list[str]:
        """What the page reported as an error: uncaught exceptions, console.error/assert, error log entries."""
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                out.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
        return out

    def remote_requests(self) -> list[str]:
        """URLs the page asked for that were not on disk or inline."""
        urls = [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]
        return [u for u in urls if not u.startswith(("file:", "data:", "blob:", "about:"))]

    def close(self) -> None:
        self.ws.close()


# --------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """A headless Chromium on a free port: yields its DevTools HTTP base URL; stopped by its pid after."""
    exe = _chromium()
    if exe is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    args = [exe, "--headless", f"--user-data-dir={profile}", "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-dev-shm-usage",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            # WebGL (plotly's parallel coordinates) on the CPU: there is no GPU here
            "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
            "about:blank"]  # fmt: skip
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root (CI containers)
    log = (profile.parent / "chromium.log").open("wb")
    # Chromium's own scratch folders (org.chromium.Chromium.*) go to TMPDIR; stopped by its pid, it leaves
    # them behind: they go with the test's temporary folders instead of piling up in /tmp
    env = {**os.environ, "TMPDIR": str(tmp_path_factory.mktemp("chromium-tmp"))}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, env=env)
    try:
        yield _wait_ready(proc, profile / "DevToolsActivePort")
    finally:
        _stop(proc)
        log.close()


def _wait_ready(proc: subprocess.Popen, port_file: Path) -> str:
    """The DevTools base URL once Chromium has written its port and answers on it."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Chromium exited with {proc.returncode} before it was ready")
        lines = port_file.read_text().split() if port_file.exists() else []
        if lines:
            base = f"http://127.0.0.1:{int(lines[0])}"
            try:
                with urllib.request.urlopen(f"{base}/json/version", timeout=5) as r:
                    json.load(r)
                return base
            except OSError:
                pass
        time.sleep(0.1)
    pytest.fail(f"Chromium was not ready within {STARTUP_S} s")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process group led by the browser we started (its renderers and GPU
    process too), waiting each time until no process of that group is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if _group_gone(proc, grace=10):
            break
    proc.wait(10)


def _group_gone(proc: subprocess.Popen, grace: float) -> bool:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader: a zombie would keep its group alive
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _page(base: str) -> DevTools:
    with urllib.request.urlopen(f"{base}/json/list", timeout=10) as r:
        targets = json.load(r)
    page = next(t for t in targets if t.get("type") == "page")
    tools = DevTools(page["webSocketDebuggerUrl"])
    for domain in ("Runtime", "Log", "Page", "Network"):
        tools.call(f"{domain}.enable")
    return tools


def _open(base: str, path: Path) -> DevTools:
    tools = _page(base)
    tools.events.clear()
    tools.call("Page.navigate", url=path.resolve().as_uri())
    tools.wait_event("Page.loadEventFired", PAGE_S)
    return tools


# --------------------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of a small two-method sweep folder (no Ray), with widths for the best trial."""
    root = tmp_path_factory.mktemp("browser")
    write_trials(root / "sweep", widths=True)
    report.build_report(root / "sweep", root / "report")
    return root / "report"


TABLES_JS = """JSON.stringify(Object.fromEntries(['summary', 'front', 'budget-explorer', 'methods', 'failed'].map(
    id => [id, document.querySelectorAll('#' + id + ' tbody tr').length])))"""
IMAGES_JS = """JSON.stringify([...document.images].map(
    i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]))"""


def test_index_html_renders_every_table_and_figure(browser: str, report_dir: Path) -> None:
    tools = _open(browser, report_dir / "index.html")
    try:
        rows = json.loads(tools.evaluate(TABLES_JS))
        images = dict(json.loads(tools.evaluate(IMAGES_JS)))
        headings = tools.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
        assert tools.errors() == [] and tools.remote_requests() == []
    finally:
        tools.close()
    assert rows["summary"] >= 8 and rows["front"] >= 2 and rows["methods"] == 2 and rows["failed"] == 1
    assert rows["budget-explorer"] >= 2
    for name in ("accuracy_vs_latency.png", "accuracy_vs_params.png", "accuracy_vs_macs.png", "hypervolume.png",
                 "parallel_coordinates.png"):  # fmt: skip
        assert images.get(name) is True, f"{name} did not load: {images}"
    widths = [src for src in images if src.startswith("widths_")]
    assert len(widths) == 1 and images[widths[0]] is True
    assert "Budget explorer" in headings and "Knobs to objectives" in headings
    assert any(h.startswith("Per-layer widths of the best trial") for h in headings)


PLOTS_JS = """JSON.stringify(Object.fromEntries([...document.querySelectorAll('.js-plotly-plot')].map(d => [d.id, {
    types: d._fullData.map(t => t.type),
    names: d._fullData.map(t => t.name),
    colours: d._fullData.map(t => t.marker && typeof t.marker.color === 'string' ? t.marker.color : null),
    svg: d.querySelectorAll('svg').length,
    axes: d.querySelectorAll('.parcoords .y-axis, .parcoords g.axis').length,
}])))"""


def test_interactive_html_renders_plotly_figures_offline(browser: str, report_dir: Path) -> None:
    tools = _open(browser, report_dir / "interactive.html")
    try:
        tools.wait_true("document.querySelectorAll('.js-plotly-plot').length === 3 && "
                        "[...document.querySelectorAll('.js-plotly-plot')].every(d => d._fullData)", PAGE_S)
        plots = json.loads(tools.evaluate(PLOTS_JS))
        budget_rows = tools.evaluate("document.querySelectorAll('#budget-explorer tbody tr').length")
        errors, remote = tools.errors(), tools.remote_requests()
    finally:
        tools.close()
    assert errors == [] and remote == []
    assert set(plots) == {"scatter", "parallel", "widths"}
    scatter = plots["scatter"]
    assert scatter["types"] == ["scatter"] * 3 and scatter["names"] == ["magnitude", "taylor", "baseline"]
    # the browser draws each method in the colour every PNG uses
    styles = method_styles(["magnitude", "taylor"])
    assert scatter["colours"][:2] == [styles["magnitude"].colour, styles["taylor"].colour]
    assert plots["parallel"]["types"] == ["parcoords"] and plots["parallel"]["svg"] > 0
    assert plots["parallel"]["axes"] >= 5  # method, three knobs, quality, costs
    assert plots["widths"]["types"] == ["bar", "bar"]
    assert budget_rows >= 2
