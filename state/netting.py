"""Net stock deltas for the ERP: on-hand changes of settled events, netted per sku-location per
event-time window (tumbling, ``window_ms`` long).

Guarantees:

* **Final, then emitted.** Events settle in event-time order (:mod:`state.position`), so a
  window is complete once the position's horizon passes its end; only then is its delta
  emitted, with every settled change inside it netted, per reason code.
* **Deterministic ids.** ``delta_id`` is a UUID5 of the key and the window start, so a replay
  that folds the same events produces the same id and the same body. A late event (older than
  the horizon when it arrived) whose window was already emitted gets its own delta, with an id
  of the key, window and the event's identity.
* **Nothing netted away silently.** A window whose changes cancel out (net 0) is still emitted
  when any reason moved, so the ERP sees the movements behind a zero.

Limits: whether an event near the lateness bound is "late" depends on the watermark when it
arrived; a replay that reads the inputs in another interleaving can classify it differently, and
the ERP then sees the same id with another body (it answers 409; the dispatcher dead-letters it
with the reason — visible, not silent). Reservations change ``reserved``, not on hand: no deltas.
"""

from __future__ import annotations

import uuid
from typing import NamedTuple

from state.events import Kind, StockEvent

DEFAULT_WINDOW_MS = 300_000
_NAMESPACE = uuid.UUID("6f1c8f0e-2f51-4d0a-9a55-3c1c0e5b7a11")  # invsync ERP deltas


class ErpDelta(NamedTuple):
    delta_id: str
    sku: str
    location: str
    window_start: int  # UTC millis, inclusive
    window_end: int  # UTC millis, exclusive
    net_quantity: int
    reasons: dict[str, int]  # reason code -> net units

    def to_record(self) -> dict[str, object]:
        return self._asdict()


class OpenWindow(NamedTuple):
    """The window being netted: its start and net units per reason so far."""

    start: int
    reasons: tuple[tuple[str, int], ...]


def reason_of(event: StockEvent, change: int) -> str:
    """The ERP reason code of an on-hand change."""
    if event.kind is Kind.SALE:
        return "sale" if change < 0 else "return"
    if event.kind is Kind.COUNT:
        return "count_adjustment"
    return event.ref.lower() or "movement"


def window_start(at: int, window_ms: int) -> int:
    return at - at % window_ms


def delta_id(sku: str, location: str, start: int, late: tuple[str, str] | None = None) -> str:
    name = f"{sku}|{location}|{start}"
    if late is not None:
        name += f"|late|{late[0]}|{late[1]}"
    return str(uuid.uuid5(_NAMESPACE, name))


class Netting:
    """The netting of one position while it is open (see :class:`state.position.OpenPosition`)."""

    __slots__ = ("deltas", "key", "open", "window_ms")

    def __init__(self, open_window: OpenWindow | None, window_ms: int) -> None:
        self.window_ms = window_ms
        self.open = open_window
        self.key: tuple[str, str] | None = None  # (sku, location), from the first event folded
        self.deltas: list[ErpDelta] = []  # emitted, for the caller to take

    def settled(self, event: StockEvent, change: int, *, late: bool) -> None:
        """``event`` settled and changed on hand by ``change`` (late: applied past the horizon)."""
        if change == 0:
            return
        start = window_start(event.effective_at, self.window_ms)
        reason = reason_of(event, change)
        self.key = (event.sku, event.location)
        if late and (self.open is None or start != self.open.start):
            self._emit(start, {reason: change}, late=(event.source, event.event_id))
            return
        if self.open is not None and start != self.open.start:
            self._close()
        reasons = dict(self.open.reasons) if self.open is not None else {}
        reasons[reason] = reasons.get(reason, 0) + change
        self.open = OpenWindow(start, tuple(sorted(reasons.items())))

    def advance(self, horizon: int) -> None:
        """Emit the open window if the horizon passed its end."""
        if self.open is not None and horizon >= self.open.start + self.window_ms:
            self._close()

    def _close(self) -> None:
        assert self.open is not None
        self._emit(self.open.start, dict(self.open.reasons), late=None)
        self.open = None

    def _emit(self, start: int, reasons: dict[str, int], late: tuple[str, str] | None) -> None:
        if self.key is None:  # cannot happen: a window opens with an event of the key
            raise RuntimeError("netting window without a key")
        sku, location = self.key
        self.deltas.append(
            ErpDelta(
                delta_id(sku, location, start, late),
                sku,
                location,
                start,
                start + self.window_ms,
                sum(reasons.values()),
                reasons,
            )
        )
