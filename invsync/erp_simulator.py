"""A stand-in ERP for stock deltas: a real HTTP peer with durable idempotency and injectable faults.

Run it as its own process (it is the *other side* of the ERP dispatcher, ``sinks/erp.py``)::

    python -m invsync.erp_simulator --port 18090 --db .state/erp.sqlite

Endpoints (JSON in and out):

``POST /v1/stock-deltas``
    Header ``Idempotency-Key: <delta_id>``, body ``{delta_id, sku, location, net_quantity,
    reasons, window_start, window_end}`` (timestamps ISO 8601 strings, ``reasons`` a map of
    reason code to signed quantity). Answers

    - ``201`` the delta is new: it was applied and **committed to the sqlite file before the
      answer** (``synchronous=FULL``), so an acknowledged delta survives a crash;
    - ``200`` the same id with the same body was accepted before: nothing is applied again;
    - ``409`` the same id was accepted with a *different* body (the message says so);
    - ``400`` malformed (not JSON, a field missing or of the wrong type, no ``Idempotency-Key``
      or one that is not the body's ``delta_id``); ``413`` a body over 1 MiB;
    - ``422`` well-formed but inconsistent: the reasons do not sum to ``net_quantity``, or the
      window ends before it starts.

``GET /v1/net?sku=&location=``
    ``{sku, location, net_quantity}``: the sum of the applied deltas of that sku-location.

``GET /v1/state``
    Everything a test asserts on: ``net`` (``"sku|location"`` → net quantity), ``accepted``
    (delta id → how many times it was *applied*, which must be 1), ``requests`` (delta id → how
    many delivery attempts reached the ERP, retries and replays included), ``order``
    (``"sku|location"`` → delta ids in the order they were applied) and the fault plan left.

``POST /v1/faults`` / ``GET /v1/faults``
    Replace / show the fault plan: ``{"mode": ..., "count": n, "seconds": s}`` or
    ``{"plan": [step, ...]}``. Each ``POST /v1/stock-deltas`` consumes one unit of the first
    step; with no plan left every request is served normally. Modes: ``ok`` (served normally,
    to place faults later in a sequence), ``error5xx`` (answer 503 with ``Retry-After: 1``,
    nothing applied), ``timeout`` (nothing applied, no answer for ``seconds`` (default 30), i.e.
    past the client's timeout), ``drop_after_accept`` (apply and commit, then close the
    connection without an answer: the client cannot know it succeeded), ``slow`` (wait
    ``seconds`` (default 1), then serve normally). ``{"mode": "ok", "count": 0}`` clears the plan.

``GET /livez``
    ``200`` while the process serves.

Guarantees and limits: "applied" is an append-only table without a unique constraint, so a
double application would *show* (count 2, wrong net) instead of being masked by the schema;
idempotency is the application's check, done under one lock per process with ``BEGIN
IMMEDIATE``. State lives in the sqlite file only, so the simulator survives its own restart (ids
still known, net unchanged). The fault plan is in memory and lost on restart. One process per
file; it is a test and demo peer, not a performance reference (one writer at a time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

FIELDS = ("delta_id", "sku", "location", "net_quantity", "reasons", "window_start", "window_end")
MAX_BODY = 1 << 20
MODES = ("ok", "error5xx", "timeout", "drop_after_accept", "slow")
DEFAULT_SECONDS = {"timeout": 30.0, "slow": 1.0}


class Invalid(ValueError):
    """A request the ERP refuses: ``status`` 400 (malformed) or 422 (inconsistent)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _timestamp(name: str, value: object) -> datetime:
    if not isinstance(value, str):
        raise Invalid(400, f"{name} must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(400, f"{name} {value!r} is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise Invalid(400, f"{name} {value!r} has no time zone")
    return parsed


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_delta(body: bytes, idempotency_key: str | None) -> dict[str, Any]:
    """The delta in ``body``, validated; raises :class:`Invalid` saying what is wrong."""
    try:
        delta = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid(400, f"body is not JSON: {exc}") from None
    if not isinstance(delta, dict):
        raise Invalid(400, "body must be a JSON object")
    missing = [name for name in FIELDS if name not in delta]
    if missing:
        raise Invalid(400, f"missing fields: {', '.join(missing)}")
    unknown = sorted(set(delta) - set(FIELDS))
    if unknown:
        raise Invalid(400, f"unknown fields: {', '.join(unknown)}")
    for name in ("delta_id", "sku", "location"):
        if not isinstance(delta[name], str) or not delta[name]:
            raise Invalid(400, f"{name} must be a non-empty string")
    if not _is_int(delta["net_quantity"]):
        raise Invalid(400, "net_quantity must be an integer")
    reasons = delta["reasons"]
    if not isinstance(reasons, dict) or not all(_is_int(v) for v in reasons.values()):
        raise Invalid(400, "reasons must map reason codes to integers")
    if not idempotency_key:
        raise Invalid(400, "the Idempotency-Key header is required")
    if idempotency_key != delta["delta_id"]:
        raise Invalid(400, f"Idempotency-Key {idempotency_key!r} is not the delta_id")
    start = _timestamp("window_start", delta["window_start"])
    end = _timestamp("window_end", delta["window_end"])
    if end < start:
        raise Invalid(422, "window_end is before window_start")
    if sum(reasons.values()) != delta["net_quantity"]:
        raise Invalid(
            422, f"reasons sum to {sum(reasons.values())}, net_quantity is {delta['net_quantity']}"
        )
    return delta


def canonical(delta: dict[str, Any]) -> str:
    """The body as compared for idempotency: same fields and values = same text."""
    return json.dumps(delta, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Conflict:
    delta_id: str
    accepted_body: str


Outcome = Literal["created", "duplicate"] | Conflict


class Store:
    """Accepted deltas in a sqlite file; every method is one transaction, serialised by a lock."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS applied (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                delta_id TEXT NOT NULL,
                body TEXT NOT NULL,
                sku TEXT NOT NULL,
                location TEXT NOT NULL,
                net_quantity INTEGER NOT NULL,
                applied_at REAL NOT NULL
            );
            CREATE INDEX IF NOT EXISTS applied_delta ON applied (delta_id);
            CREATE TABLE IF NOT EXISTS requests (
                delta_id TEXT PRIMARY KEY,
                n INTEGER NOT NULL
            );
            """
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def count_request(self, delta_id: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO requests (delta_id, n) VALUES (?, 1) "
                "ON CONFLICT (delta_id) DO UPDATE SET n = n + 1",
                (delta_id,),
            )

    def accept(self, delta: dict[str, Any]) -> Outcome:
        """Apply ``delta`` unless its id is known; committed before this returns."""
        body = canonical(delta)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT body FROM applied WHERE delta_id = ? ORDER BY seq LIMIT 1",
                    (delta["delta_id"],),
                ).fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO applied (delta_id, body, sku, location, net_quantity, "
                        "applied_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (delta["delta_id"], body, delta["sku"], delta["location"],
                         delta["net_quantity"], time.time()),
                    )  # fmt: skip
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if row is None:
            return "created"
        return "duplicate" if row[0] == body else Conflict(delta["delta_id"], row[0])

    def net(self, sku: str, location: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(net_quantity), 0) FROM applied WHERE sku = ? AND location = ?",
                (sku, location),
            ).fetchone()
        return int(row[0])

    def state(self) -> dict[str, Any]:
        with self._lock:
            net = self._db.execute(
                "SELECT sku, location, SUM(net_quantity) FROM applied GROUP BY sku, location"
            ).fetchall()
            accepted = self._db.execute(
                "SELECT delta_id, COUNT(*) FROM applied GROUP BY delta_id"
            ).fetchall()
            requests = self._db.execute("SELECT delta_id, n FROM requests").fetchall()
            applied = self._db.execute(
                "SELECT sku, location, delta_id FROM applied ORDER BY seq"
            ).fetchall()
        order: dict[str, list[str]] = {}
        for sku, location, delta_id in applied:
            order.setdefault(f"{sku}|{location}", []).append(delta_id)
        return {
            "net": {f"{sku}|{location}": int(total) for sku, location, total in net},
            "accepted": {delta_id: int(n) for delta_id, n in accepted},
            "requests": {delta_id: int(n) for delta_id, n in requests},
            "order": order,
        }


@dataclass
class Step:
    mode: str
    count: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "count": self.count, "seconds": self.seconds}


def parse_step(raw: object) -> Step:
    if not isinstance(raw, dict):
        raise Invalid(400, "a fault step must be an object")
    mode, count = raw.get("mode"), raw.get("count", 1)
    if mode not in MODES:
        raise Invalid(400, f"mode must be one of {', '.join(MODES)}")
    if not _is_int(count) or count < 0:
        raise Invalid(400, "count must be a non-negative integer")
    seconds = raw.get("seconds", DEFAULT_SECONDS.get(str(mode), 0.0))
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        raise Invalid(400, "seconds must be a non-negative number")
    return Step(str(mode), int(count), float(seconds))


class Faults:
    """The fault plan: steps consumed one request at a time, first step first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plan: deque[Step] = deque()

    def replace(self, steps: list[Step]) -> list[dict[str, Any]]:
        with self._lock:
            self._plan = deque(step for step in steps if step.count > 0)
            return [step.to_json() for step in self._plan]

    def plan(self) -> list[dict[str, Any]]:
        with self._lock:
            return [step.to_json() for step in self._plan]

    def next(self) -> Step | None:
        """The fault for the request arriving now (None: serve it normally)."""
        with self._lock:
            if not self._plan:
                return None
            step = self._plan[0]
            step.count -= 1
            if step.count <= 0:
                self._plan.popleft()
            return Step(step.mode, 1, step.seconds)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real ERP behind a load balancer
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: ErpServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": HTTPStatus(status).phrase, "message": message})

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise Invalid(400, "Content-Length is required")
        if int(length) > MAX_BODY:
            self.close_connection = True
            raise Invalid(413, f"body over {MAX_BODY} bytes")
        return self.rfile.read(int(length))

    def _drop(self) -> None:
        """Close the connection without an answer (the client sees it reset or closed)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        store = self.server.store
        if url.path == "/livez":
            self._send(200, {"status": "ok"})
        elif url.path == "/v1/state":
            self._send(200, store.state() | {"faults": self.server.faults.plan()})
        elif url.path == "/v1/faults":
            self._send(200, {"plan": self.server.faults.plan()})
        elif url.path == "/v1/net":
            query = parse_qs(url.query)
            sku, location = query.get("sku", [""])[0], query.get("location", [""])[0]
            if not sku or not location:
                self._error(400, "sku and location are required")
            else:
                net = store.net(sku, location)
                self._send(200, {"sku": sku, "location": location, "net_quantity": net})
        else:
            self._error(404, f"no such resource: {url.path}")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            if path == "/v1/stock-deltas":
                self._post_delta()
            elif path == "/v1/faults":
                self._post_faults()
            else:
                self._body()  # keep the connection usable
                self._error(404, f"no such resource: {path}")
        except Invalid as exc:
            self._error(exc.status, exc.message)

    def _post_faults(self) -> None:
        try:
            raw = json.loads(self._body())
        except ValueError as exc:
            raise Invalid(400, f"body is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise Invalid(400, "body must be a JSON object")
        steps = raw.get("plan", [raw])
        if not isinstance(steps, list):
            raise Invalid(400, "plan must be a list of steps")
        self._send(200, {"plan": self.server.faults.replace([parse_step(s) for s in steps])})

    def _post_delta(self) -> None:
        body = self._body()
        fault = self.server.faults.next()
        mode = fault.mode if fault else "ok"
        key = self.headers.get("Idempotency-Key")
        if key:
            self.server.store.count_request(key)
        if mode == "error5xx":
            self._send(503, {"error": "Service Unavailable", "message": "injected fault"},
                       {"Retry-After": "1"})  # fmt: skip
            return
        if mode == "timeout":
            assert fault is not None
            time.sleep(fault.seconds)  # the client has given up by now
            self._drop()
            return
        if mode == "slow":
            assert fault is not None
            time.sleep(fault.seconds)
        delta = parse_delta(body, key)
        outcome = self.server.store.accept(delta)
        if mode == "drop_after_accept":
            self._drop()  # committed, but the client never hears of it
            return
        if isinstance(outcome, Conflict):
            self._error(
                409,
                f"delta_id {outcome.delta_id!r} was already accepted with a different body "
                f"({outcome.accepted_body}); not applied",
            )
        elif outcome == "created":
            self._send(201, {"status": "accepted", "delta_id": delta["delta_id"]})
        else:
            self._send(200, {"status": "already_accepted", "delta_id": delta["delta_id"]})


class ErpServer(ThreadingHTTPServer):
    daemon_threads = True  # a hanging fault must not keep the process alive

    def __init__(self, address: tuple[str, int], store: Store, verbose: bool = False) -> None:
        super().__init__(address, Handler)
        self.store = store
        self.faults = Faults()
        self.verbose = verbose


def serve(host: str, port: int, db: Path, verbose: bool = False) -> None:
    """Serve until SIGTERM/SIGINT; the store is closed on the way out."""
    store = Store(db)
    server = ErpServer((host, port), store, verbose)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"erp simulator listening on http://{host}:{port} (db {db})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18090)
    parser.add_argument("--db", type=Path, default=Path(".state/erp-simulator.sqlite"))
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    args.db.parent.mkdir(parents=True, exist_ok=True)
    serve(args.host, args.port, args.db, args.verbose)


if __name__ == "__main__":
    main(sys.argv[1:])
