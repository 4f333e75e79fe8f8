"""The query API, served by the worker's web server (Faust web on aiohttp, ``INVSYNC_WEB_PORT``).

Routes (the contract is ``docs/openapi.yaml``, also served at ``GET /v1/openapi.yaml``):

- ``GET /v1/availability/{channel}/{sku}?locations=L1,L2`` and
  ``POST /v1/availability/{channel}/query`` with ``{"items": [{"sku", "location"}, ...]}``: per
  pair, in request order, the latest availability record the Redis read model holds
  (:mod:`sinks.read_model`) with its ``status``, or ``status: "unknown"`` and
  ``availability: null`` for a pair never published. At most :data:`MAX_PAIRS` pairs a request.
- ``GET /v1/availability/{channel}/groups/{group}/{sku}``: the latest network aggregate of one sku
  over one location group (a record of ``availability.<channel>.groups``: offered, status,
  confidence, version, locations, offering, as_of), or ``status: "unknown"`` and
  ``availability: null`` if none was published. The group must be one the channel's policy
  aggregates (``aggregates`` in the policy file, :mod:`streams.aggregates`); any other is 404.
- ``GET /v1/positions/{sku}/{location}``: the position in the positions table (the full ledger:
  on hand, reserved, last count, pending events, version, stream time, input offsets).

Guarantees:

- **Availability = what was published.** Answers come from the read model, which the Redis
  sink keeps at the latest version of every record of the ``availability.<channel>`` topics, so
  an answer never shows a value that was not published, and a key never moves backwards (group
  answers likewise, from the ``availability.<channel>.groups`` topics). One Redis round trip per
  request, run in an executor so the worker's event loop is not blocked.
  Not a snapshot across keys (each key at its own latest version); what the sink has not yet
  written is not visible (the read model lags the topic by the sink's lag).
- **Positions = the owner's local table.** The position is read (read-only) from the local store
  of the worker that owns the key's partition, as of the last batch it folded; that may be ahead
  of the published availability by the batches still being delivered. A request to a worker that
  does not own the partition is forwarded once, over HTTP, to the owner named by Faust's table
  metadata (``app.router.table_metadata``, the data behind ``app.table_route``), marked with
  :data:`FORWARDED_HEADER` so it is never forwarded twice.
- **Errors are JSON** ``{"error": message, "status": code}``: 400 malformed request (bad JSON,
  missing fields, an empty sku or location, or one containing ``|``, a group that is not a group
  name), 404 unknown channel, a group the channel does not aggregate, or no such position, 413
  more than :data:`MAX_PAIRS` pairs (or a body over aiohttp's ``client_max_size``, 1 MiB by
  default), 503 Redis unreachable (after the read model's client retries, so up to ~10 s), the
  partition being rebalanced or recovered, or its owner not answering.

Limits: no authentication, rate limiting or caching (put it behind a gateway). Forwarding needs
the workers to reach each other at their canonical URL (``http://<hostname>:<web port>`` unless
Faust's ``WEB_HOST`` environment variable says otherwise). While a partition moves (a rebalance,
table recovery), positions of that partition answer 503 until its new owner is ready. The served
OpenAPI document is read from ``docs/openapi.yaml`` next to the source tree; an installation
without it answers that route with 404. Which groups a channel aggregates comes from the channel
policy as the worker started with it (a changed policy file takes a restart, as for the worker).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import faust
import orjson
from aiohttp import web as aiohttp_web
from aiokafka.partitioner import murmur2
from faust.types import TP, TableT
from faust.web import Request, Response, View
from redis.exceptions import RedisError

from invsync.settings import Settings
from sinks.read_model import RedisReadModel
from state.channel_policy import ChannelPolicy, default_channel, load_policy
from state.events import KEY_SEPARATOR
from state.position import NEVER, from_primitive
from streams import health
from streams.partition_store import PartitionStore
from streams.velocity import demand_velocity

log = logging.getLogger(__name__)

MAX_PAIRS = 1_000
UNKNOWN = "unknown"  # the status of a pair never published
FORWARDED_HEADER = "X-Invsync-Forwarded-From"
FORWARD_TIMEOUT_S = 5.0
OPENAPI_PATH = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
GROUP_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")  # the policy's group names (state.channel_policy)

# Every route this module registers: (method, path), in registration order. The OpenAPI
# document must describe each (tests/unit/test_query_api.py).
AVAILABILITY_QUERY = "/v1/availability/{channel}/query"
AVAILABILITY_ONE = "/v1/availability/{channel}/{sku}"
GROUP_ONE = "/v1/availability/{channel}/groups/{group}/{sku}"
POSITION = "/v1/positions/{sku}/{location}"
OPENAPI = "/v1/openapi.yaml"
ROUTES = (
    ("POST", AVAILABILITY_QUERY),
    ("GET", AVAILABILITY_ONE),
    ("GET", GROUP_ONE),
    ("GET", POSITION),
    ("GET", OPENAPI),
)

JSON = "application/json"


class RequestError(Exception):
    """A request the API refuses: the HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- pure request validation -------------------------------------------------------------------


def check_identifier(kind: str, value: object) -> str:
    """``value`` as a sku or location (``kind`` names it in the message): a non-empty string
    without the key separator ``|``; else 400."""
    if not isinstance(value, str):
        raise RequestError(400, f"{kind} must be a string, got {_json_kind(value)}")
    if not value:
        raise RequestError(400, f"{kind} must not be empty")
    if KEY_SEPARATOR in value:
        raise RequestError(400, f"{kind} {value!r} contains {KEY_SEPARATOR!r}")
    return value


def check_channel(channel: str, channels: Sequence[str]) -> str:
    """``channel`` if it is configured (``INVSYNC_CHANNELS``); else 404."""
    if channel not in channels:
        raise RequestError(404, f"unknown channel {channel!r} (have: {', '.join(channels)})")
    return channel


def check_group_name(value: str) -> str:
    """``value`` as a location group name (``^[a-z][a-z0-9_-]*$``, as the policy file requires);
    else 400."""
    if not GROUP_NAME.match(value):
        raise RequestError(400, f"group {value!r} is not a group name ({GROUP_NAME.pattern})")
    return value


def aggregated_groups(settings: Settings, policy: ChannelPolicy) -> dict[str, tuple[str, ...]]:
    """Per configured channel, the groups its policy publishes network aggregates for."""
    return {name: policy.channel(name).aggregates for name in settings.channels}


def check_group(channel: str, group: str, aggregated: Mapping[str, Sequence[str]]) -> str:
    """``group`` if ``channel`` publishes aggregates for it; else 404."""
    known = aggregated.get(channel, ())
    if group not in known:
        have = ", ".join(known) or "none"
        raise RequestError(
            404, f"channel {channel!r} publishes no aggregate for group {group!r} (has: {have})"
        )
    return group


def check_count(n: int) -> None:
    """At most :data:`MAX_PAIRS` pairs a request; else 413."""
    if n > MAX_PAIRS:
        raise RequestError(413, f"{n} pairs requested; at most {MAX_PAIRS} per request")


def parse_locations(raw: str | None) -> list[str]:
    """The ``locations`` query parameter (comma separated, in order, repeats kept)."""
    if raw is None:
        raise RequestError(400, "query parameter 'locations' is required (L1,L2,...)")
    locations = raw.split(",")
    check_count(len(locations))
    return [check_identifier(f"locations[{i}]", loc) for i, loc in enumerate(locations)]


def parse_query_body(body: bytes) -> list[tuple[str, str]]:
    """The (sku, location) pairs of a ``POST .../query`` body, in order (repeats kept)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RequestError(400, f"the body must be a JSON object, got {_json_kind(document)}")
    if "items" not in document:
        raise RequestError(400, "the body has no 'items'")
    items = document["items"]
    if not isinstance(items, list):
        raise RequestError(400, f"'items' must be an array, got {_json_kind(items)}")
    check_count(len(items))
    pairs: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise RequestError(400, f"items[{i}] must be an object, got {_json_kind(item)}")
        for name in ("sku", "location"):
            if name not in item:
                raise RequestError(400, f"items[{i}] has no '{name}'")
        sku = check_identifier(f"items[{i}].sku", item["sku"])
        location = check_identifier(f"items[{i}].location", item["location"])
        pairs.append((sku, location))
    return pairs


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    return {
        dict: "an object", list: "an array", str: "a string", bool: "a boolean",
        int: "a number", float: "a number",
    }.get(type(value), type(value).__name__)  # fmt: skip


# --- answers ---------------------------------------------------------------------------------


def availability_items(
    pairs: Sequence[tuple[str, str]], records: Sequence[Mapping[str, Any] | None]
) -> list[dict[str, Any]]:
    """One answer per pair, in order: its status and the stored record, or ``unknown``/null."""
    return [
        {
            "sku": sku,
            "location": location,
            "status": UNKNOWN if record is None else record.get("status", UNKNOWN),
            "availability": None if record is None else dict(record),
        }
        for (sku, location), record in zip(pairs, records, strict=True)
    ]


def group_answer(
    channel: str, group: str, sku: str, record: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The answer for one sku over one group: its status and stored record, or unknown/null."""
    return {
        "channel": channel,
        "group": group,
        "sku": sku,
        "status": UNKNOWN if record is None else record.get("status", UNKNOWN),
        "availability": None if record is None else dict(record),
    }


def _time(value: int | None) -> int | None:
    return None if value is None or value == NEVER else value


def position_view(sku: str, location: str, stored: bytes) -> dict[str, Any]:
    """A stored positions-table value (``{"p": position, "o": offsets}``, see
    :mod:`streams.fold_batch`) as the operator view: the current ledger (settled + pending),
    the settled part, the open ERP window and the input offsets applied. Times are epoch millis
    of event time; ``null`` where there is none yet."""
    data = orjson.loads(stored)
    position = from_primitive(data["p"])
    ledger, settled = position.view(), position.settled
    netting = position.netting
    return {
        "sku": sku,
        "location": location,
        "version": position.version,
        "on_hand": ledger.on_hand,
        "reserved": ledger.reserved,
        "in_transit": ledger.in_transit,
        "last_count_at": ledger.last_count_at,
        "last_count_id": ledger.last_count_id or None,
        "last_discrepancy": ledger.last_discrepancy,
        "units_moved_since_count": ledger.moved_since_count,
        "late_events": ledger.late,
        "as_of": _time(ledger.as_of),
        "units_sold": ledger.units_sold,
        "first_sale_at": ledger.first_sale_at,
        "last_sale_at": ledger.last_sale_at,
        "stream_time": _time(position.stream_time),
        "horizon": _time(position.horizon),
        "pending_events": len(position.pending),
        "settled": {
            "version": settled.applied,
            "on_hand": settled.on_hand,
            "reserved": settled.reserved,
        },
        "open_erp_window": None
        if netting is None
        else {"start": netting.start, "reasons": dict(netting.reasons)},
        "input_offsets": dict(data.get("o", {})),
    }


def key_partition(key: bytes, partitions: int) -> int:
    """The partition of a table key: murmur2, as every producer of the inputs must use (and
    Java's and aiokafka's default partitioner)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# --- the web layer -----------------------------------------------------------------------------


@dataclass
class _Api:
    app: faust.App
    settings: Settings
    positions: TableT
    _model: RedisReadModel | None = None

    @property
    def model(self) -> RedisReadModel:
        """The app's read model, created on first use (no I/O until a command runs)."""
        if self._model is None:
            self._model = RedisReadModel.from_settings(self.settings)
        return self._model

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None

    async def availability(self, channel: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        try:
            records = await loop.run_in_executor(None, self.model.get_many, channel, pairs)
        except RedisError as exc:
            log.warning("query API: the read model is unreachable: %s", exc)
            raise RequestError(503, f"the availability read model is unavailable: {exc}") from None
        return {"channel": channel, "items": availability_items(pairs, records)}

    async def group(self, channel: str, group: str, sku: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        try:
            record = await loop.run_in_executor(None, self.model.get_group, channel, group, sku)
        except RedisError as exc:
            log.warning("query API: the read model is unreachable: %s", exc)
            raise RequestError(503, f"the availability read model is unavailable: {exc}") from None
        return group_answer(channel, group, sku, record)

    async def position(self, web: View, request: Request, sku: str, location: str) -> Response:
        key = f"{sku}{KEY_SEPARATOR}{location}".encode()
        changelog = self.positions.changelog_topic.get_topic_name()
        partition = key_partition(key, self.settings.partitions)
        if TP(changelog, partition) in self.app.assignor.assigned_actives():
            ok, why = health.ready(self.app)
            if not ok:
                raise RequestError(503, f"partition {partition} is not ready here ({why})")
            stored = PartitionStore(self.positions).get_many(partition, [key])[0]
            if stored is None:
                raise RequestError(404, f"no position for {sku!r} at {location!r}")
            view = position_view(sku, location, stored)
            view |= {"partition": partition, "served_by": str(self.app.conf.canonical_url)}
            # demand velocity from the hourly windows, as of the position's stream time
            view["demand_velocity"] = demand_velocity(
                self.app, sku, location, view["stream_time"] or view["as_of"]
            )
            return _json(web, view)
        if request.headers.get(FORWARDED_HEADER):
            raise RequestError(
                503, f"partition {partition} is not assigned here either (rebalancing?)"
            )
        owner = self._owner(changelog, partition)
        if owner is None:
            raise RequestError(503, f"no worker owns partition {partition} now (rebalancing?)")
        return await self._forward(web, request, owner, partition)

    def _owner(self, changelog: str, partition: int) -> str | None:
        own = str(self.app.conf.canonical_url)
        for url, topics in self.app.router.table_metadata(self.positions.name).items():
            if partition in topics.get(changelog, ()) and url != own:
                return url
        return None

    async def _forward(self, web: View, request: Request, owner: str, partition: int) -> Response:
        url = owner.rstrip("/") + str(request.rel_url)
        client = self.app.http_client
        try:
            async with client.get(
                url,
                headers={FORWARDED_HEADER: str(self.app.conf.canonical_url)},
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S),
            ) as reply:
                body = await reply.read()
                return web.bytes(body, content_type=reply.content_type, status=reply.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RequestError(
                503, f"the worker owning partition {partition} ({owner}) did not answer: {exc!r}"
            ) from None


def _json(web: View, value: Any, status: int = 200) -> Response:
    return web.bytes(orjson.dumps(value), content_type=JSON, status=status)


def _error(web: View, error: RequestError) -> Response:
    return _json(web, {"error": error.message, "status": error.status}, error.status)


async def _read_body(request: Request) -> bytes:
    try:
        return await cast(aiohttp_web.Request, request).read()  # bounded by client_max_size
    except aiohttp_web.HTTPRequestEntityTooLarge as exc:
        raise RequestError(413, f"the body is too large: {exc.text}") from None


def _policy(settings: Settings) -> ChannelPolicy:
    """The worker's channel policy: ``INVSYNC_CHANNEL_POLICY``, or the built-in default channels
    (no aggregates) when it is unset (as :func:`invsync.worker.channel_policy`)."""
    if settings.channel_policy is not None:
        return load_policy(settings.channel_policy)
    return ChannelPolicy({name: default_channel(name) for name in settings.channels})


def register_query_api(
    app: faust.App,
    settings: Settings,
    positions_table: TableT,
    policy: ChannelPolicy | None = None,
) -> None:
    """Register the query API's routes (:data:`ROUTES`) on ``app``'s web server; the read model
    is created on the first availability request and closed before the app shuts down.

    ``policy``: the worker's channel policy (which groups each channel aggregates); read from
    ``INVSYNC_CHANNEL_POLICY`` when not given. Raises
    :class:`~state.channel_policy.PolicyError` if that file is invalid."""
    api = _Api(app, settings, positions_table)
    channels = tuple(settings.channels)
    aggregated = aggregated_groups(settings, policy or _policy(settings))

    async def one_sku(web: View, request: Request, channel: str, sku: str) -> Response:
        try:
            check_channel(channel, channels)
            check_identifier("sku", sku)
            locations = parse_locations(request.query.get("locations"))
            answer = await api.availability(channel, [(sku, loc) for loc in locations])
        except RequestError as error:
            return _error(web, error)
        answer["sku"] = sku
        return _json(web, answer)

    class AvailabilityQuery(View):
        """Many (sku, location) pairs of one channel. Only POST is routed here: a GET of this
        path falls through to :data:`AVAILABILITY_ONE` (the sku named ``query``)."""

        async def post(self, request: Request, channel: str) -> Response:
            try:
                check_channel(channel, channels)
                pairs = parse_query_body(await _read_body(request))
                answer = await api.availability(channel, pairs)
            except RequestError as error:
                return _error(self, error)
            return _json(self, answer)

    class AvailabilityOne(View):
        """One sku at the given locations."""

        async def get(self, request: Request, channel: str, sku: str) -> Response:
            return await one_sku(self, request, channel, sku)

    class GroupOne(View):
        """One sku's network aggregate over one location group of a channel."""

        async def get(self, request: Request, channel: str, group: str, sku: str) -> Response:
            try:
                check_channel(channel, channels)
                check_group_name(group)
                check_identifier("sku", sku)
                check_group(channel, group, aggregated)
                return _json(self, await api.group(channel, group, sku))
            except RequestError as error:
                return _error(self, error)

    class PositionView(View):
        """The position of one sku at one location (served, or forwarded to, its owner)."""

        async def get(self, request: Request, sku: str, location: str) -> Response:
            try:
                check_identifier("sku", sku)
                check_identifier("location", location)
                return await api.position(self, request, sku, location)
            except RequestError as error:
                return _error(self, error)

    class OpenApi(View):
        """The OpenAPI document of this API."""

        async def get(self, request: Request) -> Response:
            try:
                document = OPENAPI_PATH.read_bytes()
            except OSError:
                return _error(self, RequestError(404, f"{OPENAPI_PATH.name} is not installed"))
            return self.bytes(document, content_type="application/yaml")

    views: dict[str, type[View]] = {
        AVAILABILITY_QUERY: AvailabilityQuery,
        AVAILABILITY_ONE: AvailabilityOne,
        GROUP_ONE: GroupOne,
        POSITION: PositionView,
        OPENAPI: OpenApi,
    }
    for _method, path in ROUTES:
        app.page(path, name=f"query-api:{path}")(views[path])

    async def close(*args: Any, **kwargs: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, api.close)

    cast(Any, app.on_before_shutdown).connect(close)
