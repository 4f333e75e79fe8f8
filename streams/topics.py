"""Every Kafka topic invsync reads or writes, with its key, value schema and layout.

This is the one place topics are named. Input topics and table changelogs must share a partition
count (Faust raises ``PartitionsMismatch`` otherwise), so every topic here is created explicitly by
``invsync topics create`` before a worker starts; the broker never auto-creates one.

Keys are ``"<sku>|<location>"`` (UTF-8) on every position topic, so one position's events land on
the same partition of every input topic when producers use the murmur2 partitioner (Java's and
aiokafka's default; confluent-kafka producers must set ``partitioner=murmur2_random``).
Reservation events are keyed by ``reservation_id``; the reservations agent re-keys their effect
on reserved units by sku|location onto ``invsync.reserved-deltas``, which the fold consumes.
Transfers: the fold routes each TRANSFER_OUT's shipment notice to ``invsync.transfers``, keyed
by ``sku|destination``, and consumes that topic itself, so the units are in transit at the
destination's position (on whichever partition and worker it lives).
Network aggregates (:mod:`streams.aggregates`): availability records re-keyed by
``channel|group|sku`` onto ``invsync.group-contributions``, summed per group onto the compacted
``availability.<channel>.groups``, keyed ``group|sku``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import orjson

from invsync.settings import Settings
from state.events import KEY_SEPARATOR

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas" / "avro"


@dataclass(frozen=True)
class TopicSpec:
    """One topic: name (without the settings' prefix), what it carries, how it is laid out."""

    name: str
    schema: str  # file stem in schemas/avro
    key: str  # what the key holds, for people
    role: str  # input | output | error
    compacted: bool = False
    partitions: int | None = None  # None: settings.partitions (co-partitioned with the inputs)
    config: dict[str, str] = field(default_factory=dict)

    def full_name(self, settings: Settings) -> str:
        return settings.topic_prefix + self.name

    def cleanup_policy(self) -> str:
        return "compact" if self.compacted else "delete"

    def topic_config(self) -> dict[str, str]:
        base = {"cleanup.policy": self.cleanup_policy()}
        if self.compacted:
            base |= {"min.cleanable.dirty.ratio": "0.1", "segment.ms": "3600000"}
        return base | self.config


POS_SALES = TopicSpec("pos.sales", "pos_sale", "sku|location", "input")
WMS_MOVEMENTS = TopicSpec("wms.movements", "wms_movement", "sku|location", "input")
CYCLE_COUNTS = TopicSpec("inventory.counts", "cycle_count", "sku|location", "input")
RESERVATIONS = TopicSpec("reservations.events", "reservation_event", "reservation_id", "input")
ERP_SNAPSHOTS = TopicSpec("erp.snapshots", "erp_snapshot", "sku|location", "input")
RESERVED_DELTAS = TopicSpec("invsync.reserved-deltas", "reserved_delta", "sku|location", "internal")
# the fold's own input: shipment notices, keyed by the destination's sku|location
TRANSFERS = TopicSpec("invsync.transfers", "transfer_notice", "sku|location", "internal")
COUNT_DISCREPANCIES = TopicSpec(
    "invsync.count-discrepancies", "count_discrepancy", "location", "output"
)
ERP_STOCK_DELTAS = TopicSpec("erp.stock-deltas", "erp_stock_delta", "sku|location", "output")
# accuracy learning (streams/learning.py): every settled count re-keyed by location type, so one
# learner folds each type; the learned state per type, compacted (every worker reads all of it)
ACCURACY_EVIDENCE = TopicSpec(
    "invsync.accuracy-evidence", "count_discrepancy", "location_type", "internal"
)
ACCURACY = TopicSpec(
    "invsync.accuracy", "learned_accuracy", "location_type", "output", compacted=True
)
ERP_DRIFT = TopicSpec("erp.drift", "erp_drift", "sku|location", "output")
DEAD_LETTERS = TopicSpec("invsync.dead-letters", "dead_letter", "source topic", "error")

INPUTS = (POS_SALES, WMS_MOVEMENTS, CYCLE_COUNTS, RESERVATIONS, ERP_SNAPSHOTS)


@cache
def availability(channel: str) -> TopicSpec:
    """The compacted topic one channel subscribes to: latest availability per sku|location."""
    return TopicSpec(
        f"availability.{channel}", "availability_record", "sku|location", "output", compacted=True
    )


GROUP_CONTRIBUTIONS = TopicSpec(
    "invsync.group-contributions", "group_contribution", "channel|group|sku", "internal"
)


def group_availability(channel: str) -> TopicSpec:
    """The compacted topic of one channel's network aggregates: the latest sum per group|sku
    over the locations of each group in the channel's ``aggregates`` (streams/aggregates.py)."""
    return TopicSpec(
        f"availability.{channel}.groups", "group_availability", "group|sku", "output",
        compacted=True,
    )  # fmt: skip


def channel_changes(channel: str) -> TopicSpec:
    """Every new availability record of one policy channel, before its publisher decides what
    reaches ``availability.<channel>`` (streams/channel_publisher.py)."""
    return TopicSpec(
        f"invsync.changes.{channel}", "availability_record", "sku|location", "internal"
    )


def all_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic the deployment needs (table changelogs are created by the worker's app)."""
    outputs = [availability(channel) for channel in settings.channels]
    outputs += [channel_changes(channel) for channel in settings.channels]
    # aggregates: a groups topic for every channel, with aggregates in its policy or not, so the
    # catalogue stays a function of the settings (the policy file is not read here)
    outputs += [GROUP_CONTRIBUTIONS, *(group_availability(c) for c in settings.channels)]
    return [*INPUTS, RESERVED_DELTAS, TRANSFERS, *outputs, COUNT_DISCREPANCIES, ERP_STOCK_DELTAS,
            ERP_DRIFT, ACCURACY_EVIDENCE, ACCURACY, DEAD_LETTERS]  # fmt: skip


@cache
def schema_text(stem: str) -> str:
    """The Avro schema (JSON text) of ``schemas/avro/<stem>.avsc``, validated as JSON."""
    text = (SCHEMA_DIR / f"{stem}.avsc").read_text()
    orjson.loads(text)
    return text


def make_key(sku: str, location: str) -> str:
    return f"{sku}{KEY_SEPARATOR}{location}"


def split_key(key: str) -> tuple[str, str]:
    sku, sep, location = key.partition(KEY_SEPARATOR)
    if not sep or not sku or not location:
        raise ValueError(f"key {key!r} is not sku|location")
    return sku, location
