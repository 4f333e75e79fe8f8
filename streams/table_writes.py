"""Write a Faust table from a batch, on purpose and fast.

``table[key] = value`` needs a *current event* (it picks the changelog partition and, for
RocksDB, the partition store from it) and there is none inside ``stream.noack_take`` batches
(FAUST-FACTS 1). It also routes the changelog record through Faust's producer buffer, drained by
a background task one await per message, whose ``flush`` may return (after 0.1 s without
progress) while records are still buffered.

:func:`write_through` has the same effect — local store write in the event's partition, then
the changelog record for that partition — with the record handed straight to the Kafka producer
(``app.producer.send``: no Faust buffer, future message or sensor per record).
The caller's commit order is unchanged: offsets are committed after the producer is flushed.
Tested against both the memory and the RocksDB store (``tests/integration``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from faust.streams import _current_event
from faust.types import EventT, TableT


@contextmanager
def acting_for(event: EventT) -> Iterator[None]:
    """Within the block, Faust treats ``event`` as the task's current event."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


async def write_through(table: TableT, key: bytes, value: bytes, event: EventT) -> None:
    """``table[key] = value`` for a key that arrived on ``event``'s partition."""
    with acting_for(event):
        table.data[key] = value
    changelog = table.changelog_topic.get_topic_name()
    await table.app.producer.send(changelog, key, value, event.message.partition, None, None)
