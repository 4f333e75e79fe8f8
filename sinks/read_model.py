"""The Redis read model: the latest availability record per channel, sku and location, and the
latest network aggregate per channel, location group and sku.

One Redis hash per position and channel, at ``<prefix>:<channel>:<sku>|<location>``, where the
prefix is ``<INVSYNC_TOPIC_PREFIX>invsync:avail`` (so deployments that share a broker under
different topic prefixes do not share keys) and ``sku|location`` is the Kafka key of the
availability topic. ``|`` cannot occur in a sku or location (the worker dead-letters such
events) while ``:`` can, so no two positions share a key. A group record (of
``availability.<channel>.groups``, told apart by its ``group`` field) is at
``<prefix>:<channel>:group:<group>|<sku>``; group names cannot contain ``:`` or ``|``, so no two
groups share a key, but a position whose sku is ``group:<group>`` and whose location is another
sku would share one with that group record (no such sku is expected). The hash has two fields:

- ``version``: the record's version (an integer; monotone per position or group, see the
  schemas);
- ``r``: the whole record as JSON (orjson), timestamps as epoch millis.

Guarantees:

- **Never backwards.** A write applies only if its version is greater than the stored one,
  checked and written atomically in Redis (a Lua script). An equal version is a no-op, so
  writing the same records again changes nothing (idempotent), and records may arrive in any
  order: the key ends at the highest version written.
- **At-least-once + idempotent by version** together give the read model exactly the latest
  version of every record the sink has written. A batch is one pipeline, not a transaction: if
  it fails part way, some keys are written and the rest are not; writing the batch again
  completes it.
- **Redis down**: a write or read raises after redis-py's retries (exponential backoff with
  jitter on connection errors and timeouts, :data:`CLIENT_RETRIES` retries, each attempt bounded
  by the socket timeouts). Nothing is half-applied to one key. The caller decides: the sink
  keeps its Kafka offsets uncommitted and retries the batch; a query answers with an error.

Limits: a record whose content changes without a new version (e.g. a changed channel policy
re-publishing a position at the same version) does not replace the stored one until the
position's next event. Keys are never deleted or expired here. Reads are not a snapshot across
keys: each key is read at its own latest version.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from invsync.settings import Settings
from state.events import KEY_SEPARATOR

KEY_PREFIX = "invsync:avail"
RECORD_FIELD = b"r"
VERSION_FIELD = b"version"

CLIENT_RETRIES = 3  # per command or pipeline, after the first attempt
SOCKET_CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# KEYS[1] the position's hash; ARGV[1] the incoming version; ARGV[2] the record (JSON).
# Returns 1 if written, 0 if the stored version is equal or newer.
_WRITE_IF_NEWER = """
local stored = redis.call('HGET', KEYS[1], 'version')
if stored and tonumber(stored) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'r', ARGV[2])
return 1
"""


@dataclass(frozen=True)
class WriteResult:
    """What one :meth:`RedisReadModel.write` did: ``applied`` records replaced an older version
    (or created the key); ``stale`` ones found an equal or newer version (in Redis or later in
    the same batch) and changed nothing."""

    applied: int
    stale: int

    @property
    def total(self) -> int:
        return self.applied + self.stale


def key_prefix(settings: Settings) -> str:
    """The read model's key prefix for a deployment: its topic prefix + ``invsync:avail``."""
    return f"{settings.topic_prefix}{KEY_PREFIX}"


def redis_key(prefix: str, channel: str, sku: str, location: str) -> str:
    """The hash holding one channel's record for one sku at one location."""
    return f"{prefix}:{channel}:{sku}{KEY_SEPARATOR}{location}"


def group_redis_key(prefix: str, channel: str, group: str, sku: str) -> str:
    """The hash holding one channel's network aggregate of one sku over one location group."""
    return f"{prefix}:{channel}:group:{group}{KEY_SEPARATOR}{sku}"


def record_ident(record: dict[str, Any]) -> tuple[str, ...]:
    """What a record is the latest of: (channel, sku, location) for a position's record,
    (channel, "group", group, sku) for a group record (it has a ``group`` field)."""
    if "group" in record:
        return (record["channel"], "group", record["group"], record["sku"])
    return (record["channel"], record["sku"], record["location"])


def ident_key(prefix: str, ident: tuple[str, ...]) -> str:
    """The hash of a :func:`record_ident`."""
    if len(ident) == 4:
        channel, _, group, sku = ident
        return group_redis_key(prefix, channel, group, sku)
    channel, sku, location = ident
    return redis_key(prefix, channel, sku, location)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // timedelta(milliseconds=1)
    return value


def encode_record(record: dict[str, Any]) -> bytes:
    """The record as stored in field ``r``: JSON, timestamps (datetimes) as epoch millis."""
    return orjson.dumps({name: _plain(value) for name, value in record.items()})


def decode_record(data: bytes) -> dict[str, Any]:
    """A record as :meth:`RedisReadModel.get` returns it (the inverse of :func:`encode_record`)."""
    record = orjson.loads(data)
    if not isinstance(record, dict):
        raise ValueError("a stored availability record is not a JSON object")
    return record


def newest_per_key(
    records: Iterable[dict[str, Any]],
) -> dict[tuple[str, ...], dict[str, Any]]:
    """The highest-version record per :func:`record_ident` (channel, sku, location; or a
    group's); the first of equal versions (the others could not apply after it)."""
    newest: dict[tuple[str, ...], dict[str, Any]] = {}
    for record in records:
        ident = record_ident(record)
        kept = newest.get(ident)
        if kept is None or int(record["version"]) > int(kept["version"]):
            newest[ident] = record
    return newest


def redis_client(url: str) -> redis.Redis:
    """A client for ``url`` that retries connection errors and timeouts with backoff."""
    return redis.Redis.from_url(
        url,
        retry=Retry(
            ExponentialWithJitterBackoff(cap=1.0, base=0.1),
            CLIENT_RETRIES,
            supported_errors=(RedisConnectionError, RedisTimeoutError),
        ),
        socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=30,
        client_name="invsync-read-model",
    )


class RedisReadModel:
    """Latest availability per channel, sku and location in Redis; never moves a key backwards.

    See the module docstring for the layout and the guarantees. Thread-safe as far as the
    redis-py client is (one connection pool; each call takes its own connection).
    """

    def __init__(self, client: redis.Redis, prefix: str = KEY_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._write_if_newer = client.register_script(_WRITE_IF_NEWER)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisReadModel:
        """The read model at ``INVSYNC_REDIS_URL`` under the deployment's :func:`key_prefix`."""
        return cls(redis_client(settings.redis_url), key_prefix(settings))

    def key(self, channel: str, sku: str, location: str) -> str:
        return redis_key(self.prefix, channel, sku, location)

    def write(self, records: Sequence[dict[str, Any]]) -> WriteResult:
        """Write each record unless its key holds an equal or newer version; one round trip.

        Raises a :class:`redis.exceptions.RedisError` after the client's retries if Redis
        cannot be reached or refuses the write; writing the same records again is then safe.
        """
        if not records:
            return WriteResult(0, 0)
        newest = newest_per_key(records)
        pipe = self.client.pipeline(transaction=False)
        for ident, record in newest.items():
            self._write_if_newer(
                keys=[ident_key(self.prefix, ident)],
                args=[int(record["version"]), encode_record(record)],
                client=pipe,
            )
        applied = sum(int(result) for result in pipe.execute())
        return WriteResult(applied, len(records) - applied)

    def get_many(
        self, channel: str, pairs: Sequence[tuple[str, str]]
    ) -> list[dict[str, Any] | None]:
        """The stored record of each (sku, location) pair, in order; ``None`` where there is
        none. One round trip. Raises a :class:`redis.exceptions.RedisError` after the client's
        retries if Redis cannot be reached."""
        if not pairs:
            return []
        pipe = self.client.pipeline(transaction=False)
        for sku, location in pairs:
            pipe.hget(self.key(channel, sku, location), RECORD_FIELD)
        return [None if data is None else decode_record(data) for data in pipe.execute()]

    def get(
        self, channel: str, sku: str, locations: Sequence[str]
    ) -> dict[str, dict[str, Any] | None]:
        """One sku's stored record at each location (``None`` where there is none)."""
        found = self.get_many(channel, [(sku, location) for location in locations])
        return dict(zip(locations, found, strict=True))

    def get_group(self, channel: str, group: str, sku: str) -> dict[str, Any] | None:
        """The stored network aggregate of one sku over one group, or ``None``."""
        data = self.client.hget(group_redis_key(self.prefix, channel, group, sku), RECORD_FIELD)
        return None if data is None else decode_record(cast(bytes, data))

    def close(self) -> None:
        self.client.close()
