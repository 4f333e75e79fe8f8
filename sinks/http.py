"""A sink process's HTTP endpoints: ``/metrics`` (Prometheus text) and ``/livez``.

``/livez`` answers 200 while the sink's loop is making progress or retrying (Redis or the ERP
being down is not a reason to restart the process), 503 when the loop has stopped ticking.
The server runs in a daemon thread; :meth:`http.server.HTTPServer.shutdown` stops it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

Live = Callable[[], tuple[bool, str]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], live: Live) -> None:
        super().__init__(address, _Handler)
        self.live = live


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/livez":
            ok, why = self.server.live()
            self._reply(200 if ok else 503, why.encode() + b"\n", "text/plain; charset=utf-8")
        else:
            self._reply(404, b"not found: /metrics, /livez\n", "text/plain; charset=utf-8")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
        pass


def serve(port: int, live: Live, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/livez`` on ``host:port`` until ``shutdown()``; raises
    ``OSError`` at once if the port is taken."""
    server = _Server((host, port), live)
    threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True).start()
    return server
