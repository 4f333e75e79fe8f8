"""The query API of real worker processes, against the real broker, registry and Redis.

Two workers share the partitions; the Redis sink runs in a thread. The oracles:

- availability answers (GET and POST) equal the latest record of each key on the
  ``availability.web`` topic (what was published), and ``unknown`` where nothing was;
- positions (asked of either worker, so about half are forwarded to the other) equal the
  reference fold's on hand and version (``tests.reference``);
- malformed requests are 400, an unknown channel or position 404, too many pairs 413;
- network aggregates (a channel policy with ``aggregates``): the group route answers the latest
  record of each ``group|sku`` on ``availability.web.groups``, ``unknown`` for a sku never
  published there, 404 for a group the channel does not aggregate.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sinks.read_model import RedisReadModel, decode_record, encode_record
from streams import topics
from streams.query_api import MAX_PAIRS
from tests.integration.conftest import Deployment
from tests.integration.kafka_io import latest_by_key, poll_until, produce, read_all
from tests.integration.test_aggregates import (
    GROUP,
    POLICY,
    SKUS,
    assert_aggregates_reach_the_sums,
    stock_events,
)
from tests.integration.test_redis_sink import delete_keys, running_sink, sink_settings
from tests.integration.test_worker_e2e import (
    T0,
    Mismatch,
    as_events,
    assert_availability_reaches_reference,
    workload,
)
from tests.reference import reference_positions


def request(port: int, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    """(status, decoded JSON) of one request to a worker."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method="GET" if data is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            status, text = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    return status, json.loads(text)


def published(dep: Deployment, spec: topics.TopicSpec | None = None) -> dict[str, dict[str, Any]]:
    """key -> the latest record on availability.web (or ``spec``), as the read model stores it."""
    topic = (spec or topics.availability("web")).full_name(dep.settings)
    latest = latest_by_key(read_all(dep.settings, topic))
    return {
        key: decode_record(encode_record({k: v for k, v in r.items() if not k.startswith("_")}))
        for key, r in latest.items()
    }


def post_matches(port: int, want: dict[str, dict[str, Any]], unknown: list[str]) -> bool | Mismatch:
    keys = sorted(want) + unknown
    pairs = [topics.split_key(key) for key in keys]
    status, answer = request(
        port,
        "/v1/availability/web/query",
        {"items": [{"sku": s, "location": loc} for s, loc in pairs]},
    )
    if status != 200:
        return Mismatch(status=status, answer=answer)
    items = answer["items"]
    assert [(i["sku"], i["location"]) for i in items] == pairs  # in request order
    wrong = {
        key: item["availability"] and item["availability"]["version"]
        for key, item in zip(keys, items, strict=True)
        if item["availability"] != want.get(key)
        or item["status"] != (want[key]["status"] if key in want else "unknown")
    }
    return True if not wrong else Mismatch(count=len(wrong), sample=dict(list(wrong.items())[:5]))


def positions_match(
    ports: list[int], expected: dict[str, tuple[int, int]], served_by: set[str]
) -> bool | Mismatch:
    wrong: dict[str, Any] = {}
    for port in ports:
        for key, (on_hand, version) in expected.items():
            sku, location = topics.split_key(key)
            status, position = request(port, f"/v1/positions/{sku}/{location}")
            if status != 200:
                wrong[f"{port}:{key}"] = (status, position)
                continue
            got = (position["on_hand"], position["version"], position["reserved"])
            if got != (on_hand, version, 0) or (position["sku"], position["location"]) != (
                sku, location,
            ):  # fmt: skip
                wrong[f"{port}:{key}"] = {"expected": (on_hand, version, 0), "got": got}
            served_by.add(position["served_by"])
    return True if not wrong else Mismatch(count=len(wrong), sample=dict(list(wrong.items())[:5]))


def test_the_query_api_answers_what_was_published_and_the_positions_behind_it(
    deployment: Deployment,
) -> None:
    settings = sink_settings(deployment)
    items = workload(seed=21, n=600)  # 30 keys: SKU0..9 at S0..S2
    produce(settings, items)
    deployment.start_worker("w1")
    deployment.start_worker("w2")
    ports = [deployment.web_ports["w1"], deployment.web_ports["w2"]]
    model = RedisReadModel.from_settings(settings)
    try:
        with running_sink(settings):
            assert_availability_reaches_reference(deployment, items)
            want = published(deployment)
            assert len(want) == 30
            unknown = ["SKU0|S9", "NOPE|S0"]

            # POST: every key and two never published, once the sink has written them all
            poll_until(lambda: post_matches(ports[0], want, unknown), 60, "POST = the topic")
            assert post_matches(ports[1], want, unknown) is True

            # GET: one sku at its locations (and one where it was never published)
            for sku in ("SKU0", "SKU3", "SKU9"):
                status, answer = request(ports[1], f"/v1/availability/web/{sku}?locations=S2,S0,S7")
                assert status == 200, answer
                assert (answer["channel"], answer["sku"]) == ("web", sku)
                got = [(i["location"], i["status"], i["availability"]) for i in answer["items"]]
                assert got == [
                    ("S2", want[f"{sku}|S2"]["status"], want[f"{sku}|S2"]),
                    ("S0", want[f"{sku}|S0"]["status"], want[f"{sku}|S0"]),
                    ("S7", "unknown", None),
                ]
                assert {"confidence", "version", "offered", "frozen"} <= set(got[0][2] or {})

        # positions: the reference fold, whichever worker is asked
        expected = reference_positions(as_events(items))
        served_by: set[str] = set()
        poll_until(lambda: positions_match(ports, expected, served_by), 90, "positions = reference")
        assert len(served_by) == 2, f"one worker served every position: {served_by}"
        status, answer = request(ports[0], "/v1/positions/SKU0/S9")
        assert status == 404 and "no position" in answer["error"], answer

        # refused requests
        refused: list[tuple[int, str, Any, bytes | None, int]] = [
            (ports[0], "/v1/availability/bopis/SKU0?locations=S0", None, None, 404),
            (ports[0], "/v1/availability/web/SKU0", None, None, 400),
            (ports[0], "/v1/availability/web/SKU0?locations=S0,,S1", None, None, 400),
            (ports[1], "/v1/availability/web/SKU%7C0?locations=S0", None, None, 400),
            (ports[1], "/v1/availability/bopis/query", {"items": []}, None, 404),
            (ports[1], "/v1/availability/web/query", None, b"{not json", 400),
            (ports[1], "/v1/availability/web/query", {"items": [{"sku": "A"}]}, None, 400),
            (ports[1], "/v1/availability/web/query", {"pairs": []}, None, 400),
            (ports[0], "/v1/positions/SKU0/S%7C0", None, None, 400),
            (
                ports[0], "/v1/availability/web/query",
                {"items": [{"sku": "SKU0", "location": "S0"}] * (MAX_PAIRS + 1)}, None, 413,
            ),
        ]  # fmt: skip
        for port, path, body, raw, code in refused:
            status, answer = request(port, path, body, raw)
            assert (status, answer["status"]) == (code, code), (path, answer)
            assert answer["error"], answer
    finally:
        delete_keys(model)
        model.close()


def group_answers_match(port: int, want: dict[str, dict[str, Any]]) -> bool | Mismatch:
    wrong = {}
    for sku in SKUS:
        status, answer = request(port, f"/v1/availability/web/groups/{GROUP}/{sku}")
        record = want[f"{GROUP}|{sku}"]
        expected = {"channel": "web", "group": GROUP, "sku": sku, "status": record["status"],
                    "availability": record}  # fmt: skip
        if (status, answer) != (200, expected):
            wrong[sku] = {"status": status, "got": answer, "want": expected}
    return True if not wrong else Mismatch(wrong)


def test_the_group_route_answers_the_published_network_aggregates(
    deployment: Deployment, tmp_path: Path
) -> None:
    policy = tmp_path / "channels.toml"
    policy.write_text(POLICY)  # web aggregates the group "ship"
    deployment.env["INVSYNC_CHANNEL_POLICY"] = str(policy)
    settings = sink_settings(deployment)
    items = stock_events(seed=3, start=T0, n_sales=200)
    produce(settings, items)
    deployment.start_worker("w1")
    port = deployment.web_ports["w1"]
    model = RedisReadModel.from_settings(settings)
    try:
        with running_sink(settings):
            assert_aggregates_reach_the_sums(deployment, items)
            want = published(deployment, topics.group_availability("web"))
            assert set(want) == {f"{GROUP}|{sku}" for sku in SKUS}
            poll_until(lambda: group_answers_match(port, want), 60, "group answers = the topic")
        record = want[f"{GROUP}|{SKUS[0]}"]
        assert record["offered"] > 0 and {"confidence", "locations", "offering"} <= set(record)

        status, answer = request(port, f"/v1/availability/web/groups/{GROUP}/NOPE")
        assert (status, answer["status"], answer["availability"]) == (200, "unknown", None)
        refused: list[tuple[str, int, str]] = [
            ("/v1/availability/web/groups/dcs/SKU1", 404, "no aggregate for group 'dcs'"),
            ("/v1/availability/bopis/groups/ship/SKU1", 404, "unknown channel"),
            ("/v1/availability/web/groups/Ship/SKU1", 400, "not a group name"),
            ("/v1/availability/web/groups/ship/SKU%7C1", 400, "contains '|'"),
        ]
        for path, code, says in refused:
            status, answer = request(port, path)
            assert (status, answer["status"]) == (code, code), (path, answer)
            assert says in answer["error"], answer
    finally:
        delete_keys(model)
        model.close()
