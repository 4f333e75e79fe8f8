"""The publisher of each channel defined in a policy file: from ``invsync.changes.<channel>``
(every new availability record the fold makes) to ``availability.<channel>`` (what the channel
sees): changes that matter, coalesced per key, within the channel's rate limit, transitions to
out-of-stock first (:mod:`state.publishing` decides; this module moves records and offsets).

Guarantee: at-least-once, in key order. An input record's offset is reported folded (and so
committable, :mod:`streams.offset_guard`) only when the record was published and acknowledged by
the broker, or when it needs no publishing: it does not matter to the channel, or a newer record
of the same key (a later offset of the same partition) replaced it. After a crash the waiting
records are consumed again; after a rebalance a worker drops what waits for partitions it lost
(their offsets were not committed: the new owner publishes them). A record can be published
twice (a crash after the broker acknowledged it, before the commit); readers keep the highest
``version`` per key, as the Redis read model does.

Back-pressure: records wait in memory, one per key; at most the number of keys of the
partitions this worker owns. A frontier held back by waiting records is not mistaken for a lost
record (the consumer's stuck-partition repair is told the wait is on purpose).

Limits: what was last sent per key is kept in memory only, so after a restart or a rebalance the
first record of each key is published whether it changed or not.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import faust
from faust.types import TP

from invsync.settings import Settings
from state.channel_policy import Channel, ChannelPolicy
from state.publishing import ChannelQueue, TokenBucket
from streams import metrics, topics
from streams.codec import Codec, DecodeError
from streams.consumer import PromptConsumer
from streams.delivery import Outputs

log = logging.getLogger(__name__)

DRAIN_INTERVAL_S = 0.1
Token = tuple[TP, int]


class ChannelPublisher:
    """One policy channel's queue, rate limit and topics."""

    def __init__(
        self, app: faust.App, settings: Settings, channel: Channel, codec: Codec, outputs: Outputs
    ) -> None:
        assert channel.confidence_step is not None
        self.app = app
        self.name = channel.name
        self.codec = codec
        self.outputs = outputs
        self.source = topics.channel_changes(channel.name).full_name(settings)
        self.target = topics.availability(channel.name).full_name(settings)
        self.queue: ChannelQueue[Token] = ChannelQueue(channel.confidence_step)
        rate = channel.rate_limit
        self.bucket = TokenBucket(rate, burst=max(1.0, rate or 0.0))
        self.generation: int | None = None
        metrics.CHANNEL_WAITING.labels(self.name).set_function(lambda: len(self.queue))

    @property
    def guard(self) -> Any:
        return cast(PromptConsumer, self.app.consumer).offset_guard

    def _release(self, tokens: list[Token]) -> None:
        guard = self.guard
        for tp, offset in tokens:
            guard.on_folded(tp, offset)
        if tokens:
            metrics.CHANNEL_RECORDS.labels(self.name, "coalesced").inc(len(tokens))

    async def consume(self, stream: faust.StreamT) -> None:
        """Offer every change to the queue; release at once what needs no publishing."""
        async for event in stream.events():
            message = event.message
            try:
                record = self.codec.decode(message.topic, message.value)
            except DecodeError as exc:  # our own topic: a bug, not input data
                log.error("undecodable change on %s at %s: %s", message.tp, message.offset, exc)
                self._release([(message.tp, message.offset)])
                continue
            self._release(
                self.queue.offer(message.key, record, message.value, (message.tp, message.offset))
            )

    async def drain(self) -> None:
        """Publish what the rate limit allows, wait for the broker, then release the offsets."""
        app = self.app
        assigned = {tp for tp in app.consumer.assignment() if tp.topic == self.source}
        generation = app.consumer_generation_id
        if generation != self.generation:  # a rebalance: what was sent may be another's now
            self.generation = generation
            self.queue.sent.clear()
        self.queue.drop(lambda token: token[0] in assigned)
        taken = self.queue.take(self.bucket.available(time.monotonic()))
        if taken:
            self.bucket.spend(len(taken))
            ticket = self.outputs.ticket()
            for key, value, _ in taken:
                self.outputs.produce(ticket, self.target, key, value)
            ticket.seal()
            try:
                await ticket.done
            except Exception as exc:
                log.critical("publishing to %s failed, stopping: %s", self.target, exc)
                await app.crash(exc)
                return
            guard = self.guard
            for _, _, (tp, offset) in taken:
                guard.on_folded(tp, offset)
            metrics.CHANNEL_RECORDS.labels(self.name, "published").inc(len(taken))
        guard = self.guard
        for tp in {token[0] for token in self.queue.tokens()}:
            guard.waited(tp)  # held on purpose, not lost in Faust's pipeline


def register_publishers(
    app: faust.App,
    settings: Settings,
    policy: ChannelPolicy,
    codec: Codec,
    outputs: Outputs,
) -> dict[str, str]:
    """A publisher agent and drain timer for every configured channel that publishes only
    changes that matter; returns the topic the fold writes each channel's records to."""
    targets = {}
    for name in settings.channels:
        channel = policy.channel(name)
        if channel.confidence_step is None:  # the built-in default: every version, directly
            targets[name] = topics.availability(name).full_name(settings)
            continue
        publisher = ChannelPublisher(app, settings, channel, codec, outputs)
        source = app.topic(publisher.source, key_type=bytes, value_type=bytes,
                           key_serializer="raw", value_serializer="raw")  # fmt: skip
        app.agent(source, name=f"publish-{name}")(publisher.consume)
        app.timer(DRAIN_INTERVAL_S, name=f"drain-{name}")(publisher.drain)
        targets[name] = publisher.source
    return targets
