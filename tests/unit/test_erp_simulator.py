"""The ERP simulator's rules (validation, idempotency, durability, fault plan), and the ERP
dispatcher's client against it over real HTTP on localhost (no services needed)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from invsync.erp_simulator import (
    Conflict,
    ErpServer,
    Faults,
    Invalid,
    Step,
    Store,
    parse_delta,
    parse_step,
)
from sinks.erp import ErpClient, Rejected, Unavailable

DELTA: dict[str, Any] = {
    "delta_id": "d-1", "sku": "A", "location": "S1", "net_quantity": -2,
    "reasons": {"sale": -3, "receipt": 1}, "window_start": "2026-11-23T10:00:00.000Z",
    "window_end": "2026-11-23T10:01:00.000Z",
}  # fmt: skip


def body(**change: Any) -> bytes:
    return json.dumps(DELTA | change).encode()


def test_a_valid_delta_parses() -> None:
    assert parse_delta(body(), "d-1") == DELTA


@pytest.mark.parametrize(
    ("data", "key", "status", "message"),
    [
        (b"{", "d-1", 400, "not JSON"),
        (b"[]", "d-1", 400, "JSON object"),
        (json.dumps({k: v for k, v in DELTA.items() if k != "sku"}).encode(), "d-1", 400, "sku"),
        (body(extra=1), "d-1", 400, "unknown fields: extra"),
        (body(sku=""), "d-1", 400, "sku must be"),
        (body(net_quantity=1.5), "d-1", 400, "net_quantity"),
        (body(net_quantity=True), "d-1", 400, "net_quantity"),
        (body(reasons={"sale": "x"}), "d-1", 400, "reasons"),
        (body(), None, 400, "Idempotency-Key header is required"),
        (body(), "d-2", 400, "is not the delta_id"),
        (body(window_start="yesterday"), "d-1", 400, "ISO 8601"),
        (body(window_start="2026-11-23T10:00:00"), "d-1", 400, "time zone"),
        (body(window_end="2026-11-23T09:00:00Z"), "d-1", 422, "before window_start"),
        (body(reasons={"sale": -3}), "d-1", 422, "reasons sum to -3"),
    ],
)
def test_invalid_deltas_are_refused_saying_why(
    data: bytes, key: str | None, status: int, message: str
) -> None:
    with pytest.raises(Invalid) as caught:
        parse_delta(data, key)
    assert caught.value.status == status
    assert message in caught.value.message


def test_the_store_applies_an_id_once_and_remembers_it_across_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "erp.sqlite")
    assert store.accept(DELTA) == "created"
    assert store.accept(dict(reversed(DELTA.items()))) == "duplicate"  # same body, other order
    conflict = store.accept(DELTA | {"net_quantity": -3, "reasons": {"sale": -3}})
    assert isinstance(conflict, Conflict) and conflict.delta_id == "d-1"
    assert store.accept(DELTA | {"delta_id": "d-2"}) == "created"
    store.close()

    store = Store(tmp_path / "erp.sqlite")
    assert store.accept(DELTA) == "duplicate"
    state = store.state()
    assert state["accepted"] == {"d-1": 1, "d-2": 1}
    assert state["net"] == {"A|S1": -4}
    assert state["order"] == {"A|S1": ["d-1", "d-2"]}
    assert store.net("A", "S1") == -4 and store.net("A", "S2") == 0


def test_the_fault_plan_is_consumed_one_request_at_a_time_in_order() -> None:
    faults = Faults()
    faults.replace([Step("error5xx", 2, 0), Step("ok", 1, 0), Step("timeout", 1, 3.0)])
    modes = [step.mode if step else None for step in (faults.next() for _ in range(5))]
    assert modes == ["error5xx", "error5xx", "ok", "timeout", None]
    faults.replace([Step("error5xx", 5, 0)])
    assert faults.replace([parse_step({"mode": "ok", "count": 0})]) == []  # clears
    assert faults.next() is None


@pytest.mark.parametrize(
    "raw", [{"mode": "boom"}, {"mode": "ok", "count": -1}, {"mode": "slow", "seconds": "x"}, 1]
)
def test_bad_fault_steps_are_refused(raw: object) -> None:
    with pytest.raises(Invalid):
        parse_step(raw)


def test_fault_steps_default_their_duration() -> None:
    assert parse_step({"mode": "timeout"}) == Step("timeout", 1, 30.0)
    assert parse_step({"mode": "slow", "count": 3}) == Step("slow", 3, 1.0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ErpServer]:
    store = Store(tmp_path / "erp.sqlite")
    srv = ErpServer(("127.0.0.1", 0), store)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()
    store.close()


def url(server: ErpServer, path: str = "/v1/stock-deltas") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_the_client_turns_every_answer_into_accepted_rejected_or_retry(server: ErpServer) -> None:
    client = ErpClient(url(server), timeout_s=0.3)
    assert client.post(DELTA) == 201
    assert client.post(DELTA) == 200
    with pytest.raises(Rejected) as rejected:
        client.post(DELTA | {"net_quantity": -3, "reasons": {"sale": -3}})
    assert rejected.value.status == 409 and "different body" in rejected.value.text
    with pytest.raises(Rejected) as inconsistent:
        client.post(DELTA | {"delta_id": "d-9", "net_quantity": 5})
    assert inconsistent.value.status == 422

    server.faults.replace([Step("error5xx", 1, 0), Step("timeout", 1, 1.0),
                           Step("drop_after_accept", 1, 0)])  # fmt: skip
    with pytest.raises(Unavailable) as unavailable:
        client.post(DELTA | {"delta_id": "d-2"})
    assert unavailable.value.retry_after == 1.0 and "server_error" in str(unavailable.value)
    with pytest.raises(Unavailable, match="timeout"):
        client.post(DELTA | {"delta_id": "d-2"})
    with pytest.raises(Unavailable, match="connection_error"):
        client.post(DELTA | {"delta_id": "d-2"})  # applied, but no answer
    assert client.post(DELTA | {"delta_id": "d-2"}) == 200  # the retry learns it was applied
    client.close()

    state = httpx.get(url(server, "/v1/state")).json()
    assert state["accepted"] == {"d-1": 1, "d-2": 1}
    assert state["requests"] == {"d-1": 3, "d-2": 4, "d-9": 1}
    assert state["net"] == {"A|S1": -4}


def test_an_unreachable_erp_is_a_retry_not_a_rejection(tmp_path: Path) -> None:
    srv = ErpServer(("127.0.0.1", 0), Store(tmp_path / "erp.sqlite"))
    port = srv.server_address[1]
    srv.server_close()  # nothing listens there now
    client = ErpClient(f"http://127.0.0.1:{port}/v1/stock-deltas", timeout_s=0.5)
    with pytest.raises(Unavailable, match="connection_error"):
        client.post(DELTA)
    client.close()


def test_the_simulator_answers_malformed_requests_with_400_and_keeps_serving(
    server: ErpServer,
) -> None:
    with httpx.Client() as http:
        bad = http.post(url(server), content=b"{", headers={"Idempotency-Key": "x"})
        assert bad.status_code == 400 and "not JSON" in bad.json()["message"]
        assert http.get(url(server, "/v1/net?sku=A")).status_code == 400
        assert http.get(url(server, "/nope")).status_code == 404
        ok = http.post(url(server), content=body(), headers={"Idempotency-Key": "d-1"})
        assert ok.status_code == 201
        faults = http.post(url(server, "/v1/faults"), json={"mode": "error5xx", "count": 2})
        assert faults.json() == {"plan": [{"mode": "error5xx", "count": 2, "seconds": 0.0}]}
        assert http.get(url(server, "/v1/faults")).json()["plan"][0]["count"] == 2
