"""Event time for Faust windowed tables: the window of a write is chosen by a field of the record.

Faust picks a windowed table's window with ``relative_to`` (``.value()`` and writes use it;
``.current()`` would ignore it). :class:`RecordTime` is such a function: the event being folded
is given the time in one ``timestamp-millis`` field of its decoded record, so windows follow event
time (a replay fills the same windows), not the record's arrival.
"""

from __future__ import annotations

from faust.types import EventT

from streams.codec import Codec


class RecordTime:
    """``relative_to`` for a windowed table fed by one agent: the agent calls :meth:`set` with
    the record it decoded before writing; a call about another event decodes that event's value
    (from ``topic``) for ``field``. Only inside the agent: Faust calls it with the current
    event, and None outside stream iteration raises."""

    def __init__(self, codec: Codec, topic: str, field: str) -> None:
        self.codec = codec
        self.topic = topic
        self.field = field
        self._event: EventT | None = None
        self._at = 0.0

    def set(self, event: EventT, millis: int | float) -> None:
        """``event`` (being folded) is at ``millis`` of event time."""
        self._event, self._at = event, float(millis) / 1000

    def __call__(self, event: EventT | None) -> float:
        if event is None:
            raise RuntimeError(f"windows by {self.field} are used only inside their agent")
        if self._event is not event:
            self.set(event, self.codec.decode(self.topic, event.value)[self.field])
        return self._at
