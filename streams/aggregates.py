"""Network aggregates per location group: two agents and a table (the pure rules are
:mod:`state.aggregate`).

For every configured channel whose policy lists ``aggregates`` (groups it publishes sums for):

1. **contributions** (agent ``aggregate-contributions``, stateless) consumes the compacted
   ``availability.<channel>`` topics. For each availability record (the newest version per
   sku|location of a batch) and each aggregate group containing its location, it produces a
   contribution (``schemas/avro/group_contribution.avsc``: offered, confidence, version,
   as_of) to ``invsync.group-contributions``, keyed ``channel|group|sku``, so every
   contribution to one aggregate lands on one partition.
2. **groups** (agent ``aggregate-groups``) consumes that topic and folds each contribution into
   the ``group-aggregates`` table (key ``channel|group|sku``, orjson bytes, changelog-backed),
   keeping the latest contribution per location by version. When a batch changes an aggregate's
   total, status or confidence from what was last published for it, it produces the group
   record (``schemas/avro/group_availability.avsc``) to ``availability.<channel>.groups``, keyed
   ``group|sku``.

Both run in the fold's batch discipline (``streams.app._batched``): a batch's records — table
changelog, contributions or group records, dead letters — are queued on one delivery ticket,
and its events are reported folded to the offset guard (and acked) only once the broker has
acknowledged every one of them, so a committed offset never passes an event whose effects are
not durable. Events of partitions taken away by a rebalance are left out (:func:`owned`).

Guarantees (at-least-once, idempotent by version):

- **contributions**: every availability record of an aggregating channel reaches the
  contributions topic, at least once, for every group containing its location. A redelivered
  record produces the same contribution again, which the table ignores (same version).
- **groups**: the table holds, per aggregate, the latest version of every location's record;
  redelivery or reordering never moves a location backwards (:mod:`state.aggregate`). The last
  group record published for a key carries the aggregate's current total, status and
  confidence: a contribution redelivered at or below the offset stored with its aggregate (a
  crash before the batch's records were all acknowledged) re-writes the aggregate and
  re-publishes its record, as the position fold re-publishes a redelivered position. Group
  records are versioned (sum of the locations' versions, monotone), so the read model keeps the
  newest; a record may be published twice with the same content.
- **Bad input is data**: an undecodable record, a key that does not match its record, a
  channel or group the policy no longer aggregates, impossible values go to
  ``invsync.dead-letters`` with the reason; the worker goes on.

Limits: the table value holds every location of the group that published the sku (one row per
location), so a group of thousands of locations makes large values. A location removed from a
group by a policy change keeps its last contribution. Changing a channel's thresholds re-states
a group's status at the next contribution to it (the table stores what was last published).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import faust
import orjson
from faust.types import EventT, TableT

from invsync.settings import Settings
from state.aggregate import (
    Contribution,
    GroupAggregate,
    GroupSummary,
    InvalidContribution,
    from_primitive,
    to_primitive,
)
from state.availability import location_type
from state.channel_policy import ChannelPolicy, LocationGroup, Thresholds
from state.events import KEY_SEPARATOR
from streams import health, topics
from streams.codec import Codec, DecodeError
from streams.dead_letters import DeadLetter, dead_letter, send_dead_letters
from streams.delivery import Outputs, Ticket
from streams.fold_batch import owned
from streams.partition_store import PartitionStore

log = logging.getLogger(__name__)

AGGREGATES_TABLE = "group-aggregates"


def aggregating_channels(
    settings: Settings, policy: ChannelPolicy
) -> dict[str, tuple[LocationGroup, ...]]:
    """The configured channels whose policy lists aggregates, with those groups."""
    found: dict[str, tuple[LocationGroup, ...]] = {}
    for name in settings.channels:
        channel = policy.channel(name)
        if channel.aggregates:
            found[name] = tuple(policy.groups[group] for group in channel.aggregates)
    return found


def aggregate_key(channel: str, group: str, sku: str) -> str:
    """The contributions topic's and the table's key: ``channel|group|sku``."""
    return KEY_SEPARATOR.join((channel, group, sku))


def register_aggregates(
    app: faust.App,
    settings: Settings,
    policy: ChannelPolicy,
    codec: Codec,
    outputs: Outputs,
    progress: health.Progress,
) -> None:
    """Declare the aggregates table and register both agents on ``app`` (nothing when no
    configured channel has aggregates). Registers the new topics' schemas now, so a registry
    refusing them stops start-up."""
    channels = aggregating_channels(settings, policy)
    if not channels:
        return
    from streams.app import _batched  # app.py imports this module: resolved at call time

    dead_letters = topics.DEAD_LETTERS.full_name(settings)
    table = app.Table(
        AGGREGATES_TABLE, partitions=settings.partitions, key_type=bytes, value_type=bytes
    )
    # the table's changelog offsets are then recorded per ticket (restart replays only past them)
    outputs.changelogs = outputs.changelogs | {table.changelog_topic.get_topic_name()}
    router = ContributionRouter(app, settings, codec, outputs, channels, dead_letters)
    folder = GroupFolder(settings, codec, table, outputs, policy, channels, dead_letters)
    codec.register_all([topics.GROUP_CONTRIBUTIONS, *map(topics.group_availability, channels)])
    progress.input_topics.update([*router.channels_by_topic, folder.topic])  # lag gauges

    app.agent(_raw_topic(app, *router.channels_by_topic), name="aggregate-contributions")(
        _batched(app, settings, outputs, (), progress, router.process)
    )
    app.agent(_raw_topic(app, folder.topic), name="aggregate-groups")(
        _batched(app, settings, outputs, (folder.store,), progress, folder.process)
    )
    log.info(
        "network aggregates: %s",
        "; ".join(f"{c}: {', '.join(g.name for g in gs)}" for c, gs in channels.items()),
    )


def _raw_topic(app: faust.App, *names: str) -> faust.TopicT:
    return app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def _letter(event: EventT, reason: str, detail: str) -> DeadLetter:
    message = event.message
    return dead_letter(
        reason,
        detail,
        message.topic,
        message.partition,
        message.offset,
        message.key if isinstance(message.key, bytes) else None,
        message.value if isinstance(message.value, bytes) else None,
    )


# --- agent 1: availability records -> contributions -------------------------------------------


class ContributionRouter:
    """Availability records in, one contribution per aggregate group of their location out."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        codec: Codec,
        outputs: Outputs,
        channels: Mapping[str, tuple[LocationGroup, ...]],
        dead_letters: str,
    ) -> None:
        self.app = app
        self.codec = codec
        self.outputs = outputs
        self.dead_letters = dead_letters
        self.contributions = topics.GROUP_CONTRIBUTIONS.full_name(settings)
        self.groups = dict(channels)
        self.channels_by_topic = {
            topics.availability(name).full_name(settings): name for name in channels
        }

    def process(self, events: Sequence[EventT], ticket: Ticket) -> list[EventT]:
        """Queue the contributions of ``events`` on ``ticket``; the events that may be acked
        once it completes."""
        current = owned(self.app, events)
        letters: list[DeadLetter] = []
        # the newest version per (channel, sku, location) of the batch: older ones would be
        # superseded in the table anyway
        newest: dict[tuple[str, str, str], Contribution] = {}
        for event in current:
            parsed = self._decode(event, letters)
            if parsed is None:
                continue
            ident, contribution = parsed
            kept = newest.get(ident)
            if kept is None or contribution.version > kept.version:
                newest[ident] = contribution
        for (channel, sku, location), contribution in newest.items():
            kind = location_type(location)
            for group in self.groups[channel]:
                if group.contains(location, kind):
                    self._emit(channel, group.name, sku, contribution, ticket)
        send_dead_letters(letters, self.codec, self.outputs, ticket, self.dead_letters)
        return current

    def _decode(
        self, event: EventT, letters: list[DeadLetter]
    ) -> tuple[tuple[str, str, str], Contribution] | None:
        message = event.message
        channel = self.channels_by_topic[message.topic]
        parsed = _decoded(self.codec, event, letters)
        if parsed is None:
            return None
        record, contribution = parsed
        sku, location = str(record["sku"]), contribution.location
        key = message.key.decode() if isinstance(message.key, bytes) else None
        if key != topics.make_key(sku, location):
            letters.append(_letter(event, "key_mismatch", f"key {key!r} is not {sku}|{location}"))
            return None
        if record["channel"] != channel:
            detail = f"record of channel {record['channel']!r} on {channel}'s topic"
            letters.append(_letter(event, "channel_mismatch", detail))
            return None
        return (channel, sku, location), contribution

    def _emit(
        self, channel: str, group: str, sku: str, contribution: Contribution, ticket: Ticket
    ) -> None:
        record = {"channel": channel, "group": group, "sku": sku} | contribution._asdict()
        value = self.codec.encode(topics.GROUP_CONTRIBUTIONS, record)
        key = aggregate_key(channel, group, sku).encode()
        self.outputs.produce(ticket, self.contributions, key, value)


# --- agent 2: contributions -> the table and group records -------------------------------------


class _Parsed(NamedTuple):
    key: bytes  # channel|group|sku
    channel: str
    group: str
    sku: str
    contribution: Contribution


@dataclass
class _Entry:
    """One aggregate being folded in this batch."""

    partition: int
    aggregate: GroupAggregate
    offset: int  # highest contributions-topic offset stored with it (-1: none)
    published: tuple[int, str, float] | None  # (offered, status, confidence) last published
    dirty: bool = False  # write it back (and its changelog record)
    republish: bool = False  # a redelivery: publish even if nothing changed


class GroupFolder:
    """Contributions in; the aggregates table and ``availability.<channel>.groups`` out."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        table: TableT,
        outputs: Outputs,
        policy: ChannelPolicy,
        channels: Mapping[str, tuple[LocationGroup, ...]],
        dead_letters: str,
    ) -> None:
        self.codec = codec
        self.table = table
        self.store = PartitionStore(table)
        self.outputs = outputs
        self.dead_letters = dead_letters
        self.topic = topics.GROUP_CONTRIBUTIONS.full_name(settings)
        self.groups = {name: frozenset(g.name for g in groups) for name, groups in channels.items()}
        self.thresholds: dict[str, Thresholds] = {
            name: policy.channel(name).thresholds for name in channels
        }
        self.outputs_by_channel = {
            name: topics.group_availability(name).full_name(settings) for name in channels
        }

    def process(self, events: Sequence[EventT], ticket: Ticket) -> list[EventT]:
        """Fold ``events`` into the table; queue the changelog records, the group records that
        changed and the dead letters on ``ticket``. Returns the events that may be acked once
        it completes."""
        current = owned(self.table.app, events)
        letters: list[DeadLetter] = []
        decoded = [(event, self._decode(event, letters)) for event in current]
        valid = [(event, parsed) for event, parsed in decoded if parsed is not None]
        loaded = self._load(valid)
        for event, parsed in valid:
            entry = loaded[parsed.key]
            offset = event.message.offset
            if offset <= entry.offset:  # redelivered: its effects may not all be durable
                entry.republish = entry.dirty = True
            if entry.aggregate.apply(parsed.contribution):
                entry.dirty = True
            entry.offset = max(entry.offset, offset)
        self._publish(loaded, ticket)  # sets what is published before the write stores it
        self._write(loaded, ticket)
        send_dead_letters(letters, self.codec, self.outputs, ticket, self.dead_letters)
        return current

    def _decode(self, event: EventT, letters: list[DeadLetter]) -> _Parsed | None:
        message = event.message
        parsed = _decoded(self.codec, event, letters, "group")
        if parsed is None:
            return None
        record, contribution = parsed
        channel, group, sku = str(record["channel"]), str(record["group"]), str(record["sku"])
        key = aggregate_key(channel, group, sku).encode()
        if message.key != key:
            letters.append(_letter(event, "key_mismatch", f"key {message.key!r} is not {key!r}"))
            return None
        if group not in self.groups.get(channel, ()):
            detail = f"channel {channel!r} does not aggregate group {group!r} (policy changed?)"
            letters.append(_letter(event, "unknown_group", detail))
            return None
        return _Parsed(key, channel, group, sku, contribution)

    def _load(self, valid: list[tuple[EventT, _Parsed]]) -> dict[bytes, _Entry]:
        """The stored aggregate of every key in ``valid`` (one multi-get per partition)."""
        by_partition: dict[int, set[bytes]] = {}
        for event, parsed in valid:
            by_partition.setdefault(event.message.partition, set()).add(parsed.key)
        loaded: dict[bytes, _Entry] = {}
        for partition, key_set in by_partition.items():
            keys = sorted(key_set)
            for key, value in zip(keys, self.store.get_many(partition, keys), strict=True):
                loaded[key] = _decode_entry(partition, value)
        return loaded

    def _publish(self, loaded: dict[bytes, _Entry], ticket: Ticket) -> None:
        for key, entry in loaded.items():
            channel, group, sku = key.decode().split(KEY_SEPARATOR, 2)
            summary = entry.aggregate.summary(self.thresholds[channel])
            shown = (summary.offered, summary.status, summary.confidence)
            if shown == entry.published and not entry.republish:
                continue
            entry.published, entry.dirty = shown, True
            record = _group_record(channel, group, sku, summary)
            value = self.codec.encode(topics.group_availability(channel), record)
            key_out = f"{group}{KEY_SEPARATOR}{sku}".encode()
            self.outputs.produce(ticket, self.outputs_by_channel[channel], key_out, value)

    def _write(self, loaded: dict[bytes, _Entry], ticket: Ticket) -> None:
        writes: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, entry in loaded.items():
            if entry.dirty:
                writes.setdefault(entry.partition, []).append((key, _encode_entry(entry)))
        changelog = self.store.changelog
        for partition, items in writes.items():
            self.store.put_many(partition, items)
            for key, value in items:
                self.outputs.produce(ticket, changelog, key, value, partition)


def _group_record(channel: str, group: str, sku: str, summary: GroupSummary) -> dict[str, Any]:
    return {"channel": channel, "group": group, "sku": sku} | summary._asdict()


def _encode_entry(entry: _Entry) -> bytes:
    return orjson.dumps(
        {"g": to_primitive(entry.aggregate), "o": entry.offset, "p": entry.published}
    )


def _decode_entry(partition: int, value: bytes | None) -> _Entry:
    if value is None:
        return _Entry(partition, GroupAggregate(), -1, None)
    data = orjson.loads(value)
    published = data["p"]
    return _Entry(
        partition,
        from_primitive(data["g"]),
        int(data["o"]),
        None if published is None else (int(published[0]), str(published[1]), float(published[2])),
    )


def _decoded(
    codec: Codec, event: EventT, letters: list[DeadLetter], *required: str
) -> tuple[dict[str, Any], Contribution] | None:
    """The record of ``event`` (an availability record or a contribution: both carry the
    contribution's fields) and its contribution, or None after adding the dead letter that says
    why not. ``required``: further fields that must be present."""
    message = event.message
    try:
        record = codec.decode(message.topic, message.value)
        for name in ("channel", "sku", *required):
            str(record[name])
        contribution = Contribution(
            str(record["location"]),
            int(record["offered"]),
            float(record["confidence"]),
            int(record["version"]),
            int(record["as_of"]),
        ).validate()
    except DecodeError as exc:
        letters.append(_letter(event, exc.reason, exc.detail))
        return None
    except InvalidContribution as exc:
        letters.append(_letter(event, exc.reason, str(exc)))
        return None
    except (KeyError, TypeError, ValueError) as exc:  # a record of some other schema
        letters.append(_letter(event, "invalid_record", f"{type(exc).__name__}: {exc}"))
        return None
    return record, contribution
