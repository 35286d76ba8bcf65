"""A live picture of a running lab: ``pycnm lab graph --serve [--port P]``.

Who does what: a ``Watcher`` thread reads the lab from the kernel (``live.scan``: every
namespace's interfaces, addresses, peers, VXLAN details and netem) about once a second;
when what it read differs from last time it renders the picture again (graphviz, the same
drawing as ``lab graph``) and bumps a version. A small HTTP server, bound to loopback
only, serves one page, ``/state.json`` (``live.snapshot``), ``/graph.svg`` and
``/events``, a server-sent event stream that says "version N" whenever the picture
changed; the page redraws then, so a link taken down shows as down within a second or
two. Nothing a browser sends reaches a file or the kernel: the server answers four fixed
paths and nothing else.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from cnm.errors import CNMError
from netns_fixtures.lab import graph, live

if TYPE_CHECKING:
    from netns_fixtures.lab.handle import Lab

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 50080
SCAN_INTERVAL = 1.0  # seconds between two reads of the kernel
KEEPALIVE = 15.0  # seconds between comments on an idle event stream


class Watcher:
    """Reads the lab again and again; holds the latest snapshot and picture."""

    def __init__(self, lab: Lab, interval: float = SCAN_INTERVAL) -> None:
        self.lab = lab
        self.interval = interval
        self.version = 0
        self.state: dict[str, Any] = {}
        self.svg = b""
        self.error = ""
        self._print = ""
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lab-watcher", daemon=True)

    def start(self) -> Watcher:
        self.refresh()  # the first picture is there before the first visitor
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        self._thread.join(timeout=10)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def refresh(self) -> bool:
        """Read the lab now; True (and a new version) if anything changed."""
        try:
            views = live.scan(self.lab)
            state = live.snapshot(self.lab, views, networks=False)
            error = ""
        except Exception as exc:  # noqa: BLE001 - shown on the page, the watcher goes on
            views, state, error = [], self.state, f"cannot read the lab: {exc}"
        mark = live.fingerprint([state, error])
        if mark == self._print:
            return False
        svg = self.svg
        if views:
            try:
                svg = _render(self.lab, views)
            except CNMError as exc:
                error = str(exc)
        with self._changed:
            self.state, self.svg, self.error, self._print = state, svg, error, mark
            self.version += 1
            self.state = {**state, "version": self.version, "error": error,
                          "read_at": time.time()}
            self._changed.notify_all()
        return True

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """Until the version is past ``seen`` (or ``timeout``); the version then."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != seen or self._stop.is_set(),
                                   timeout=timeout)
            return self.version

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()


def _render(lab: Lab, views: list[graph.NsView]) -> bytes:
    title = f"lab {lab.name}" + (f": {lab.topology.description}"
                                 if lab.topology.description else "")
    result = subprocess.run(["dot", "-Tsvg"], input=graph.to_dot(title, views).encode(),
                            capture_output=True, timeout=60)
    if result.returncode != 0:
        raise CNMError(f"dot failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def _handler(watcher: Watcher) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pycnm-lab"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("%s " + format, self.address_string(), *args)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send(200, "text/html; charset=utf-8", page(watcher.lab.name).encode())
            elif path == "/state.json":
                body = json.dumps(watcher.state, default=str).encode()
                self._send(200, "application/json", body)
            elif path == "/graph.svg":
                self._send(200, "image/svg+xml", watcher.svg)
            elif path == "/events":
                self._events()
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _events(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen = -1
            with contextlib.suppress(OSError):
                while not watcher.stopped:
                    version = watcher.wait_for_change(seen, KEEPALIVE)
                    if version != seen:
                        self.wfile.write(f"data: {version}\n\n".encode())
                        seen = version
                    else:
                        self.wfile.write(b": idle\n\n")
                    self.wfile.flush()

    return Handler


class LiveServer:
    """The page's HTTP server on loopback, with its watcher."""

    def __init__(self, lab: Lab, port: int = DEFAULT_PORT,
                 interval: float = SCAN_INTERVAL) -> None:
        if not 0 <= port <= 65535:
            from cnm.errors import InvalidOption

            raise InvalidOption(f"--port must be between 0 and 65535, not {port}")
        self.watcher = Watcher(lab, interval)
        try:
            self.httpd = ThreadingHTTPServer((LOOPBACK, port), _handler(self.watcher))
        except OSError as exc:
            raise CNMError(f"cannot serve on {LOOPBACK}:{port}: {exc.strerror or exc}"
                           " (choose another --port, or 0 for any free one)") from None
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.httpd.server_address[1]}/"

    def serve_forever(self) -> None:
        self.watcher.start()
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self.close()

    def close(self) -> None:
        self.watcher.stop()
        self.httpd.server_close()


def page(lab_name: str) -> str:
    """The page: a picture and two lists, redrawn on every event."""
    return _PAGE.replace("{{LAB}}", html.escape(lab_name))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lab {{LAB}}: live</title>
<style>
 body { font-family: Helvetica, Arial, sans-serif; margin: 0; display: flex; height: 100vh; }
 #side { width: 23rem; overflow: auto; padding: .8rem; border-right: 1px solid #ddd;
         font-size: 13px; }
 #picture { flex: 1; overflow: auto; padding: .5rem; }
 #picture svg { max-width: 100%; height: auto; }
 h1 { font-size: 17px; margin: 0 0 .3rem; } h2 { font-size: 14px; margin: .8rem 0 .3rem; }
 ul { list-style: none; padding: 0; margin: 0; } li { padding: 2px 0; }
 .down, .missing { color: #dc2626; font-weight: bold; } .up { color: #15803d; }
 .netem { color: #b91c1c; } .muted { color: #6b7280; } .error { color: #dc2626; }
</style></head>
<body>
<div id="side">
 <h1>lab {{LAB}}</h1>
 <div class="muted">live from the kernel; <span id="version">version -</span>,
   read <span id="when">-</span></div>
 <div id="error" class="error"></div>
 <h2>Nodes</h2><ul id="nodes"></ul>
 <h2>Links</h2><ul id="links"></ul>
 <h2>VXLAN</h2><ul id="vteps"></ul>
</div>
<div id="picture"></div>
<script>
"use strict";
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function show(state) {
  document.getElementById("version").textContent = "version " + state.version;
  document.getElementById("when").textContent =
    new Date(state.read_at * 1000).toLocaleTimeString();
  document.getElementById("error").textContent = state.error || "";
  document.body.dataset.version = state.version;
  const nodes = document.getElementById("nodes"), links = document.getElementById("links"),
        vteps = document.getElementById("vteps");
  nodes.replaceChildren(); links.replaceChildren(); vteps.replaceChildren();
  for (const n of state.nodes) {
    const addrs = n.interfaces.flatMap(i => i.addresses.map(a => i.name + " " + a));
    const li = el("li", {"class": "node", "data-node": n.name, "data-kind": n.kind});
    li.append(el("b", {}, n.name), " " + n.kind + (n.host ? " on " + n.host : "") +
              (n.mode ? ", mode " + n.mode + ": in " + n.uses + "'s namespace" : "") +
              (n.shared_by.length ? " (shared by " + n.shared_by.join(", ") + ")" : "") +
              (addrs.length ? ": " + addrs.join(", ") : ""));
    for (const i of n.interfaces) {
      if (i.state !== "up" || !i.carrier)
        li.append(" ", el("span", {"class": "down"},
                          i.name + (i.state !== "up" ? " DOWN" : " NO-CARRIER")));
      if (i.netem) li.append(" ", el("span", {"class": "netem"}, i.name + " netem " +
                   Object.entries(i.netem).map(([k, v]) => k + " " + v).join(" ")));
      if (i.kind === "vxlan") {
        const v = el("li", {"class": "vtep", "data-vni": i.vni, "data-node": n.name});
        v.textContent = n.host + " " + i.name + ": VNI " + i.vni + ", local " + i.local +
          ", floods to " + (i.remotes.join(", ") || "nobody") +
          (i.neighbours.length ? "; knows " + i.neighbours.join("; ") : "");
        vteps.append(v);
      }
    }
    nodes.append(li);
  }
  for (const n of state.missing || []) {
    nodes.append(el("li", {"class": "node missing", "data-node": n.name,
                           "data-kind": "missing"},
                    n.name + ": namespace " + n.namespace + " is missing"));
  }
  for (const l of state.links) {
    const li = el("li", {"class": "link", "data-link": l.key, "data-state": l.state});
    li.append(l.a + " \u2014 " + l.b + " ", el("span", {"class": l.state}, l.state));
    for (const [end, text] of Object.entries(l.netem || {}))
      li.append(" ", el("span", {"class": "netem"}, "netem at " + end + ": " + text));
    links.append(li);
  }
}
async function redraw() {
  const [state, svg] = await Promise.all([
    fetch("/state.json", {cache: "no-store"}).then(r => r.json()),
    fetch("/graph.svg", {cache: "no-store"}).then(r => r.text())]);
  show(state);
  document.getElementById("picture").innerHTML = svg;
}
let busy = false, again = false;
async function update() {
  if (busy) { again = true; return; }
  busy = true;
  try { await redraw(); } catch (e) {
    document.getElementById("error").textContent = "server unreachable: " + e;
  } finally { busy = false; if (again) { again = false; update(); } }
}
const events = new EventSource("/events");
events.onmessage = update;
update();
</script>
</body></html>
"""
