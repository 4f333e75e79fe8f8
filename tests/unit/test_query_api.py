"""The query API without services: request validation, answers, the OpenAPI document, and the
error paths through the real aiohttp routing of a (not started) Faust app.

Answers with data, forwarding and Redis up: tests/integration/test_query_api.py.
"""

from __future__ import annotations

import asyncio
import socket
import tomllib
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import faust
import orjson
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.partitioner import DefaultPartitioner
from jsonschema import Draft202012Validator

from invsync.settings import Settings, load_settings
from state import channel_policy
from state.channel_policy import parse_policy
from state.events import Kind, StockEvent
from state.position import OpenPosition, Position, to_primitive
from streams.query_api import (
    GROUP_NAME,
    MAX_PAIRS,
    OPENAPI_PATH,
    ROUTES,
    RequestError,
    aggregated_groups,
    availability_items,
    check_channel,
    check_count,
    check_group,
    check_group_name,
    check_identifier,
    group_answer,
    key_partition,
    parse_locations,
    parse_query_body,
    position_view,
    register_query_api,
)

ROOT = Path(__file__).resolve().parents[2]


def refused(status: int, fun: Any, *args: Any) -> str:
    with pytest.raises(RequestError) as caught:
        fun(*args)
    assert caught.value.status == status, caught.value.message
    return caught.value.message


# --- validation ------------------------------------------------------------------------------


def test_identifiers_must_be_non_empty_strings_without_the_key_separator() -> None:
    assert check_identifier("sku", "A:B c") == "A:B c"
    assert "empty" in refused(400, check_identifier, "sku", "")
    assert "'|'" in refused(400, check_identifier, "location", "S1|x")
    assert "a number" in refused(400, check_identifier, "sku", 12)
    assert "null" in refused(400, check_identifier, "sku", None)


def test_only_configured_channels_are_known() -> None:
    assert check_channel("web", ("web", "bopis")) == "web"
    message = refused(404, check_channel, "market", ("web", "bopis"))
    assert "market" in message and "web, bopis" in message


POLICY = """
[groups.ship]
location_types = ["dc"]
prefixes = ["S0"]

[groups.dcs]
location_types = ["dc"]

[channels.web]
location_types = ["dc", "store"]
aggregates = ["ship", "dcs"]
min_confidence = 0.0
thresholds = { out = 0, low = 5 }

[channels.bopis]
location_types = ["store"]
min_confidence = 0.9
thresholds = { out = 0, low = 2 }
"""


def test_group_names_follow_the_policy_files_pattern() -> None:
    assert GROUP_NAME.pattern == channel_policy._NAME.pattern  # the names a policy can define
    assert check_group_name("network_ship-2") == "network_ship-2"
    for bad in ("", "Ship", "ship|x", "ship:x", "1ship", "ship x"):
        assert "not a group name" in refused(400, check_group_name, bad)


def test_a_group_is_known_only_to_the_channels_that_aggregate_it() -> None:
    policy = parse_policy(tomllib.loads(POLICY))
    settings = load_settings(channels="web,bopis")
    aggregated = aggregated_groups(settings, policy)
    assert aggregated == {"web": ("ship", "dcs"), "bopis": ()}
    assert check_group("web", "dcs", aggregated) == "dcs"
    message = refused(404, check_group, "web", "stores", aggregated)
    assert "'stores'" in message and "has: ship, dcs" in message
    assert "has: none" in refused(404, check_group, "bopis", "ship", aggregated)
    assert "ship" in refused(404, check_group, "market", "ship", aggregated)


def test_at_most_max_pairs() -> None:
    check_count(MAX_PAIRS)
    assert str(MAX_PAIRS + 1) in refused(413, check_count, MAX_PAIRS + 1)


def test_locations_are_comma_separated_in_order_with_repeats() -> None:
    assert parse_locations("S1,DC1,S1") == ["S1", "DC1", "S1"]
    assert "required" in refused(400, parse_locations, None)
    assert "locations[0]" in refused(400, parse_locations, "")
    assert "locations[1]" in refused(400, parse_locations, "S1,,S2")
    assert "locations[1]" in refused(400, parse_locations, "S1,a|b")
    refused(413, parse_locations, ",".join(f"S{i}" for i in range(MAX_PAIRS + 1)))


def body(value: Any) -> bytes:
    return orjson.dumps(value)


def test_a_query_body_gives_its_pairs_in_order() -> None:
    items = [{"sku": "A", "location": "S1"}, {"sku": "B", "location": "S2", "extra": 1}]
    assert parse_query_body(body({"items": items})) == [("A", "S1"), ("B", "S2")]
    assert parse_query_body(body({"items": []})) == []
    pairs = [{"sku": f"K{i}", "location": "S"} for i in range(MAX_PAIRS)]
    assert len(parse_query_body(body({"items": pairs}))) == MAX_PAIRS


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (body([1, 2]), "must be a JSON object"),
        (body({"pairs": []}), "no 'items'"),
        (body({"items": {"sku": "A"}}), "must be an array"),
        (body({"items": ["A|S1"]}), "items[0] must be an object"),
        (body({"items": [{"sku": "A"}]}), "items[0] has no 'location'"),
        (body({"items": [{"sku": "A", "location": "S"}, {"location": "S"}]}), "items[1] has no"),
        (body({"items": [{"sku": "", "location": "S"}]}), "items[0].sku must not be empty"),
        (body({"items": [{"sku": "A", "location": "S|1"}]}), "items[0].location"),
        (body({"items": [{"sku": 7, "location": "S"}]}), "items[0].sku must be a string"),
    ],
)
def test_malformed_query_bodies_are_400_saying_what_is_wrong(raw: bytes, says: str) -> None:
    assert says in refused(400, parse_query_body, raw)


def test_too_many_pairs_is_413_before_any_pair_is_checked() -> None:
    items = [{"sku": "", "location": ""}] * (MAX_PAIRS + 1)
    refused(413, parse_query_body, body({"items": items}))


# --- answers ---------------------------------------------------------------------------------


def test_each_pair_gets_its_record_and_status_or_unknown() -> None:
    record = {"channel": "web", "sku": "A", "location": "S1", "status": "low", "offered": 1}
    got = availability_items([("A", "S1"), ("A", "S9")], [record, None])
    assert got == [
        {"sku": "A", "location": "S1", "status": "low", "availability": record},
        {"sku": "A", "location": "S9", "status": "unknown", "availability": None},
    ]


GROUP_RECORD = {
    "channel": "web", "group": "ship", "sku": "A", "offered": 12, "status": "in",
    "confidence": 0.83, "version": 41, "locations": 3, "offering": 2, "as_of": 1_767_225_600_000,
}  # fmt: skip


def test_a_group_answer_is_the_stored_record_and_its_status_or_unknown() -> None:
    assert group_answer("web", "ship", "A", GROUP_RECORD) == {
        "channel": "web", "group": "ship", "sku": "A", "status": "in",
        "availability": GROUP_RECORD,
    }  # fmt: skip
    assert group_answer("web", "ship", "B", None) == {
        "channel": "web", "group": "ship", "sku": "B", "status": "unknown", "availability": None,
    }  # fmt: skip


def test_group_answers_match_the_documented_schema() -> None:
    document = openapi()
    validator = Draft202012Validator(
        {"$ref": "#/components/schemas/GroupAnswer", "components": document["components"]}
    )
    validator.validate(group_answer("web", "ship", "A", GROUP_RECORD))
    validator.validate(group_answer("web", "ship", "A", None))
    assert not validator.is_valid(group_answer("web", "ship", "A", {"offered": 1}))
    avro = orjson.loads((ROOT / "schemas" / "avro" / "group_availability.avsc").read_bytes())
    documented = document["components"]["schemas"]["GroupAvailabilityRecord"]["properties"]
    assert {field["name"] for field in avro["fields"]} == set(documented)


def event(i: int, kind: Kind, at: int, qty: int) -> StockEvent:
    return StockEvent("src", f"e{i}", "SKU1", "S1", kind, at, qty, f"ref{i}")


def test_a_stored_position_is_shown_with_its_ledger_pending_events_and_offsets() -> None:
    position = OpenPosition(Position())
    t0 = 1_767_225_600_000
    position.fold(event(1, Kind.COUNT, t0, 10), lateness_ms=60_000, watermark=t0)
    position.fold(event(2, Kind.SALE, t0 + 1000, -2), lateness_ms=60_000, watermark=t0 + 200_000)
    position.fold(event(3, Kind.RESERVE, t0 + 300_000, 3), lateness_ms=60_000, watermark=t0)
    position.fold(event(4, Kind.SALE, t0 + 400_000, -1), lateness_ms=60_000, watermark=t0)
    closed = position.close(lateness_ms=60_000)
    stored = orjson.dumps({"p": to_primitive(closed), "o": {"pos.sales": 41}})
    view = position_view("SKU1", "S1", stored)
    assert view["on_hand"] == closed.view().on_hand
    assert (view["version"], view["reserved"], view["last_count_at"]) == (4, 3, t0)
    assert view["pending_events"] == len(closed.pending) > 0
    assert view["settled"]["version"] + view["pending_events"] == 4
    assert view["input_offsets"] == {"pos.sales": 41}
    assert view["as_of"] == t0 + 400_000 and view["stream_time"] is not None
    assert orjson.loads(orjson.dumps(view)) == view  # JSON as is

    fresh = position_view("X", "Y", orjson.dumps({"p": to_primitive(Position()), "o": {}}))
    assert (fresh["version"], fresh["as_of"], fresh["horizon"], fresh["stream_time"]) == (
        0, None, None, None,
    )  # fmt: skip


def test_key_partitions_follow_the_murmur2_default_partitioner() -> None:
    partitioner = DefaultPartitioner()
    for i in range(200):
        key = f"SKU{i}|S{i % 7}".encode()
        assert key_partition(key, 6) == partitioner(key, list(range(6)), list(range(6)))


# --- the OpenAPI document and the registered routes --------------------------------------------


def openapi() -> dict[str, Any]:
    document = yaml.safe_load(OPENAPI_PATH.read_text())
    assert isinstance(document, dict)
    return document


def registered(app: faust.App) -> set[tuple[str, str]]:
    """(method, path) of every /v1 route on the app's aiohttp router (HEAD/OPTIONS aside)."""
    routes = set()
    for route in app.web.web_app.router.routes():  # type: ignore[attr-defined]
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/v1/") and route.method not in ("HEAD", "OPTIONS"):
            routes.add((route.method, path))
    return routes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def app_settings(tmp_path: Path) -> Settings:
    # a Redis nobody listens on: availability requests that reach Redis answer 503
    return load_settings(
        channels="web,bopis", redis_url=f"redis://127.0.0.1:{free_port()}/0", state_dir=tmp_path
    )


@pytest.fixture
def app(app_settings: Settings) -> Iterator[faust.App]:
    app = faust.App("query-api-test", store="memory://", web_in_thread=False)
    positions = app.Table("positions", partitions=4, key_type=bytes, value_type=bytes)
    register_query_api(app, app_settings, positions)
    yield app


def test_the_openapi_document_is_3_1_and_describes_every_registered_route(app: faust.App) -> None:
    document = openapi()
    assert document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }
    routes = registered(app)
    assert routes == set(ROUTES)
    assert routes <= documented, routes - documented
    assert documented <= routes, documented - routes  # nothing documented that is not served
    assert (ROOT / "docs" / "openapi.yaml") == OPENAPI_PATH


def test_every_schema_reference_in_the_document_resolves() -> None:
    document = openapi()

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(document):
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]


Call = Callable[..., tuple[int, Any, str]]


@pytest.fixture
def call(app: faust.App) -> Iterator[Call]:
    yield from serving(app)


def serving(app: faust.App) -> Generator[Call, None, None]:
    """Requests through the app's aiohttp application (the real routing and views), on one
    event loop (an aiohttp application is bound to the loop it first ran on)."""
    loop = asyncio.new_event_loop()
    client = TestClient(TestServer(app.web.web_app), loop=loop)  # type: ignore[attr-defined]
    loop.run_until_complete(client.start_server())

    async def request(method: str, path: str, **kwargs: Any) -> tuple[int, Any, str]:
        reply = await client.request(method, path, **kwargs)
        text = await reply.text()
        data = orjson.loads(text) if reply.content_type == "application/json" else None
        return reply.status, data, text

    try:
        yield lambda method, path, **kw: loop.run_until_complete(request(method, path, **kw))
    finally:
        loop.run_until_complete(client.close())
        loop.close()


def test_bad_requests_are_refused_with_a_json_message_before_redis_is_asked(
    call: Call,
) -> None:
    cases = [
        ("GET", "/v1/availability/market/SKU1?locations=S1", 404, "unknown channel"),
        ("GET", "/v1/availability/web/SKU1", 400, "'locations' is required"),
        ("GET", "/v1/availability/web/SKU1?locations=S1,,S2", 400, "locations[1]"),
        ("GET", "/v1/availability/web/A%7CB?locations=S1", 400, "contains '|'"),
        ("POST", "/v1/availability/market/query", 404, "unknown channel"),
        ("GET", "/v1/positions/A%7CB/S1", 400, "contains '|'"),
    ]
    for method, path, status, says in cases:
        got, data, text = call(method, path)
        assert got == status, (path, text)
        assert data is not None and data["status"] == status and says in data["error"], data

    got, data, _ = call("POST", "/v1/availability/web/query", data=b"{oops")
    assert got == 400 and "not valid JSON" in data["error"]
    items = [{"sku": "A", "location": "S"}] * (MAX_PAIRS + 1)
    got, data, _ = call("POST", "/v1/availability/bopis/query", json={"items": items})
    assert got == 413 and "at most 1000" in data["error"]
    many = ",".join(["S1"] * (MAX_PAIRS + 1))
    got, data, _ = call("GET", f"/v1/availability/web/SKU1?locations={many}")
    assert got == 413
    got, data, _ = call("POST", "/v1/availability/web/query", data=b"x" * (2 * 1024**2))
    assert got == 413 and "too large" in data["error"]


def test_without_a_policy_file_no_channel_has_groups(call: Call) -> None:
    got, data, _ = call("GET", "/v1/availability/web/groups/ship/SKU1")
    assert got == 404 and "publishes no aggregate for group 'ship' (has: none)" in data["error"]


def policy_app(settings: Settings, name: str, **kwargs: Any) -> faust.App:
    app = faust.App(name, store="memory://", web_in_thread=False)
    positions = app.Table("positions", partitions=4, key_type=bytes, value_type=bytes)
    register_query_api(app, settings, positions, **kwargs)
    return app


@pytest.fixture
def policy_call(app_settings: Settings, tmp_path: Path) -> Iterator[Call]:
    """:func:`call` on an app whose settings name a policy file with aggregates."""
    policy = tmp_path / "channels.toml"
    policy.write_text(POLICY)
    settings = app_settings.model_copy(update={"channel_policy": policy})
    yield from serving(policy_app(settings, "query-api-policy-file"))


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/v1/availability/market/groups/ship/SKU1", 404, "unknown channel 'market'"),
        ("/v1/availability/web/groups/stores/SKU1", 404, "no aggregate for group 'stores'"),
        ("/v1/availability/bopis/groups/ship/SKU1", 404, "(has: none)"),
        ("/v1/availability/web/groups/Ship/SKU1", 400, "not a group name"),
        ("/v1/availability/web/groups/sh%7Cip/SKU1", 400, "not a group name"),
        ("/v1/availability/web/groups/ship/A%7CB", 400, "contains '|'"),
        ("/v1/availability/web/groups/ship/SKU1", 503, "read model is unavailable"),  # known
        ("/v1/availability/web/groups/dcs/SKU1", 503, "read model is unavailable"),
    ],
)
def test_group_requests_are_checked_before_redis_is_asked(
    policy_call: Call, path: str, status: int, says: str
) -> None:
    got, data, text = policy_call("GET", path)
    assert got == status, (path, text)
    assert data["status"] == status and says in data["error"], data


def test_a_policy_passed_in_is_used_instead_of_the_settings_file(app_settings: Settings) -> None:
    policy = parse_policy(tomllib.loads(POLICY))  # the settings name no policy file
    requests = serving(policy_app(app_settings, "query-api-policy-arg", policy=policy))
    call = next(requests)
    assert call("GET", "/v1/availability/web/groups/ship/S")[0] == 503  # known: Redis asked
    assert call("GET", "/v1/availability/bopis/groups/ship/S")[0] == 404
    requests.close()


def test_redis_down_is_503_with_a_message(call: Call) -> None:
    got, data, _ = call("GET", "/v1/availability/web/SKU1?locations=S1")
    assert got == 503 and "read model is unavailable" in data["error"], data
    query = {"items": [{"sku": "A", "location": "S"}]}
    got, data, _ = call("POST", "/v1/availability/web/query", json=query)
    assert got == 503 and data["status"] == 503


def test_a_get_of_the_query_path_is_the_sku_named_query(call: Call) -> None:
    got, data, _ = call("GET", "/v1/availability/web/query")
    assert got == 400 and "'locations' is required" in data["error"]  # routed to the sku view


def test_the_openapi_document_is_served(call: Call) -> None:
    got, _data, text = call("GET", "/v1/openapi.yaml")
    assert got == 200 and yaml.safe_load(text) == openapi()
