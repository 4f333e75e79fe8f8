"""``invsync simulate``: a realistic stream of POS sales, cycle counts, WMS movements and
reservations for the input topics.

What the stream models
----------------------
* **Network.** Stores ``S001``... and distribution centres ``DC01``...; SKUs ``SKU00001``... with
  Zipf-like popularity (exponent :data:`ZIPF_EXPONENT`, ranks shuffled by the seed) and stores of
  unequal size (log-normal weights). Each store is replenished from one DC, each DC from a supplier.
* **Hidden true stock** per sku-location, starting at a plausible level (days of cover of its
  expected demand: sales, and at a DC also its stores' and its online orders'). It falls with
  sales, picks and shrink, rises with returns, and is replenished (order-up-to) when it falls to
  a reorder point, after a lead time. Nobody sees it except through the events below.
* **POS sales** only at stores, as a non-homogeneous Poisson process in *simulated event time*:
  :attr:`SimulationConfig.sales_per_second` on average over the network, following a daily cycle
  (UTC hours; little at night, peaks at midday and in the evening, peak ~1.9x the mean). Basket
  quantities are mostly 1. A customer cannot buy what is not on the shelf: a sale is capped at the
  true stock, and at 0 it is a lost sale (no event) -- so phantom stock shows up as a key that
  stops selling. ~2% of POS events are returns (negative quantity, back on the shelf).
* **WMS movements** (``wms.movements``, key ``sku|location``, source ``wms-<location>``; off with
  ``wms=False``). Replenishment: a DC ships a store's order at once (``TRANSFER_OUT`` at the DC,
  ``counterpart_location`` the store, a fresh ``transfer_id``) and the store books the units
  under the same ``transfer_id`` (``counterpart_location`` the DC) when they arrive 12-36 h
  later (``TRANSFER_IN``): in between they are in transit (in neither location's hidden stock;
  invsync tracks them at the store). ~3% of transfers arrive short by 1-2 units
  (:data:`SHORT_RECEIPT_SHARE`: the store books and gets what arrived) and ~0.5% never arrive
  (:data:`TRANSIT_LOSS_SHARE`: no ``TRANSFER_IN``; the store reorders when it should have
  arrived); invsync expires those after ``INVSYNC_TRANSFER_TIMEOUT_MS``. A DC's own
  orders arrive from the supplier after 3-5 days (``RECEIPT``). Online orders shipped from a DC
  leave as one ``PICK`` (~70%) or ``SHIP`` -- never both, as both take units off on hand.
  Shrink: ~30% of store shrink is written off as ``DAMAGE`` (the rest is unrecorded theft); a DC
  loses a unit in ~0.3% of shipments, ~60% booked as ``DAMAGE`` and the rest found later by an
  ``ADJUSTMENT`` (negative; a count of the key books it instead). Housekeeping, at
  :attr:`SimulationConfig.movements_per_second` (flatter daily cycle): ``DAMAGE`` at stores and
  DCs, ``ADJUSTMENT`` (the oldest unrecorded DC loss, or mis-slotted units found: positive), and
  ~2% ``RELOCATE`` -- a type invsync does not know, dead-lettered (``unknown_movement_type``).
* **Reservations** (``reservations.events``, key ``reservation_id``, source ``oms``, channel
  ``web``): online order lines at :attr:`SimulationConfig.reservations_per_second` (flatter
  daily cycle), ~75% at a DC, ~25% click & collect at a store, quantity 1-3. An order is taken
  only if the location has the units free of other holds (else lost, no event). ``created`` has
  ``expires_at`` 15-60 min later; then ~85% ``committed`` and ~10% ``released``, at least
  :data:`RESERVATION_MIN_END_MS` after creation (so the out-of-order fault never puts an end
  before its ``created``) and before the expiry; ~5% get no end event and expire. A commit is
  followed by the units leaving: a ``PICK``/``SHIP`` at the DC 10 min-3 h later, or a POS sale
  at the store at pick-up 30 min-6 h later (capped at the true stock: a short pick).
  ~1% of order arrivals are instead a ``released`` for a reservation id nobody created
  (dead-lettered, ``unknown_reservation``).
* **Cycle counts** (``inventory.counts``), as-of snapshots of the true stock with occasional
  miscount noise (never negative), reported a few minutes after counting
  (``counted_at <= occurred_at``):
  an *opening* wall-to-wall count of every key just before the first sale (so the worker starts
  from a known position; :attr:`SimulationConfig.opening_counts`), *periodic* counts (every key of
  a store every ~:data:`STORE_COUNT_DAYS` days, of a DC every ~:data:`DC_COUNT_DAYS` days, spread
  round-robin over time; less often for large assortments, so that periodic counts stay below
  ~5% of the sales rate), and, only without the WMS stream (which then does not tell the worker
  about receipts), a *verification count* shortly after each replenishment receipt.
* **Transport faults**, applied to the whole stream above (every topic): with probability
  ``duplicate_share`` an output slot re-sends a record produced in the last few simulated minutes,
  byte-identical; with probability ``out_of_order_share`` a record is held back and sent after
  later ones (up to :data:`MAX_HOLD_MS` of simulated time); with probability ``poison_share`` a
  slot carries bytes that are not Confluent-wire-format Avro (random bytes, an unknown schema id,
  a truncated header, JSON) on the topic and under the key of a recent record. Together,
  event-time disorder stays inside the default 10-minute lateness bound.

Record kinds (:data:`KINDS`): ``sale``, ``return``, ``count``, ``movement``, ``reservation``,
``invalid`` (the deliberately bad ``RELOCATE`` movements and unknown-id releases), ``duplicate``
and ``poison``.

Limits
------
* Shrink is never quarantined (no ``QUARANTINE``), supplier receipts always match what was
  ordered, a transfer is received at most once (never over), a reservation never ends late
  (after its expiry) or twice, and no explicit ``expired`` event is sent.
* One time zone (UTC) for every store; no weekly or seasonal pattern, no promotions, no scan
  errors (one SKU scanned as another), no assortment changes.
* Event time runs at the simulated pace regardless of the produce rate: at the defaults the
  network produces ~1.4 events per simulated second (1 POS sale, 0.1 online order lines with
  their ends and picks, movements), so 100,000 events span about 18 hours that start one day ago
  (``start_ms=None``). Much longer runs run into the future.

:func:`generate` is pure and deterministic (same config, same records; no Kafka). Pass
``start_ms`` explicitly for a reproducible stream: with ``None`` it depends on the wall clock.
:func:`run` produces it to Kafka.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from invsync.settings import Settings
from streams import records
from streams.topics import (
    CYCLE_COUNTS,
    ERP_SNAPSHOTS,
    POS_SALES,
    RESERVATIONS,
    WMS_MOVEMENTS,
    TopicSpec,
    make_key,
)

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

# --- the model's tunables (not CLI options) -------------------------------------------------
ZIPF_EXPONENT = 1.0
STORE_SIZE_SIGMA = 0.4  # log-normal spread of store sizes
RETURN_SHARE = 0.02  # share of POS events that are returns
BASKET_QUANTITIES = (1, 2, 3, 4, 5, 6)
BASKET_CUM_WEIGHTS = (0.80, 0.93, 0.97, 0.985, 0.995, 1.0)
MEAN_UNITS_PER_SALE = 1.3
SHRINK_PER_SALE = 0.01  # chance a store sale is followed by an unrecorded loss at that store
DC_SHRINK_PER_SHIPMENT = 0.003
STORE_COVER_DAYS = (3.0, 5.0)  # order-up-to level, in days of expected demand
STORE_REORDER_DAYS = 1.5
STORE_LEAD_MS = (12 * HOUR_MS, 36 * HOUR_MS)
DC_COVER_DAYS = (12.0, 16.0)
DC_REORDER_DAYS = 6.0
DC_LEAD_MS = (3 * DAY_MS, 5 * DAY_MS)
STORE_COUNT_DAYS = 7.0
DC_COUNT_DAYS = 14.0
MAX_PERIODIC_COUNT_SHARE = 0.05  # large assortments: periodic counts capped at 5% of sales
STORE_MISCOUNT = 0.08  # chance a store count is off
DC_MISCOUNT = 0.01
REPORT_DELAY_MS = (30 * SECOND_MS, 4 * MINUTE_MS)  # counted_at -> occurred_at
ERP_SNAPSHOT_AT_MS = 2 * HOUR_MS  # the ERP's nightly snapshot of DC stock, as of 02:00 UTC ...
ERP_SNAPSHOT_DELAY_MS = HOUR_MS  # ... reported an hour later
ERP_ERROR_SHARE = 0.02  # snapshots where the ERP missed a booking of 1-3 units (drift)
VERIFY_DELAY_MS = (10 * MINUTE_MS, 60 * MINUTE_MS)  # receipt -> verification count
OPENING_COUNT_LEAD_MS = 4 * MINUTE_MS  # opening counts: counted_at = start - this
MIN_HOLD_MS = SECOND_MS
MAX_HOLD_MS = 5 * MINUTE_MS  # out-of-order delay bound (inside the 10-minute lateness bound)
DUPLICATE_WINDOW_MS = 5 * MINUTE_MS  # duplicates re-send a record at most this old
RECENT_MAX = 4096
UNKNOWN_SCHEMA_ID = 0x7FFFFFFF
# WMS movements (besides receipts and transfers, which follow from replenishment)
STORE_DAMAGE_SHARE = 0.3  # share of store shrink written off as DAMAGE (the rest: unrecorded theft)
DC_DAMAGE_SHARE = 0.6  # DC handling losses recorded as DAMAGE; the rest is found by an ADJUSTMENT
DC_PICK_SHARE = 0.7  # order lines a DC reports as PICK, the rest as SHIP: one decrement, never both
SHORT_RECEIPT_SHARE = 0.03  # transfers that arrive 1-2 units short (lost or stolen on the way)
TRANSIT_LOSS_SHARE = 0.005  # transfers that never arrive (no TRANSFER_IN)
HOUSEKEEPING_MIX = (("damage_store", 0.30), ("damage_dc", 0.30), ("adjustment", 0.38),
                    ("unknown", 0.02))  # fmt: skip
UNKNOWN_MOVEMENT_TYPE = "RELOCATE"  # a bin-to-bin move invsync does not know: dead-lettered
# Reservations (online order lines)
ONLINE_FLAT = 0.4  # online orders follow a flatter daily cycle than stores: FLAT + (1-FLAT)*demand
HOUSEKEEPING_FLAT = 0.5
STORE_PICKUP_SHARE = 0.25  # click & collect at a store (committed -> a POS sale at pick-up)
ORDER_QUANTITIES = (1, 2, 3)
ORDER_CUM_WEIGHTS = (0.75, 0.95, 1.0)
MEAN_ORDER_QUANTITY = 1.3
RESERVATION_TTL_MS = (15 * MINUTE_MS, 60 * MINUTE_MS)  # created -> expires_at
COMMIT_SHARE = 0.85
RELEASE_SHARE = 0.10  # the rest (~5%) is left to expire: no end event
# An end comes at least this long after its created, so the out-of-order fault (which holds a
# record back at most MAX_HOLD_MS) never makes it arrive before the created.
RESERVATION_MIN_END_MS = MAX_HOLD_MS + MINUTE_MS
RESERVATION_END_MEAN_EXTRA_MS = 3 * MINUTE_MS  # mean of the exponential wait after the minimum
UNKNOWN_RELEASE_SHARE = 0.01  # per order arrival: a release for a reservation nobody created
DC_FULFIL_DELAY_MS = (10 * MINUTE_MS, 3 * HOUR_MS)  # committed -> PICK/SHIP at the DC
STORE_PICKUP_DELAY_MS = (30 * MINUTE_MS, 6 * HOUR_MS)  # committed -> POS sale at the store
ORDER_CHANNEL = "web"
OMS_SOURCE = "oms"

# Hourly (UTC) demand profile; normalised to mean 1 and interpolated linearly.
_HOURLY = (
    0.04, 0.02, 0.02, 0.02, 0.03, 0.06, 0.15, 0.35, 0.65, 0.95, 1.20, 1.50,
    1.75, 1.70, 1.45, 1.30, 1.40, 1.65, 1.85, 1.75, 1.35, 0.90, 0.45, 0.15,
)  # fmt: skip
_MEAN = sum(_HOURLY) / len(_HOURLY)
DAILY_PROFILE = tuple(weight / _MEAN for weight in _HOURLY)
PEAK_FACTOR = max(DAILY_PROFILE)

# "invalid": deliberately bad records (a release for an unknown reservation, an unknown movement
# type) that decode but must be dead-lettered.
KINDS = (
    "sale", "return", "count", "movement", "reservation", "invalid", "duplicate", "poison",
)  # fmt: skip


def demand_factor(at_ms: float) -> float:
    """Relative demand (mean 1 over a day) at simulated time ``at_ms`` (UTC)."""
    hours = (at_ms % DAY_MS) / HOUR_MS
    hour = int(hours)
    frac = hours - hour
    return DAILY_PROFILE[hour] * (1 - frac) + DAILY_PROFILE[(hour + 1) % 24] * frac


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate and how fast to produce it.

    ``events`` counts output records (duplicates and poison included; 0 = endless); ``rate`` is
    the produce rate in events per wall-clock second (0 = unthrottled). ``sales_per_second`` is
    the network's mean POS events per *simulated* second: it sets how fast event time advances.

    ``wms`` publishes WMS movements (receipts, transfers, picks/ships, damage, adjustments);
    ``movements_per_second`` is the mean rate of the *housekeeping* ones (DAMAGE, ADJUSTMENT and
    a few of an unknown type) per simulated second -- receipts, transfers and order picks follow
    from sales and orders. ``reservations_per_second`` is the mean rate of online order lines
    (each a reservation ``created``, mostly followed by its end) per simulated second; 0 = none.
    """

    events: int = 100_000
    rate: float = 2_000.0
    skus: int = 500
    stores: int = 20
    dcs: int = 2
    duplicate_share: float = 0.01
    out_of_order_share: float = 0.02
    poison_share: float = 0.001
    seed: int = 7
    start_ms: int | None = None  # simulated start (UTC millis); None = now minus one day
    sales_per_second: float = 1.0
    opening_counts: bool = True
    wms: bool = True
    movements_per_second: float = 0.02
    reservations_per_second: float = 0.1
    erp_snapshots: bool = True

    def __post_init__(self) -> None:
        _require(self.events >= 0, "events", "must be >= 0 (0 = endless)")
        _require(math.isfinite(self.rate) and self.rate >= 0, "rate", "must be >= 0")
        for name in ("skus", "stores", "dcs"):
            _require(getattr(self, name) >= 1, name, "must be >= 1")
        for name in ("duplicate_share", "out_of_order_share", "poison_share"):
            value = getattr(self, name)
            _require(0 <= value < 1, name, f"must be in [0, 1), got {value}")
        _require(
            self.duplicate_share + self.poison_share < 1,
            "duplicate_share",
            "duplicate_share + poison_share must be < 1",
        )
        _require(
            math.isfinite(self.sales_per_second) and self.sales_per_second > 0,
            "sales_per_second",
            "must be > 0",
        )
        for name in ("movements_per_second", "reservations_per_second"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0, name, f"must be >= 0, got {value}")
        _require(self.start_ms is None or self.start_ms >= 0, "start_ms", "must be >= 0")

    def topics(self) -> list[TopicSpec]:
        """The topics this configuration produces to."""
        specs = [POS_SALES, CYCLE_COUNTS]
        if self.wms:
            specs.append(WMS_MOVEMENTS)
        if self.reservations_per_second > 0:
            specs.append(RESERVATIONS)
        if self.erp_snapshots:
            specs.append(ERP_SNAPSHOTS)
        return specs

    def resolved_start_ms(self) -> int:
        if self.start_ms is not None:
            return self.start_ms
        return int(time.time() * 1000) - DAY_MS


def _require(ok: bool, option: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{option}: {message}")


@dataclass(frozen=True, slots=True)
class SimRecord:
    """One output record. ``value`` is the Avro record as a dict (timestamps as int millis);
    ``raw`` is set only for poison (and ``value`` is then None). ``delay_ms`` > 0 marks a record
    held back and sent out of order (by that much simulated time)."""

    spec: TopicSpec
    key: str
    value: dict[str, Any] | None
    raw: bytes | None = None
    kind: str = "sale"
    delay_ms: int = 0


# --- the world: hidden stock, sales, replenishment, orders, counts ------------------------------


@dataclass(slots=True)
class _Stock:
    units: int
    reorder_point: int
    order_up_to: int
    on_order: bool = False
    promised: int = 0  # units held by open reservations or committed and not yet picked


@dataclass(frozen=True, slots=True)
class _Hold:
    """A reservation the world created (its end, pick or expiry is scheduled)."""

    reservation_id: str
    sku: int
    loc: int
    quantity: int
    expires_at: int


@dataclass(order=True, slots=True)
class _Action:
    at: int
    seq: int
    kind: str = field(compare=False)  # see _World._handle
    payload: Any = field(compare=False)


class _World:
    """The network and its hidden stock; :meth:`records` yields primary records in event time."""

    def __init__(self, config: SimulationConfig, start_ms: int) -> None:
        self.config = config
        self.start_ms = start_ms
        self.run_tag = f"{config.seed}-{start_ms}"
        self.rng = random.Random(f"invsync-simulate-world-{config.seed}")
        self.skus = [f"SKU{i:05d}" for i in range(1, config.skus + 1)]
        self.stores = [f"S{i:03d}" for i in range(1, config.stores + 1)]
        self.dcs = [f"DC{i:02d}" for i in range(1, config.dcs + 1)]
        self.locations = self.stores + self.dcs
        self.sku_share = self._zipf_shares(config.skus)
        self.sku_cum = list(accumulate(self.sku_share))
        sizes = [self.rng.lognormvariate(0, STORE_SIZE_SIGMA) for _ in self.stores]
        self.store_share = [size / sum(sizes) for size in sizes]
        self.store_cum = list(accumulate(self.store_share))
        self.units_per_day = config.sales_per_second * 86_400 * MEAN_UNITS_PER_SALE
        self.order_units_per_day = (
            config.reservations_per_second * 86_400 * MEAN_ORDER_QUANTITY * COMMIT_SHARE
        )
        self.stock: dict[tuple[int, int], _Stock] = {}
        self.actions: list[_Action] = []
        self.seq = 0
        self.counters: Counter[str] = Counter()
        self.lost_sales = 0
        self.lost_orders = 0  # online orders not taken: not enough free stock at the location
        self.short_picks = 0  # committed units not on the shelf when picked
        # what happens to a transfer on the way: its own generator, so the rest of the stream
        # does not depend on these draws
        self.transit_rng = random.Random(f"invsync-simulate-transit-{config.seed}")
        self.transfers_short = 0
        self.transfers_lost = 0
        self.count_order = [self._permutation(config.skus) for _ in self.locations]
        self.count_cursor = [0] * len(self.locations)
        self.dc_drift: dict[tuple[int, int], int] = {}  # DC losses not recorded yet, oldest first
        self.housekeeping_cum = list(accumulate(weight for _, weight in HOUSEKEEPING_MIX))

    # -- set-up ----------------------------------------------------------------------------------

    def _zipf_shares(self, n: int) -> list[float]:
        ranks = list(range(1, n + 1))
        self.rng.shuffle(ranks)
        weights = [1.0 / rank**ZIPF_EXPONENT for rank in ranks]
        total = sum(weights)
        return [w / total for w in weights]

    def _permutation(self, n: int) -> list[int]:
        order = list(range(n))
        self.rng.shuffle(order)
        return order

    def _is_store(self, loc: int) -> bool:
        return loc < len(self.stores)

    def _dc_of(self, store: int) -> int:
        return len(self.stores) + store % len(self.dcs)

    def _daily_demand(self, sku: int, loc: int) -> float:
        """Expected units per day out of ``loc``: sales and click & collect at a store; at a DC,
        what its stores sell plus its share of the online orders it ships."""
        store_units = self.units_per_day + self.order_units_per_day * STORE_PICKUP_SHARE
        if self._is_store(loc):
            return store_units * self.sku_share[sku] * self.store_share[loc]
        served = sum(s for i, s in enumerate(self.store_share) if self._dc_of(i) == loc)
        shipped = self.order_units_per_day * (1 - STORE_PICKUP_SHARE) / len(self.dcs)
        return (store_units * served + shipped) * self.sku_share[sku]

    def _state(self, sku: int, loc: int) -> _Stock:
        stock = self.stock.get((sku, loc))
        if stock is None:
            stock = self._initial_stock(sku, loc)
            self.stock[(sku, loc)] = stock
        return stock

    def _initial_stock(self, sku: int, loc: int) -> _Stock:
        daily = self._daily_demand(sku, loc)
        if self._is_store(loc):
            cover, reorder_days, floor = self.rng.uniform(*STORE_COVER_DAYS), STORE_REORDER_DAYS, 4
        else:
            cover, reorder_days, floor = self.rng.uniform(*DC_COVER_DAYS), DC_REORDER_DAYS, 20
        order_up_to = max(floor, round(daily * cover))
        reorder_point = min(order_up_to - 1, max(1, round(daily * reorder_days)))
        units = self.rng.randint(reorder_point + 1, order_up_to)
        return _Stock(units, reorder_point, order_up_to)

    def _random_sku(self) -> int:
        """A SKU drawn by popularity."""
        return min(
            bisect.bisect(self.sku_cum, self.rng.random() * self.sku_cum[-1]), len(self.skus) - 1
        )

    def _random_store(self) -> int:
        """A store drawn by size."""
        store = bisect.bisect(self.store_cum, self.rng.random() * self.store_cum[-1])
        return min(store, len(self.stores) - 1)

    def _random_dc(self) -> int:
        return len(self.stores) + self.rng.randrange(len(self.dcs))

    # -- the event loop --------------------------------------------------------------------------

    def records(self) -> Iterator[tuple[int, SimRecord]]:
        """Primary records (sales, returns, counts, movements, reservation events) as
        ``(event time, record)``, in event time."""
        config = self.config
        if config.opening_counts:
            yield from self._opening_counts()
        self._schedule_periodic_counts()
        if config.erp_snapshots:
            self._schedule_erp_snapshot(self.start_ms)
        start = float(self.start_ms)
        if config.reservations_per_second > 0:
            self._schedule_arrival(start, "order", config.reservations_per_second, ONLINE_FLAT)
        if config.wms and config.movements_per_second > 0:
            rate = config.movements_per_second
            self._schedule_arrival(start, "housekeeping", rate, HOUSEKEEPING_FLAT)
        next_sale = self._next_arrival(start, config.sales_per_second, 0.0)
        while True:
            if self.actions and self.actions[0].at <= next_sale:
                action = heapq.heappop(self.actions)
                record = self._handle(action)
                at = action.at
            else:
                at = int(next_sale)
                record = self._sale(at)
                next_sale = self._next_arrival(next_sale, config.sales_per_second, 0.0)
            if record is not None:
                yield at, record

    def _schedule(self, at: int, kind: str, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.actions, _Action(at, self.seq, kind, payload))

    def _emit(self, at: int, record: SimRecord) -> None:
        """Output ``record`` at event time ``at`` (now or later), in event-time order."""
        self._schedule(at, "report", record)

    def _handle(self, action: _Action) -> SimRecord | None:
        kind, at, payload = action.kind, action.at, action.payload
        if kind == "report":
            record: SimRecord = payload
            return record
        if kind == "count":
            self._periodic_count(at, payload)
        elif kind == "verify":
            sku, loc = payload
            self._count(at, sku, loc)
        elif kind == "receipt":
            self._receive(at, *payload)
        elif kind == "order":
            self._order(at)
            self._schedule_arrival(at, kind, *payload)
        elif kind == "housekeeping":
            self._housekeeping(at)
            self._schedule_arrival(at, kind, *payload)
        elif kind == "end":
            self._end_reservation(at, *payload)
        elif kind == "expire":
            self._release_promise(payload)
        elif kind == "fulfil":
            self._fulfil(at, payload)
        elif kind == "erp_snapshot":
            self._erp_snapshot(at)
        return None

    def _next_arrival(self, at: float, per_second: float, flat: float) -> float:
        """Next arrival after ``at`` of a Poisson process of mean ``per_second`` whose intensity
        follows ``flat + (1 - flat) * demand_factor``: thinning at the peak intensity."""
        peak = flat + (1 - flat) * PEAK_FACTOR
        peak_per_ms = per_second * peak / SECOND_MS
        while True:
            at += self.rng.expovariate(peak_per_ms)
            if self.rng.random() * peak < flat + (1 - flat) * demand_factor(at):
                return at

    def _schedule_arrival(self, after: float, kind: str, per_second: float, flat: float) -> None:
        at = self._next_arrival(after, per_second, flat)
        self._schedule(max(int(after) + 1, int(at)), kind, (per_second, flat))

    def _next_id(self, source: str) -> str:
        self.counters[source] += 1
        return f"{self.run_tag}-{self.counters[source]}"

    # -- sales -----------------------------------------------------------------------------------

    def _sale(self, at: int) -> SimRecord | None:
        rng = self.rng
        store = self._random_store()
        sku = self._random_sku()
        stock = self._state(sku, store)
        if rng.random() < RETURN_SHARE:
            quantity = -2 if rng.random() < 0.1 else -1
            stock.units -= quantity
            kind = "return"
        else:
            wanted = BASKET_QUANTITIES[bisect.bisect(BASKET_CUM_WEIGHTS, rng.random())]
            quantity = min(wanted, stock.units)
            if quantity <= 0:
                self.lost_sales += 1
                return None
            stock.units -= quantity
            kind = "sale"
            self._maybe_shrink(at, store)
            self._maybe_reorder(at, sku, store)
        return self._sale_record(at, sku, store, quantity, kind)

    def _sale_record(self, at: int, sku: int, store: int, quantity: int, kind: str) -> SimRecord:
        location = self.locations[store]
        source = f"pos-{location}"
        value = records.pos_sale(
            self._next_id(source), source, self.skus[sku], location, at, quantity,
            transaction_id=f"{location}-{self._next_id('txn-' + location)}",
        )  # fmt: skip
        return SimRecord(POS_SALES, make_key(self.skus[sku], location), value, kind=kind)

    def _maybe_shrink(self, at: int, store: int) -> None:
        if self.rng.random() >= SHRINK_PER_SALE:
            return
        sku = min(bisect.bisect(self.sku_cum, self.rng.random()), len(self.skus) - 1)
        stock = self._state(sku, store)
        lost = min(stock.units, self.rng.randint(1, 2))
        stock.units -= lost
        if lost and self.config.wms and self.rng.random() < STORE_DAMAGE_SHARE:
            self._emit(at, self._movement(at, sku, store, "DAMAGE", lost))
        self._maybe_reorder(at, sku, store)

    # -- WMS movements -----------------------------------------------------------------------------

    def _movement(
        self, at: int, sku: int, loc: int, movement_type: str, quantity: int, *,
        transfer_id: str | None = None, counterpart: int | None = None, kind: str = "movement",
    ) -> SimRecord:  # fmt: skip
        location = self.locations[loc]
        source = f"wms-{location}"
        value = records.wms_movement(
            self._next_id(source), source, self.skus[sku], location, at, movement_type, quantity,
            transfer_id=transfer_id,
            counterpart_location=None if counterpart is None else self.locations[counterpart],
        )  # fmt: skip
        return SimRecord(WMS_MOVEMENTS, make_key(self.skus[sku], location), value, kind=kind)

    def _housekeeping(self, at: int) -> None:
        """One DAMAGE, ADJUSTMENT or unknown-type movement (``movements_per_second``)."""
        rng = self.rng
        which = HOUSEKEEPING_MIX[bisect.bisect(self.housekeeping_cum, rng.random())][0]
        if which == "damage_store":  # damaged or expired goods written off at a store
            sku, loc = self._random_sku(), self._random_store()
            stock = self._state(sku, loc)
            lost = min(stock.units, rng.randint(1, 2))
            if lost:
                stock.units -= lost
                self._emit(at, self._movement(at, sku, loc, "DAMAGE", lost))
                self._maybe_reorder(at, sku, loc)
        elif which == "damage_dc":  # broken in handling
            sku, loc = self._random_sku(), self._random_dc()
            stock = self._state(sku, loc)
            lost = min(stock.units, rng.randint(1, 3))
            if lost:
                stock.units -= lost
                self._emit(at, self._movement(at, sku, loc, "DAMAGE", lost))
                self._maybe_reorder(at, sku, loc)
        elif which == "adjustment":
            self._adjustment(at)
        else:  # a bin-to-bin move: no change of the DC's stock, a type invsync does not know
            sku, loc = self._random_sku(), self._random_dc()
            record = self._movement(
                at, sku, loc, UNKNOWN_MOVEMENT_TYPE, rng.randint(1, 10), kind="invalid"
            )
            self._emit(at, record)

    def _adjustment(self, at: int) -> None:
        """A DC's inventory control finds its oldest unrecorded loss and books it (a negative
        ADJUSTMENT; the stock itself does not change), or, with none to find, finds mis-slotted
        units that become sellable again (a positive one)."""
        if self.dc_drift:
            (sku, loc), lost = next(iter(self.dc_drift.items()))
            del self.dc_drift[(sku, loc)]
            self._emit(at, self._movement(at, sku, loc, "ADJUSTMENT", -lost))
            return
        sku, loc = self._random_sku(), self._random_dc()
        found = self.rng.randint(1, 3)
        self._state(sku, loc).units += found
        self._emit(at, self._movement(at, sku, loc, "ADJUSTMENT", found))

    # -- replenishment ---------------------------------------------------------------------------

    def _maybe_reorder(self, at: int, sku: int, loc: int) -> None:
        stock = self._state(sku, loc)
        if stock.on_order or stock.units > stock.reorder_point:
            return
        stock.on_order = True
        wanted = stock.order_up_to - stock.units
        if self._is_store(loc):
            dc = self._dc_of(loc)
            quantity, transfer_id = self._ship_from_dc(at, sku, dc, loc, wanted)
            lead = self.rng.randint(*STORE_LEAD_MS)
            self._schedule(at + lead, "receipt", (sku, loc, quantity, transfer_id, dc))
        else:
            lead = self.rng.randint(*DC_LEAD_MS)
            self._schedule(at + lead, "receipt", (sku, loc, wanted, None, None))

    def _ship_from_dc(
        self, at: int, sku: int, dc: int, store: int, wanted: int
    ) -> tuple[int, str | None]:
        """Ship up to ``wanted`` units to ``store`` (a TRANSFER_OUT); the shipped units and the
        transfer id (None when nothing could be shipped)."""
        stock = self._state(sku, dc)
        shipped = min(wanted, stock.units)
        stock.units -= shipped
        transfer_id = None
        if shipped > 0 and self.config.wms:
            transfer_id = f"TR-{self._next_id('transfer')}"
            record = self._movement(
                at, sku, dc, "TRANSFER_OUT", shipped, transfer_id=transfer_id, counterpart=store
            )
            self._emit(at, record)
        if stock.units > 0 and self.rng.random() < DC_SHRINK_PER_SHIPMENT:
            stock.units -= 1
            if self.config.wms:
                if self.rng.random() < DC_DAMAGE_SHARE:
                    self._emit(at, self._movement(at, sku, dc, "DAMAGE", 1))
                else:
                    self.dc_drift[(sku, dc)] = self.dc_drift.get((sku, dc), 0) + 1
        self._maybe_reorder(at, sku, dc)
        return shipped, transfer_id

    def _receive(
        self,
        at: int,
        sku: int,
        loc: int,
        quantity: int,
        transfer_id: str | None,
        origin: int | None,
    ) -> None:
        stock = self._state(sku, loc)
        if transfer_id is not None:
            quantity = self._arrived(quantity)
        stock.units += quantity
        stock.on_order = False
        if quantity > 0:
            if not self.config.wms:  # the receipt is invisible: a count tells the worker
                self._schedule(at + self.rng.randint(*VERIFY_DELAY_MS), "verify", (sku, loc))
            elif transfer_id is not None:
                record = self._movement(
                    at, sku, loc, "TRANSFER_IN", quantity, transfer_id=transfer_id,
                    counterpart=origin,
                )  # fmt: skip
                self._emit(at, record)
            else:
                self._emit(at, self._movement(at, sku, loc, "RECEIPT", quantity))
        self._maybe_reorder(at, sku, loc)

    def _arrived(self, shipped: int) -> int:
        """Units of a transfer that arrive: all, 1-2 fewer (:data:`SHORT_RECEIPT_SHARE`, only
        when at least one still arrives), or none (:data:`TRANSIT_LOSS_SHARE`)."""
        roll = self.transit_rng.random()
        if roll < TRANSIT_LOSS_SHARE:
            self.transfers_lost += 1
            return 0
        if roll < TRANSIT_LOSS_SHARE + SHORT_RECEIPT_SHARE and shipped > 1:
            self.transfers_short += 1
            return shipped - self.transit_rng.randint(1, min(2, shipped - 1))
        return shipped

    # -- online orders: reservations and their fulfilment ---------------------------------------

    def _reservation_record(
        self, at: int, reservation_id: str, action: str, sku: int, loc: int, quantity: int, *,
        expires_at: int | None = None, kind: str = "reservation",
    ) -> SimRecord:  # fmt: skip
        value = records.reservation_event(
            self._next_id(OMS_SOURCE), OMS_SOURCE, self.skus[sku], self.locations[loc], at,
            reservation_id, action, quantity, expires_at=expires_at, channel=ORDER_CHANNEL,
        )  # fmt: skip
        return SimRecord(RESERVATIONS, reservation_id, value, kind=kind)

    def _order(self, at: int) -> None:
        """An online order line: a hold at a DC (shipped) or a store (click & collect) if the
        location has the units free, then its end (commit, release) or its expiry."""
        rng = self.rng
        if rng.random() < UNKNOWN_RELEASE_SHARE:  # e.g. a retried release from another system
            sku = self._random_sku()
            loc = self._random_store() if rng.random() < STORE_PICKUP_SHARE else self._random_dc()
            self.counters["unknown-release"] += 1
            rid = f"R-{self.run_tag}-U{self.counters['unknown-release']}"
            record = self._reservation_record(
                at, rid, "released", sku, loc, rng.randint(1, 3), kind="invalid"
            )
            self._emit(at, record)
            return
        sku = self._random_sku()
        loc = self._random_store() if rng.random() < STORE_PICKUP_SHARE else self._random_dc()
        quantity = ORDER_QUANTITIES[bisect.bisect(ORDER_CUM_WEIGHTS, rng.random())]
        stock = self._state(sku, loc)
        if stock.units - stock.promised < quantity:
            self.lost_orders += 1
            return
        stock.promised += quantity
        hold = _Hold(
            f"R-{self._next_id('reservation')}", sku, loc, quantity,
            at + rng.randint(*RESERVATION_TTL_MS),
        )  # fmt: skip
        created = self._reservation_record(
            at, hold.reservation_id, "created", sku, loc, quantity, expires_at=hold.expires_at
        )
        self._emit(at, created)
        roll = rng.random()
        if roll >= COMMIT_SHARE + RELEASE_SHARE:  # left to expire: no end event
            self._schedule(hold.expires_at, "expire", hold)
            return
        wait = RESERVATION_MIN_END_MS + int(rng.expovariate(1 / RESERVATION_END_MEAN_EXTRA_MS))
        end_at = min(at + wait, hold.expires_at - MINUTE_MS)
        action = "committed" if roll < COMMIT_SHARE else "released"
        self._schedule(end_at, "end", (hold, action))

    def _end_reservation(self, at: int, hold: _Hold, action: str) -> None:
        record = self._reservation_record(
            at, hold.reservation_id, action, hold.sku, hold.loc, hold.quantity
        )
        self._emit(at, record)
        if action == "released":
            self._release_promise(hold)
            return
        delay = STORE_PICKUP_DELAY_MS if self._is_store(hold.loc) else DC_FULFIL_DELAY_MS
        self._schedule(at + self.rng.randint(*delay), "fulfil", hold)

    def _release_promise(self, hold: _Hold) -> None:
        stock = self._state(hold.sku, hold.loc)
        stock.promised -= hold.quantity

    def _fulfil(self, at: int, hold: _Hold) -> None:
        """A committed order leaves: a POS sale at pick-up in a store, a PICK or SHIP at a DC
        (never both: both take units off on hand). What is not on the shelf is a short pick."""
        self._release_promise(hold)
        stock = self._state(hold.sku, hold.loc)
        quantity = min(hold.quantity, stock.units)
        self.short_picks += hold.quantity - quantity
        if quantity <= 0:
            return
        stock.units -= quantity
        if self._is_store(hold.loc):
            self._emit(at, self._sale_record(at, hold.sku, hold.loc, quantity, "sale"))
        elif self.config.wms:
            kind = "PICK" if self.rng.random() < DC_PICK_SHARE else "SHIP"
            self._emit(at, self._movement(at, hold.sku, hold.loc, kind, quantity))
        self._maybe_reorder(at, hold.sku, hold.loc)

    # -- ERP snapshots ---------------------------------------------------------------------------

    def _schedule_erp_snapshot(self, after: int) -> None:
        """The next nightly snapshot strictly after ``after``."""
        day = (after - ERP_SNAPSHOT_AT_MS) // DAY_MS + 1
        self._schedule(day * DAY_MS + ERP_SNAPSHOT_AT_MS, "erp_snapshot", None)

    def _erp_snapshot(self, at: int) -> None:
        """The ERP's on hand of every DC key stocked so far: what was booked (the units there
        plus the losses not recorded yet), now and then missing a booking (drift)."""
        for (sku, loc), stock in sorted(self.stock.items()):
            if self._is_store(loc):
                continue
            booked = stock.units + self.dc_drift.get((sku, loc), 0)
            if self.rng.random() < ERP_ERROR_SHARE:
                booked = max(0, booked + self.rng.choice((-1, 1)) * self.rng.randint(1, 3))
            location = self.locations[loc]
            value = records.erp_snapshot(
                self._next_id("erp"), "erp", self.skus[sku], location, as_of=at,
                reported_at=at + ERP_SNAPSHOT_DELAY_MS, on_hand=booked,
            )  # fmt: skip
            key = make_key(self.skus[sku], location)
            record = SimRecord(ERP_SNAPSHOTS, key, value, kind="snapshot")
            self._schedule(at + ERP_SNAPSHOT_DELAY_MS, "report", record)
        self._schedule_erp_snapshot(at)

    # -- counts ----------------------------------------------------------------------------------

    def _opening_counts(self) -> Iterator[tuple[int, SimRecord]]:
        """A wall-to-wall count of every key as of just before the start, reported in bulk."""
        counted_at = self.start_ms - OPENING_COUNT_LEAD_MS
        keys = [(sku, loc) for loc in range(len(self.locations)) for sku in range(len(self.skus))]
        span = OPENING_COUNT_LEAD_MS - REPORT_DELAY_MS[0]
        for i, (sku, loc) in enumerate(keys):
            reported_at = counted_at + REPORT_DELAY_MS[0] + span * i // len(keys)
            yield reported_at, self._count_record(counted_at, reported_at, sku, loc)

    def _count_interval_ms(self, loc: int) -> float:
        """Time between two periodic counts at ``loc``: its whole assortment every few days,
        but never more than :data:`MAX_PERIODIC_COUNT_SHARE` of the sales rate in total."""
        days = STORE_COUNT_DAYS if self._is_store(loc) else DC_COUNT_DAYS
        budget_per_ms = MAX_PERIODIC_COUNT_SHARE * self.config.sales_per_second / SECOND_MS
        return max(days * DAY_MS / len(self.skus), len(self.locations) / budget_per_ms)

    def _schedule_periodic_counts(self) -> None:
        for loc in range(len(self.locations)):
            first = self.rng.uniform(0, self._count_interval_ms(loc))
            self._schedule(self.start_ms + int(first), "count", loc)

    def _periodic_count(self, at: int, loc: int) -> None:
        order = self.count_order[loc]
        sku = order[self.count_cursor[loc] % len(order)]
        self.count_cursor[loc] += 1
        self._count(at, sku, loc)
        gap = self._count_interval_ms(loc) * self.rng.uniform(0.5, 1.5)
        self._schedule(at + max(1, int(gap)), "count", loc)

    def _count(self, counted_at: int, sku: int, loc: int) -> None:
        self.dc_drift.pop((sku, loc), None)  # the count books what was lost unrecorded
        reported_at = counted_at + self.rng.randint(*REPORT_DELAY_MS)
        record = self._count_record(counted_at, reported_at, sku, loc)
        self._schedule(reported_at, "report", record)

    def _count_record(self, counted_at: int, reported_at: int, sku: int, loc: int) -> SimRecord:
        location = self.locations[loc]
        source = f"rf-{location}"
        value = records.cycle_count(
            self._next_id(source), source, self.skus[sku], location,
            counted_at=counted_at, reported_at=reported_at,
            counted=self._counted(self._state(sku, loc).units, loc),
            count_id=f"CC-{location}-{self._next_id('count-' + location)}",
        )  # fmt: skip
        return SimRecord(CYCLE_COUNTS, make_key(self.skus[sku], location), value, kind="count")

    def _counted(self, units: int, loc: int) -> int:
        miscount = STORE_MISCOUNT if self._is_store(loc) else DC_MISCOUNT
        if self.rng.random() >= miscount:
            return units
        error = self.rng.randint(1, max(1, round(units * 0.05)) + 2)
        return max(0, units + (error if self.rng.random() < 0.5 else -error))


# --- transport faults: duplicates, out-of-order, poison -------------------------------------------


class _Faults:
    """Turns the world's ordered records into the output stream of exactly ``events`` records."""

    def __init__(self, config: SimulationConfig, world: _World) -> None:
        self.config = config
        self.world = world
        self.rng = random.Random(f"invsync-simulate-faults-{config.seed}")
        self.recent: deque[tuple[int, SimRecord]] = deque(maxlen=RECENT_MAX)
        self.held: list[tuple[int, int, int, SimRecord]] = []  # (release, seq, event time, rec)
        self.clock = world.start_ms

    def __iter__(self) -> Iterator[SimRecord]:
        config, rng = self.config, self.rng
        limit, emitted, seq = config.events, 0, 0
        source = self.world.records()
        poison_below = config.poison_share
        duplicate_below = poison_below + config.duplicate_share
        while not limit or emitted + len(self.held) < limit:
            roll = rng.random()
            if roll < poison_below:
                yield self._poison()
                emitted += 1
                continue
            if roll < duplicate_below and (duplicate := self._duplicate()) is not None:
                yield duplicate
                emitted += 1
                continue
            at, record = next(source)
            self.clock = at
            for released in self._release(at):
                yield released
                emitted += 1
            if rng.random() < config.out_of_order_share:
                delay = rng.randint(MIN_HOLD_MS, MAX_HOLD_MS)
                seq += 1
                heapq.heappush(self.held, (at + delay, seq, at, replace(record, delay_ms=delay)))
                continue
            self.recent.append((at, record))
            yield record
            emitted += 1
        yield from self._release(None)  # the end: what is still held goes out last

    def _release(self, until: int | None) -> Iterator[SimRecord]:
        while self.held and (until is None or self.held[0][0] <= until):
            _, _, at, record = heapq.heappop(self.held)
            self.recent.append((at, record))
            yield record

    def _duplicate(self) -> SimRecord | None:
        recent = self.recent
        while recent and recent[0][0] < self.clock - DUPLICATE_WINDOW_MS:
            recent.popleft()
        oldest = self.clock - DUPLICATE_WINDOW_MS
        for _ in range(3 if recent else 0):  # records released late sit among newer ones
            at, original = recent[self.rng.randrange(len(recent))]
            if at >= oldest:
                return SimRecord(original.spec, original.key, original.value, kind="duplicate")
        return None

    def _poison(self) -> SimRecord:
        """Bytes that are not wire-format Avro, on the topic and under the key of a recent record
        (so poison spreads over the topics like the traffic does)."""
        rng = self.rng
        if self.recent:
            sample = self.recent[rng.randrange(len(self.recent))][1]
            spec, key = sample.spec, sample.key
        else:
            spec = POS_SALES if rng.random() < 0.8 else CYCLE_COUNTS
            key = make_key(rng.choice(self.world.skus), rng.choice(self.world.locations))
        variant = rng.randrange(4)
        if variant == 0:  # random bytes, no magic byte
            raw = bytes([rng.randint(1, 255)]) + rng.randbytes(rng.randint(0, 40))
        elif variant == 1:  # wire format header with a schema id nobody registered
            raw = b"\x00" + UNKNOWN_SCHEMA_ID.to_bytes(4, "big") + rng.randbytes(rng.randint(0, 24))
        elif variant == 2:  # truncated: the magic byte and part of the schema id
            raw = b"\x00" + rng.randbytes(rng.randint(0, 3))
        else:  # JSON instead of Avro, a classic producer misconfiguration
            raw = orjson.dumps({"sku": key.split("|")[0], "quantity": rng.randint(1, 3)})
        return SimRecord(spec, key, None, raw=raw, kind="poison")


def generate(config: SimulationConfig) -> Iterator[SimRecord]:
    """The simulated stream, deterministic for a config (with ``start_ms`` set); no Kafka.

    Yields exactly ``config.events`` records (endless when 0).
    """
    world = _World(config, config.resolved_start_ms())
    return iter(_Faults(config, world))


# --- producing --------------------------------------------------------------------------------

FLUSH_TIMEOUT_S = 60.0
POLL_EVERY = 100
PROGRESS_EVERY_S = 0.1
MAX_BACKLOG_S = 1.0


class SimulationFailed(SystemExit):
    """The simulation could not run or not every record was delivered (exit status 1)."""

    def __init__(self, message: str, summary: SimulationSummary | None = None) -> None:
        super().__init__(1)
        self.message = message
        self.summary = summary

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class SimulationSummary:
    counts: dict[str, int]  # records produced per kind
    total: int
    out_of_order: int  # of which were sent after later records
    elapsed_s: float  # wall clock, producing + final flush
    delivery_errors: int
    first_error: str | None = None
    interrupted: bool = False

    @property
    def events_per_second(self) -> float:
        return self.total / self.elapsed_s if self.elapsed_s > 0 else 0.0


def producer_config(settings: Settings) -> dict[str, Any]:
    """murmur2_random: the same key -> partition mapping as Java clients and aiokafka."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": "invsync-simulate",
        "partitioner": "murmur2_random",
        "linger.ms": 20,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "none",
    }


class _Deliveries:
    """The delivery callback: counts failures and remembers the first."""

    def __init__(self) -> None:
        self.errors = 0
        self.first_error: str | None = None

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{msg.topic()}: {err}"


class _Pacer:
    """Keeps ``n`` events at ``rate``/s against a monotonic clock (0 = no pacing)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.base = time.monotonic()
        self.base_n = 0

    def wait(self, n: int) -> None:
        if not self.rate:
            return
        due = self.base + (n - self.base_n) / self.rate
        now = time.monotonic()
        if due > now + 0.002:
            time.sleep(due - now)
        elif now - due > MAX_BACKLOG_S:  # stalled (broker, Ctrl-Z): do not burst to catch up
            self.base, self.base_n = now, n


def _check_ready(producer: Any, settings: Settings, topics: list[str]) -> None:
    from confluent_kafka import KafkaException

    try:
        existing = producer.list_topics(timeout=10).topics
    except KafkaException as exc:
        raise SimulationFailed(
            f"Kafka at {settings.kafka_bootstrap} (INVSYNC_KAFKA_BOOTSTRAP) did not answer: {exc}. "
            "Is it running? Locally: `invsync stack up`."
        ) from None
    missing = [name for name in topics if name not in existing]
    if missing:
        raise SimulationFailed(
            f"topic(s) missing: {', '.join(missing)} -- run `invsync topics create` "
            f"(with the same INVSYNC_TOPIC_PREFIX={settings.topic_prefix!r})"
        )


def _register(codec: Any, settings: Settings, specs: list[TopicSpec]) -> None:
    try:
        codec.register_all(specs)
    except Exception as exc:
        raise SimulationFailed(
            f"schema registry at {settings.schema_registry_url} (INVSYNC_SCHEMA_REGISTRY_URL) "
            f"failed: {type(exc).__name__}: {exc}"
        ) from None


def _produce(producer: Any, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            return
        except BufferError:  # local queue full: serve delivery reports, then retry
            producer.poll(0.05)


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]simulate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>10,.0f} events/s"),
        TimeElapsedColumn(),
        console=console,
    )


class _Run:
    """One produce run: the producer, the codec, and what was sent so far."""

    def __init__(
        self, settings: Settings, producer: Any, codec: Any, specs: list[TopicSpec]
    ) -> None:
        self.specs = specs
        self.names = {spec.name: spec.full_name(settings) for spec in specs}
        self.producer = producer
        self.codec = codec
        self.deliveries = _Deliveries()
        self.counts: Counter[str] = Counter()
        self.out_of_order = 0
        self.sent = 0
        self.started = time.monotonic()

    def send(self, record: SimRecord) -> None:
        if record.raw is not None:
            value = record.raw
        else:
            value = self.codec.encode(record.spec, record.value or {})
        topic = self.names[record.spec.name]
        _produce(self.producer, topic, record.key.encode(), value, self.deliveries)
        self.sent += 1
        self.counts[record.kind] += 1
        self.out_of_order += record.delay_ms > 0
        if self.sent % POLL_EVERY == 0:
            self.producer.poll(0)

    def rate(self) -> float:
        return self.sent / max(time.monotonic() - self.started, 1e-9)

    def produce_all(self, config: SimulationConfig, console: Console) -> None:
        pacer = _Pacer(config.rate)
        with _progress(console) as progress:
            task = progress.add_task("produce", total=config.events or None, rate=0.0)
            shown = time.monotonic()
            for record in generate(config):
                pacer.wait(self.sent)
                self.send(record)
                if self.sent % POLL_EVERY == 0 and time.monotonic() - shown >= PROGRESS_EVERY_S:
                    progress.update(task, completed=self.sent, rate=self.rate())
                    shown = time.monotonic()
            progress.update(task, completed=self.sent, rate=self.rate())

    def finish(self, *, interrupted: bool) -> SimulationSummary:
        try:
            undelivered = self.producer.flush(FLUSH_TIMEOUT_S)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            undelivered = len(self.producer)
        deliveries = self.deliveries
        if undelivered:
            deliveries.errors += undelivered
            deliveries.first_error = deliveries.first_error or (
                f"{undelivered} record(s) not delivered within {FLUSH_TIMEOUT_S:.0f}s"
            )
        return SimulationSummary(
            counts={kind: self.counts.get(kind, 0) for kind in KINDS},
            total=self.sent,
            out_of_order=self.out_of_order,
            elapsed_s=time.monotonic() - self.started,
            delivery_errors=deliveries.errors,
            first_error=deliveries.first_error,
            interrupted=interrupted,
        )


def run(settings: Settings, config: SimulationConfig, console: Console) -> SimulationSummary:
    """Produce :func:`generate`'s stream to Kafka; print and return a summary.

    Stops after ``config.events`` records or on Ctrl-C, then flushes. Raises
    :class:`SimulationFailed` (exit status 1, message printed) if Kafka, the topics or the
    registry are not ready, or if any record was not delivered.
    """
    try:
        return _run(settings, config, console)
    except SimulationFailed as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise


def _run(settings: Settings, config: SimulationConfig, console: Console) -> SimulationSummary:
    from confluent_kafka import Producer

    from streams.codec import Codec

    producer = Producer(producer_config(settings))
    producing = _Run(settings, producer, Codec(settings), config.topics())
    _check_ready(producer, settings, list(producing.names.values()))
    _register(producing.codec, settings, producing.specs)
    producing.started = time.monotonic()
    interrupted = False
    try:
        producing.produce_all(config, console)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: flushing what was produced[/yellow]")
    summary = producing.finish(interrupted=interrupted)
    print_summary(console, summary, producing.names)
    if summary.delivery_errors:
        raise SimulationFailed(
            f"{summary.delivery_errors} record(s) not delivered; first: {summary.first_error}",
            summary,
        )
    return summary


def print_summary(console: Console, summary: SimulationSummary, topics: dict[str, str]) -> None:
    table = Table("kind", "records", title="simulation summary")
    for kind, count in summary.counts.items():
        table.add_row(kind, f"{count:,}")
    table.add_row("(out of order)", f"{summary.out_of_order:,}")
    table.add_row("[bold]total", f"[bold]{summary.total:,}")
    console.print(table)
    console.print(
        f"{summary.total:,} records to {', '.join(topics.values())} in {summary.elapsed_s:.2f}s "
        f"= {summary.events_per_second:,.0f} events/s"
        + (" (interrupted)" if summary.interrupted else "")
    )
