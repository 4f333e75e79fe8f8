from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state.events import InvalidEvent
from state.reservations import (
    Action,
    ExpiryIndex,
    Outcome,
    Reservation,
    ReservationEvent,
    Status,
    apply_reservation,
    expire_due,
    forget,
    from_primitive,
    rebuild_index,
    reservation_from_record,
    to_primitive,
)

NEVER = -(2**62)
END_OF_TIME = 10**12


def ev(
    rid: str, action: str, at: int, eid: str = "", *, qty: int = 2, ttl: int = 100,
    sku: str = "sku1", loc: str = "store1", source: str = "oms",
) -> ReservationEvent:  # fmt: skip
    created = action == "created"
    return ReservationEvent(
        source, eid or f"{rid}-{action}-{at}", rid, Action(action), sku, loc, at,
        qty if created else 0, at + ttl if created else None,
    )  # fmt: skip


def run(*events: ReservationEvent, current: Reservation | None = None) -> Reservation | None:
    for event in events:
        current = apply_reservation(current, event).state
    return current


# --- decoding -------------------------------------------------------------------------------


def record(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "e1", "source": "oms", "sku": "sku1", "location": "store1",
        "occurred_at": 1_000, "reservation_id": "r1", "action": "created", "quantity": 2,
        "expires_at": 61_000, "channel": "bopis",
    }  # fmt: skip
    return base | overrides


def test_decodes_a_created_with_datetimes_to_exact_millis():
    at = datetime(2024, 3, 1, 12, 0, 0, 1_000, tzinfo=UTC)  # .001 s
    event = reservation_from_record(record(occurred_at=at, expires_at=at.replace(minute=5)))
    millis = 1_709_294_400_001
    assert event == ReservationEvent(
        "oms", "e1", "r1", Action.CREATED, "sku1", "store1", millis, 2, millis + 300_000, "bopis"
    )
    assert event.identity == ("oms", "e1")


def test_decodes_an_end_without_quantity_or_expiry():
    event = reservation_from_record(
        record(action="released", quantity=0, expires_at=None, channel=None)
    )
    assert (event.action, event.quantity, event.expires_at) == (Action.RELEASED, 0, None)


@pytest.mark.parametrize("field", ["event_id", "source", "sku", "location", "reservation_id"])
@pytest.mark.parametrize("value", [None, "", "  ", 7])
def test_missing_or_blank_ids_are_missing_key(field, value):
    with pytest.raises(InvalidEvent) as raised:
        reservation_from_record(record(**{field: value}))
    assert raised.value.reason == "missing_key"


def test_key_separator_in_sku_is_invalid_key():
    with pytest.raises(InvalidEvent) as raised:
        reservation_from_record(record(sku="a|b"))
    assert raised.value.reason == "invalid_key"


@pytest.mark.parametrize("action", ["cancelled", "CREATED", None, 3, ["created"]])
def test_unknown_action(action):
    with pytest.raises(InvalidEvent) as raised:
        reservation_from_record(record(action=action))
    assert raised.value.reason == "unknown_action"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"quantity": 0}, "invalid_quantity"),
        ({"quantity": -1}, "invalid_quantity"),
        ({"quantity": True}, "invalid_quantity"),
        ({"quantity": "2"}, "invalid_quantity"),
        ({"action": "released", "quantity": -2}, "invalid_quantity"),
        ({"expires_at": None}, "invalid_field"),
        ({"expires_at": 1_000}, "invalid_field"),
        ({"expires_at": 999}, "invalid_field"),
        ({"expires_at": "soon"}, "invalid_field"),
        ({"occurred_at": None}, "invalid_field"),
        ({"occurred_at": 1.5}, "invalid_field"),
        ({"channel": 5}, "invalid_field"),
    ],
)
def test_invalid_records(overrides, reason):
    with pytest.raises(InvalidEvent) as raised:
        reservation_from_record(record(**overrides))
    assert raised.value.reason == reason


# --- the lifecycle, one rule at a time ------------------------------------------------------


def test_created_opens_a_hold_with_a_positive_delta():
    step = apply_reservation(None, ev("r1", "created", 10, "c1", qty=3, ttl=50))
    assert step.outcome is Outcome.APPLIED
    assert step.state == Reservation(
        "r1", "sku1", "store1", 3, 10, 60, Status.OPEN, event_ids=(("oms", "c1"),)
    )
    assert step.delta is not None
    assert (step.delta.delta_id, step.delta.key, step.delta.quantity, step.delta.at) == (
        "r1:open", "sku1|store1", 3, 10
    )  # fmt: skip


def test_created_again_is_a_duplicate_under_the_same_or_another_event_id():
    created = ev("r1", "created", 10, "c1")
    hold = run(created)
    for again in (created, ev("r1", "created", 12, "c2", ttl=98)):
        step = apply_reservation(hold, again)
        assert (step.outcome, step.state, step.delta) == (Outcome.DUPLICATE, hold, None)


@pytest.mark.parametrize("changed", [{"qty": 5}, {"ttl": 7}, {"sku": "sku2"}, {"loc": "dc1"}])
def test_created_with_other_content_is_conflicting_create(changed):
    hold = run(ev("r1", "created", 10, "c1"))
    step = apply_reservation(hold, ev("r1", "created", 10, "c2", **changed))
    assert (step.outcome, step.reason, step.state, step.delta) == (
        Outcome.REJECTED, "conflicting_create", hold, None
    )  # fmt: skip


@pytest.mark.parametrize("action", ["released", "committed", "expired"])
def test_an_end_on_an_open_hold_releases_the_units_once(action):
    hold = run(ev("r1", "created", 10, "c1", qty=3))
    step = apply_reservation(hold, ev("r1", action, 40, "x1"))
    assert step.outcome is Outcome.APPLIED
    assert step.state is not None and step.delta is not None
    assert (step.state.status, step.state.ended_at) == (Status(action), 40)
    assert (step.delta.delta_id, step.delta.quantity, step.delta.at) == ("r1:end", -3, 40)
    again = apply_reservation(step.state, ev("r1", action, 40, "x1"))
    assert (again.outcome, again.state, again.delta) == (Outcome.DUPLICATE, step.state, None)


@pytest.mark.parametrize("action", ["released", "committed", "expired"])
def test_an_end_for_an_unknown_id_is_unknown_reservation(action):
    step = apply_reservation(None, ev("r1", action, 10))
    assert (step.outcome, step.reason, step.state, step.delta) == (
        Outcome.REJECTED, "unknown_reservation", None, None
    )  # fmt: skip


@pytest.mark.parametrize("first", ["released", "committed"])
@pytest.mark.parametrize("then", ["released", "committed", "expired"])
def test_an_end_after_a_release_or_commit_is_reservation_ended(first, then):
    ended = run(ev("r1", "created", 10, "c1"), ev("r1", first, 20, "x1"))
    step = apply_reservation(ended, ev("r1", then, 30, "x2"))
    assert (step.outcome, step.reason, step.state, step.delta) == (
        Outcome.REJECTED, "reservation_ended", ended, None
    )  # fmt: skip


def test_an_end_naming_another_sku_or_location_is_conflicting_end():
    hold = run(ev("r1", "created", 10, "c1"))
    for other in ({"sku": "sku2"}, {"loc": "dc1"}):
        step = apply_reservation(hold, ev("r1", "released", 20, "x1", **other))
        assert (step.outcome, step.reason, step.state) == (
            Outcome.REJECTED,
            "conflicting_end",
            hold,
        )


@pytest.mark.parametrize("action", ["released", "committed"])
def test_an_end_dated_at_or_after_expiry_is_too_late_even_before_stream_time_gets_there(action):
    hold = run(ev("r1", "created", 10, "c1", ttl=50))
    step = apply_reservation(hold, ev("r1", action, 60, "x1"))
    assert (step.outcome, step.reason, step.state) == (Outcome.REJECTED, "reservation_ended", hold)
    [expiry] = expire_due([hold], stream_time=60)
    assert expiry.state is not None and expiry.delta is not None
    assert (expiry.state.status, expiry.state.ended_at, expiry.delta.quantity) == (
        Status.EXPIRED, 60, -2
    )  # fmt: skip


@pytest.mark.parametrize("action", ["released", "committed"])
def test_an_end_after_expiry_on_a_hold_expired_by_stream_time_is_reservation_ended(action):
    hold = run(ev("r1", "created", 10, "c1", ttl=50))
    [expiry] = expire_due([hold], stream_time=80)
    step = apply_reservation(expiry.state, ev("r1", action, 70, "x1"))
    assert (step.outcome, step.reason, step.state) == (
        Outcome.REJECTED, "reservation_ended", expiry.state
    )  # fmt: skip


@pytest.mark.parametrize("action", ["released", "committed"])
def test_an_end_dated_before_expiry_arriving_after_it_takes_the_expirys_place(action):
    hold = run(ev("r1", "created", 10, "c1", ttl=50))
    [expiry] = expire_due([hold], stream_time=80)
    step = apply_reservation(expiry.state, ev("r1", action, 55, "x1"))
    assert (step.outcome, step.delta) == (Outcome.APPLIED, None)  # the units are already out
    direct = apply_reservation(hold, ev("r1", action, 55, "x1"))
    assert step.state == direct.state
    assert step.state is not None and (step.state.status, step.state.ended_at) == (
        Status(action),
        55,
    )


@pytest.mark.parametrize("at", [30, 60, 90])
def test_an_explicit_expiry_of_a_hold_expired_by_stream_time_is_already_expired(at):
    hold = run(ev("r1", "created", 10, "c1", ttl=50))
    [expiry] = expire_due([hold], stream_time=100)
    step = apply_reservation(expiry.state, ev("r1", "expired", at, "x1"))
    assert (step.outcome, step.delta) == (Outcome.ALREADY_EXPIRED, None)
    assert step.state == apply_reservation(hold, ev("r1", "expired", at, "x1")).state
    again = apply_reservation(step.state, ev("r1", "expired", at, "x1"))
    assert (again.outcome, again.state) == (Outcome.DUPLICATE, step.state)


def test_expire_due_ends_open_holds_at_or_before_stream_time_in_expiry_order():
    holds = [
        run(ev("r1", "created", 0, ttl=30)),
        run(ev("r2", "created", 0, ttl=10)),
        run(ev("r3", "created", 0, ttl=31)),
        run(ev("r4", "created", 0, ttl=5), ev("r4", "released", 1)),
    ]
    steps = expire_due([h for h in holds if h is not None], stream_time=30)
    assert [(s.state.reservation_id, s.state.ended_at) for s in steps if s.state] == [
        ("r2", 10), ("r1", 30)
    ]  # fmt: skip
    assert [s.delta.delta_id for s in steps if s.delta] == ["r2:end", "r1:end"]
    assert all(s.outcome is Outcome.APPLIED for s in steps)


def test_forget_waits_for_end_and_expiry_plus_retention():
    hold = run(ev("r1", "created", 0, "c1", ttl=100))
    assert hold is not None and not forget(hold, END_OF_TIME, retain_ms=0)
    released = run(ev("r1", "released", 20, "x1"), current=hold)
    assert released is not None
    assert not forget(released, 100 + 49, retain_ms=50)
    assert forget(released, 100 + 50, retain_ms=50)


def test_a_created_redelivered_after_forgetting_nets_zero_at_the_next_expiry():
    created = ev("r1", "created", 0, "c1", ttl=100)
    ended = run(created, ev("r1", "committed", 20, "x1"))
    assert ended is not None and forget(ended, 150, retain_ms=50)
    reopened = apply_reservation(None, created)
    assert reopened.state is not None and reopened.delta is not None
    [expiry] = expire_due([reopened.state], stream_time=150)
    assert expiry.delta is not None and reopened.delta.quantity + expiry.delta.quantity == 0


def test_primitive_round_trip_through_json():
    for hold in (
        run(ev("r1", "created", 0, "c1")),
        run(ev("r1", "created", 0, "c1"), ev("r1", "committed", 20, "x1")),
    ):
        assert hold is not None
        assert from_primitive(json.loads(json.dumps(to_primitive(hold)))) == hold
    with pytest.raises(ValueError):
        from_primitive([99, *to_primitive(hold)[1:]])


def test_expiry_index_pops_due_ids_skips_ended_ones_and_rebuilds():
    holds = {
        rid: run(ev(rid, "created", 0, ttl=ttl))
        for rid, ttl in (("a", 30), ("b", 10), ("c", 20), ("d", 40))
    }
    index = rebuild_index(h for h in holds.values() if h is not None)
    assert (len(index), index.next_due()) == (4, 10)
    released = run(ev("b", "released", 5), current=holds["b"])
    assert released is not None
    index.track(released)
    assert (len(index), index.next_due()) == (3, 20)
    assert index.pop_due(29) == ["c"]
    assert index.pop_due(29) == []
    assert index.pop_due(END_OF_TIME) == ["a", "d"]
    assert (len(index), index.next_due()) == (0, None)


def test_expiry_index_stays_small_when_holds_end_early():
    index = ExpiryIndex()
    for i in range(10_000):
        hold = run(ev(f"r{i}", "created", i, ttl=1_000))
        assert hold is not None
        index.track(hold)
        index.discard(hold.reservation_id)
    assert len(index) == 0 and len(index._heap) <= 64


# --- the reference model: the rules as a table, with reserved kept per hold -----------------

# (what the hold is, action, dated before expires_at) -> (outcome, reason, what it becomes)
RULES: dict[tuple[str, str, bool], tuple[str, str, str]] = {}
for _action in ("released", "committed", "expired"):
    for _in_time in (True, False):
        RULES["none", _action, _in_time] = ("rejected", "unknown_reservation", "none")
        for _ended in ("released", "committed"):
            RULES[_ended, _action, _in_time] = ("rejected", "reservation_ended", _ended)
    RULES["open", _action, True] = ("applied", "", _action)
    RULES["open", _action, False] = (
        ("applied", "", "expired") if _action == "expired"
        else ("rejected", "reservation_ended", "open")
    )  # fmt: skip
    RULES["expired_by_time", _action, True] = (
        "already_expired" if _action == "expired" else "applied", "", _action
    )  # fmt: skip
    RULES["expired_by_time", _action, False] = (
        ("already_expired", "", "expired_by_time") if _action == "expired"
        else ("rejected", "reservation_ended", "expired_by_time")
    )  # fmt: skip
    RULES["expired", _action, True] = RULES["expired", _action, False] = (
        ("already_expired", "", "expired") if _action == "expired"
        else ("rejected", "reservation_ended", "expired")
    )  # fmt: skip


@dataclass
class RefHold:
    key: tuple[str, str]
    quantity: int
    expires_at: int
    state: str = "open"  # open | released | committed | expired | expired_by_time
    ended_at: int | None = None
    seen: set[tuple[str, str]] = field(default_factory=set)


class Reference:
    def __init__(self) -> None:
        self.holds: dict[str, RefHold] = {}

    def apply(self, e: ReservationEvent) -> tuple[str, str]:
        hold = self.holds.get(e.reservation_id)
        if hold is not None and e.identity in hold.seen:
            return ("duplicate", "")
        if e.action == "created":
            if hold is None:
                assert e.expires_at is not None
                hold = RefHold((e.sku, e.location), e.quantity, e.expires_at)
                hold.seen.add(e.identity)
                self.holds[e.reservation_id] = hold
                return ("applied", "")
            same = (hold.key, hold.quantity, hold.expires_at) == (
                (e.sku, e.location), e.quantity, e.expires_at
            )  # fmt: skip
            return ("duplicate", "") if same else ("rejected", "conflicting_create")
        if hold is not None and hold.key != (e.sku, e.location):
            return ("rejected", "conflicting_end")
        expires_at = hold.expires_at if hold else 0
        outcome, reason, becomes = RULES[hold.state if hold else "none", e.action.value,
                                         e.occurred_at < expires_at]  # fmt: skip
        if hold is not None and outcome != "rejected":
            hold.seen.add(e.identity)
            if becomes != hold.state:
                hold.ended_at = min(e.occurred_at, expires_at)
            hold.state = "expired_by_time" if hold.ended_at == expires_at else becomes
        return (outcome, reason)

    def advance(self, stream_time: int) -> set[str]:
        due = {rid for rid, h in self.holds.items() if h.state == "open"}
        due = {rid for rid in due if self.holds[rid].expires_at <= stream_time}
        for rid in due:
            self.holds[rid].state = "expired_by_time"
            self.holds[rid].ended_at = self.holds[rid].expires_at
        return due

    def forget(self, stream_time: int, retain_ms: int) -> None:
        for rid, h in list(self.holds.items()):
            if h.ended_at is not None and stream_time - retain_ms >= max(h.ended_at, h.expires_at):
                del self.holds[rid]

    def reserved(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for h in self.holds.values():
            if h.state == "open":
                out["|".join(h.key)] += h.quantity
        return out

    def statuses(self) -> dict[str, tuple[str, int | None]]:
        return {
            rid: ("expired" if h.state == "expired_by_time" else h.state, h.ended_at)
            for rid, h in self.holds.items()
        }


# --- the lifecycle under random interleavings -----------------------------------------------


class Harness:
    """Drives the module the way the reservations agent will: apply, advance stream time to
    the event, expire what the index says is due; checks the invariants after every step."""

    def __init__(self, *, retain_ms: int | None = None, expire_first: bool = False) -> None:
        self.table: dict[str, Reservation] = {}
        self.index = ExpiryIndex()
        self.stream_time = NEVER
        self.reserved: Counter[str] = Counter()
        self.per_hold: Counter[str] = Counter()
        self.delta_ids: set[str] = set()
        self.accounted: list[ReservationEvent] = []
        self.op_outcomes: dict[int, Outcome] = {}
        self.reference = Reference()
        self.retain_ms = retain_ms
        self.expire_first = expire_first

    def _take(self, rid: str, step) -> None:
        if step.state is not None:
            self.table[rid] = step.state
            self.index.track(step.state)
        if step.delta is not None:
            assert self.retain_ms is not None or step.delta.delta_id not in self.delta_ids
            self.delta_ids.add(step.delta.delta_id)
            self.reserved[step.delta.key] += step.delta.quantity
            self.per_hold[rid] += step.delta.quantity
            assert self.reserved[step.delta.key] >= 0

    def event(self, event: ReservationEvent) -> Outcome:
        if self.expire_first:
            self.advance(max(self.stream_time, event.occurred_at))
        rid = event.reservation_id
        current = self.table.get(rid)
        step = apply_reservation(current, event)
        assert (step.outcome.value, step.reason) == self.reference.apply(event)
        if step.outcome in (Outcome.DUPLICATE, Outcome.REJECTED):
            assert step.state == current and step.delta is None
        if step.outcome is Outcome.ALREADY_EXPIRED:
            assert step.delta is None
        self._take(rid, step)
        again = apply_reservation(self.table.get(rid), event)
        if step.outcome is Outcome.REJECTED:
            assert again == step
        else:
            self.accounted.append(event)
            assert (again.outcome, again.state, again.delta) == (
                Outcome.DUPLICATE, self.table.get(rid), None
            )  # fmt: skip
        self.advance(max(self.stream_time, event.occurred_at))
        return step.outcome

    def redeliver(self, k: int) -> None:
        if not self.accounted:
            return
        event = self.accounted[k % len(self.accounted)]
        before = dict(self.table), Counter(self.reserved)
        if self.retain_ms is None:
            step = apply_reservation(self.table.get(event.reservation_id), event)
            assert step.outcome is Outcome.DUPLICATE
        self.event(event)
        if self.retain_ms is None:
            assert (dict(self.table), self.reserved) == before

    def advance(self, stream_time: int) -> None:
        self.stream_time = stream_time
        due = [self.table[rid] for rid in self.index.pop_due(stream_time)]
        steps = expire_due(due, stream_time)
        assert steps == expire_due(self.table.values(), stream_time)  # the index misses nothing
        expired = {s.state.reservation_id for s in steps if s.state is not None}
        assert expired == self.reference.advance(stream_time)
        for step in steps:
            assert step.state is not None
            self._take(step.state.reservation_id, step)
        if self.retain_ms is not None:
            for rid, hold in list(self.table.items()):
                if forget(hold, stream_time, self.retain_ms):
                    del self.table[rid]
                    self.per_hold.pop(rid, None)
            self.reference.forget(stream_time, self.retain_ms)
        self.check()

    def check(self) -> None:
        open_holds = [h for h in self.table.values() if h.is_open]
        by_key: Counter[str] = Counter()
        for hold in open_holds:
            by_key[f"{hold.sku}|{hold.location}"] += hold.quantity
            assert hold.expires_at > self.stream_time, "a hold outlived its expiry"
        assert +self.reserved == by_key == self.reference.reserved()
        assert min(self.reserved.values(), default=0) >= 0
        assert len(self.index) == len(open_holds)
        for rid, hold in self.table.items():
            assert self.per_hold[rid] == (hold.quantity if hold.is_open else 0)
        assert {rid: (h.status.value, h.ended_at) for rid, h in self.table.items()} == (
            self.reference.statuses()
        )


RIDS = ("r0", "r1", "r2", "r3", "r4", "r5")  # r0 and r4, r1 and r5 share a (sku, location)
SKUS = ("sku1", "sku2")
LOCATIONS = ("store1", "dc1")
TTLS = (1, 30, 60, 100)
ENDS = ("released", "committed", "expired", "created", "conflicting_create", "other_key")


@st.composite
def scenarios(draw):
    """A pool of distinct events (ids unique) and a run over it. Each reservation gets a created
    and up to three more events dated around its expiry; a stray id gets ends only. Deliveries
    follow event time with jitter (so some arrive after stream time passed them), some are lost,
    and redeliveries and stream-time advances fall in between."""
    pool: list[ReservationEvent] = []

    def add(rid: str, action: str, at: int, **kwargs) -> None:
        source = draw(st.sampled_from(["oms", "web"]))
        pool.append(ev(rid, action, at, f"e{len(pool)}", source=source, **kwargs))

    for r, rid in enumerate(RIDS):
        t0, ttl, qty = (
            draw(st.integers(0, 200)),
            draw(st.sampled_from(TTLS)),
            draw(st.integers(1, 3)),
        )
        hold = {"qty": qty, "sku": SKUS[r % 2], "loc": LOCATIONS[r // 2 % 2]}
        add(rid, "created", t0, ttl=ttl, **hold)
        for _ in range(draw(st.integers(0, 3))):
            kind, at = draw(st.sampled_from(ENDS)), t0 + draw(st.integers(0, 120))
            if kind == "created":  # the same hold under another event id
                add(rid, "created", t0, ttl=ttl, **hold)
            elif kind == "conflicting_create":
                add(rid, "created", at, ttl=ttl, **(hold | {"qty": qty + 1}))
            elif kind == "other_key":
                add(rid, "released", at, **(hold | {"sku": "sku9"}))
            else:
                add(rid, kind, at, **hold)
    for _ in range(draw(st.integers(0, 2))):
        add("r9", draw(st.sampled_from(ENDS[:3])), draw(st.integers(0, 300)))

    jitter = draw(st.lists(st.integers(0, 60), min_size=len(pool), max_size=len(pool)))
    order = sorted(range(len(pool)), key=lambda i: pool[i].occurred_at + jitter[i])
    between = st.one_of(
        st.tuples(st.just("redeliver"), st.integers(0, 100)),
        st.tuples(st.just("advance"), st.integers(0, 80)),
    )
    ops: list[tuple[str, int]] = []
    for i in order:
        ops.extend(draw(st.lists(between, max_size=1)))
        if draw(st.integers(0, 9)):  # one in ten is never delivered
            ops.append(("event", i))
    return pool, ops


def play(pool, ops, **harness_options) -> Harness:
    harness = Harness(**harness_options)
    for i, (kind, arg) in enumerate(ops):
        if kind == "event":
            harness.op_outcomes[i] = harness.event(pool[arg])
        elif kind == "redeliver":
            harness.redeliver(arg)
        elif kind == "tick":
            harness.advance(max(harness.stream_time, arg))
        else:
            harness.advance(max(harness.stream_time, 0) + arg)
    harness.advance(END_OF_TIME)
    assert not harness.reserved.total() and not any(h.is_open for h in harness.table.values())
    return harness


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_random_interleavings_never_leak_never_go_negative_and_agree_with_the_reference(scenario):
    play(*scenario)


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.sampled_from([0, 20, 200]))
def test_forgetting_ended_reservations_keeps_reserved_exact(scenario, retain_ms):
    play(*scenario, retain_ms=retain_ms)


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_expiring_before_or_after_applying_an_event_gives_the_same_holds(scenario):
    after = play(*scenario)
    before = play(*scenario, expire_first=True)
    assert before.table == after.table
    assert before.delta_ids == after.delta_ids


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_rejected_events_have_no_effect(scenario):
    pool, ops = scenario
    full = play(pool, ops)
    # a rejected event still moved stream time: replace it by just that
    kept = [
        ("tick", pool[op[1]].occurred_at) if full.op_outcomes.get(i) is Outcome.REJECTED else op
        for i, op in enumerate(ops)
    ]
    without = play(pool, kept)
    assert (without.table, without.reserved, without.accounted) == (
        full.table, full.reserved, full.accounted
    )  # fmt: skip
