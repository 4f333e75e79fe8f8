"""Channel policy as configuration: what each channel may sell of a position, and why.

A policy file (TOML, see ``ops/channels.example.toml``) is read once at start-up by
:func:`load_policy`, which validates every key and fails with a :class:`PolicyError` naming the
file, the key path (``channels.bopis.min_confidence.store``) and what is wrong. The result is
immutable (frozen dataclasses, read-only mappings). :func:`offer` is pure: one channel's rules
applied to one position and its confidence :class:`~state.confidence.Assessment`.

The offer, in order (each step can only lower the quantity; ``bound_by`` names the last step that
did, for the explanation):

1. **eligibility** - the location's type must be one of the channel's ``location_types`` and, if
   the channel lists ``groups``, the location must belong to one of them; otherwise 0, ``out``.
2. **ATP** - ``max(0, sum of the counted terms)``: ``+on_hand``, ``+in_transit``, ``-reserved``,
   ``-allocated``, ``-safety_stock`` (per location type). ``in_transit`` is the units inbound to
   the location (shipped by a TRANSFER_OUT elsewhere, not received yet: ``Ledger.in_transit``,
   passed by :func:`state.availability.project`); the default terms leave it out.
3. **confidence** - ``assessment.offerable(min_confidence[location_type])`` is the largest number
   of shelf units (recorded - reserved, never more) that meets the channel's minimum; the other
   ATP terms are taken as certain and shift it: ``sure = offerable + (ATP_raw - (on_hand -
   reserved))``. So in-transit units count at face value: the confidence model is about the
   shelf, which they are not on (see :mod:`state.availability`).
4. **buffer** - ``buffer_units + ceil(buffer_pct% of ATP)`` held back, floored at 0.
5. **cap** - at most ``publish_cap``.
6. **thresholds** - at or below ``out`` the channel is offered 0 (``out``); at or below ``low``
   it is ``low``; else ``in``.

The reported confidence is that of the shelf units behind the offered quantity:
``assessment.confidence(offered - shift)`` (1 when nothing is offered); units in transit
counted by the channel are part of ``shift``.

Location groups (``[groups.<name>]``) are sets of locations: every location of the listed
``location_types``, plus explicit ``locations``, plus ids starting with one of the
``prefixes``. A channel's ``groups`` restrict its eligibility; its ``aggregates`` name the groups
it publishes sums for (stored here, used by the publisher). How records reach a channel defined
in a policy file (:mod:`state.publishing`, :mod:`streams.channel_publisher`): only changes that
matter (``offered`` or ``status`` changed, or the confidence moved by ``confidence_step``,
default 0.05), coalesced per key, at most ``rate_limit`` records/s, transitions to out-of-stock
first. The built-in default channel (no policy file) publishes every version of every position.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from state.confidence import Assessment

LOCATION_TYPES: tuple[str, ...] = ("store", "dc")
ATP_TERMS: tuple[str, ...] = ("on_hand", "in_transit", "reserved", "allocated", "safety_stock")
_SIGN = MappingProxyType(
    {"on_hand": 1, "in_transit": 1, "reserved": -1, "allocated": -1, "safety_stock": -1}
)
DEFAULT_TERMS: tuple[str, ...] = ("on_hand", "reserved")
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")  # as invsync.settings: becomes availability.<name>

# the reasons an offer is what it is (Offer.bound_by)
INELIGIBLE, ATP, CONFIDENCE, BUFFER, CAP, OUT_THRESHOLD = (
    "ineligible", "atp", "confidence", "buffer", "cap", "out_threshold",
)  # fmt: skip


class PolicyError(ValueError):
    """A policy file that cannot be used: ``"<file>: <key path>: <what is wrong>"``."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


class UnknownChannelError(KeyError):
    """A channel the policy does not define (an API answers 404)."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        super().__init__(f"unknown channel {name!r}; known: {', '.join(sorted(known))}")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class LocationGroup:
    """A named set of locations: all of ``location_types``, ``locations``, ``prefixes``."""

    name: str
    location_types: frozenset[str] = frozenset()
    locations: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    description: str = ""

    def contains(self, location: str, location_type: str) -> bool:
        return (
            location_type in self.location_types
            or location in self.locations
            or location.startswith(self.prefixes)
        )


@dataclass(frozen=True, slots=True)
class AtpFormula:
    """Which terms count towards available-to-promise, and safety stock per location type."""

    terms: frozenset[str] = frozenset(DEFAULT_TERMS)
    safety_stock: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def raw(
        self,
        *,
        location_type: str,
        on_hand: int,
        reserved: int,
        in_transit: int = 0,
        allocated: int = 0,
    ) -> int:
        """The signed sum of the counted terms (not floored)."""
        values = {
            "on_hand": on_hand,
            "in_transit": in_transit,
            "reserved": reserved,
            "allocated": allocated,
            "safety_stock": self.safety_stock.get(location_type, 0),
        }
        return sum(_SIGN[term] * values[term] for term in self.terms)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Status by offered units: ``out`` at or below ``out`` (then 0 is offered), ``low`` at or
    below ``low``, else ``in``."""

    out: int = 0
    low: int = 2

    def status(self, offered: int) -> str:
        return "out" if offered <= self.out else "low" if offered <= self.low else "in"


@dataclass(frozen=True, slots=True)
class Channel:
    """One channel's rules (see the module docstring for the order they apply in)."""

    name: str
    location_types: frozenset[str]
    min_confidence: Mapping[str, float]
    groups: tuple[LocationGroup, ...] | None = None  # None: no restriction beyond the types
    aggregates: tuple[str, ...] = ()
    buffer_units: int = 0
    buffer_pct: float = 0.0
    publish_cap: int | None = None
    rate_limit: float | None = None  # records/s; None: unlimited
    # None: every version is published (the built-in default); else only changes that matter
    confidence_step: float | None = None
    thresholds: Thresholds = Thresholds()
    atp: AtpFormula = AtpFormula()
    description: str = ""

    def ineligibility(self, location: str, location_type: str) -> str | None:
        """Why the channel may not sell from this location, or ``None`` if it may."""
        if location_type not in self.location_types:
            types = ", ".join(sorted(self.location_types))
            return f"location type {location_type!r} is not eligible for {self.name} ({types})"
        if self.groups is not None and not any(
            g.contains(location, location_type) for g in self.groups
        ):
            names = ", ".join(g.name for g in self.groups)
            return f"location {location!r} is in none of {self.name}'s groups ({names})"
        return None

    def held_back(self, atp: int) -> int:
        """Buffer units for an ATP: absolute plus ``ceil(buffer_pct % of atp)`` (exact)."""
        if not self.buffer_pct or atp <= 0:
            return self.buffer_units
        return self.buffer_units + math.ceil(_exact(self.buffer_pct) * atp / 100)


@cache
def _exact(number: float) -> Fraction:
    """The decimal a policy file wrote (12.5 is 25/2, not the nearest binary float)."""
    return Fraction(repr(number))


@dataclass(frozen=True, slots=True)
class ChannelPolicy:
    """Every channel and location group of one policy file."""

    channels: Mapping[str, Channel]
    groups: Mapping[str, LocationGroup] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "<built-in>"

    def channel(self, name: str) -> Channel:
        try:
            return self.channels[name]
        except KeyError:
            raise UnknownChannelError(name, self.channels) from None

    def require(self, names: Iterable[str]) -> None:
        """Fail (start-up) unless every configured channel (``settings.channels``) is defined."""
        for name in names:
            if name not in self.channels:
                known = ", ".join(sorted(self.channels))
                raise PolicyError(self.source, f"channels.{name}", f"not defined (have: {known})")


@dataclass(frozen=True, slots=True)
class Offer:
    """What one channel is offered of one position, and the terms that explain it."""

    offered: int
    status: str  # in / low / out
    atp: int
    confidence: float  # of the offered quantity (1 when nothing is offered)
    bound_by: str  # ineligible / atp / confidence / buffer / cap / out_threshold
    reason: str
    min_confidence: float
    held_back: int  # buffer units
    publish_cap: int | None


def default_channel(
    name: str = "web", *, min_confidence: float = 0.0, low_threshold: int = 2
) -> Channel:
    """Today's built-in behaviour (state.availability before policies): every location, ATP =
    on hand - reserved, no buffers nor cap, the given minimum confidence and low threshold."""
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1]: {min_confidence}")
    return Channel(
        name=name,
        location_types=frozenset(LOCATION_TYPES),
        min_confidence=MappingProxyType(dict.fromkeys(LOCATION_TYPES, min_confidence)),
        thresholds=Thresholds(out=0, low=low_threshold),
        description="built-in default: all of ATP, no buffers",
    )


DEFAULT_POLICY = ChannelPolicy(channels=MappingProxyType({"web": default_channel("web")}))


def offer(
    channel: Channel,
    *,
    location: str,
    location_type: str,
    on_hand: int,
    reserved: int,
    assessment: Assessment,
    in_transit: int = 0,
    allocated: int = 0,
) -> Offer:
    """The channel's offer for one position (pure; see the module docstring for the steps).

    ``assessment`` must be of this position: its ``recorded``/``reserved`` equal ``on_hand``/
    ``reserved`` (a mismatch is a programming error: ``ValueError``).
    """
    if (assessment.recorded, assessment.reserved) != (on_hand, reserved):
        raise ValueError(
            f"assessment of ({assessment.recorded}, {assessment.reserved}) used for a position "
            f"with on_hand={on_hand}, reserved={reserved}"
        )
    raw = channel.atp.raw(
        location_type=location_type,
        on_hand=on_hand,
        reserved=reserved,
        in_transit=in_transit,
        allocated=allocated,
    )
    atp = max(0, raw)
    cap = channel.publish_cap
    why_not = channel.ineligibility(location, location_type)
    if why_not is not None:
        return Offer(0, "out", atp, 1.0, INELIGIBLE, why_not, 1.0, 0, cap)

    minimum = channel.min_confidence[location_type]
    shift = raw - (on_hand - reserved)  # the non-shelf terms, taken as certain
    value, bound, reason = atp, ATP, f"all of ATP {atp}"
    sure = max(0, assessment.offerable(minimum) + shift)
    if sure < value:
        value, bound = sure, CONFIDENCE
        reason = f"{sure} of ATP {atp} meet the minimum confidence {minimum:g} at a {location_type}"
    held = channel.held_back(atp)
    if held > 0 and value > 0:
        value, bound = max(0, value - held), BUFFER
        reason = f"{held} units held back (buffer {channel.buffer_units} + {channel.buffer_pct:g}%)"
    if cap is not None and value > cap:
        value, bound, reason = cap, CAP, f"publish cap {cap}"
    status = channel.thresholds.status(value)
    if status == "out" and value > 0:
        reason = f"{value} at or below the out threshold {channel.thresholds.out}"
        value, bound = 0, OUT_THRESHOLD
    confidence = 1.0 if value == 0 else assessment.confidence(value - shift)
    return Offer(value, status, atp, confidence, bound, reason, minimum, held, cap)


# --- loading and validation -------------------------------------------------------------------

DEFAULT_CONFIDENCE_STEP = 0.05  # a confidence change that matters to a channel
_TOP_KEYS = frozenset({"channels", "groups"})
_GROUP_KEYS = frozenset({"description", "location_types", "locations", "prefixes"})
_CHANNEL_KEYS = frozenset(
    {
        "description", "location_types", "groups", "aggregates", "min_confidence",
        "buffer_units", "buffer_pct", "publish_cap", "rate_limit", "thresholds", "atp",
        "confidence_step",
    }
)  # fmt: skip
_CHANNEL_REQUIRED = ("location_types", "min_confidence", "thresholds")
_THRESHOLD_KEYS = frozenset({"out", "low"})
_ATP_KEYS = frozenset({"terms", "safety_stock"})


def _kind(value: object) -> str:
    return {dict: "table", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


class _Reader:
    """Typed access to the parsed TOML, raising PolicyError with the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> PolicyError:
        return PolicyError(self.source, key, problem)

    def table(
        self, value: object, key: str, allowed: frozenset[str] | None = None
    ) -> dict[str, Any]:
        """A table; with ``allowed``, any other key is an error (None: names are free)."""
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_kind(value)}")
        for name in value:
            if allowed is not None and name not in allowed:
                raise self.fail(_join(key, name), f"unknown key (allowed: {_list(allowed)})")
        return value

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {_kind(value)}")
        return value

    def strings(self, value: object, key: str) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(key, f"expected an array of strings, got {_kind(value)}")
        items = [self.string(v, f"{key}[{i}]") for i, v in enumerate(value)]
        for i, item in enumerate(items):
            if not item:
                raise self.fail(f"{key}[{i}]", "empty string")
            if item in items[:i]:
                raise self.fail(f"{key}[{i}]", f"duplicate {item!r}")
        return items

    def location_types(self, value: object, key: str) -> list[str]:
        types = self.strings(value, key)
        for i, kind in enumerate(types):
            if kind not in LOCATION_TYPES:
                raise self.fail(
                    f"{key}[{i}]",
                    f"unknown location type {kind!r} (known: {_list(LOCATION_TYPES)})",
                )
        return types

    def integer(self, value: object, key: str, *, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {_kind(value)} {value!r}")
        if value < minimum:
            raise self.fail(key, f"must be >= {minimum}, got {value}")
        return value

    def number(self, value: object, key: str, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"expected a number, got {_kind(value)} {value!r}")
        number = float(value)
        if not (math.isfinite(number) and low <= number <= high):
            raise self.fail(key, f"must be in [{low:g}, {high:g}], got {value!r}")
        return number


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _list(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def load_policy(path: str | Path) -> ChannelPolicy:
    """Read and validate a policy file; :class:`PolicyError` names the file, key and problem."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise PolicyError(source, "", f"cannot read: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(source, "", f"not valid TOML: {e}") from e
    return parse_policy(data, source=source)


def parse_policy(data: Mapping[str, Any], *, source: str = "<policy>") -> ChannelPolicy:
    """Validate an already-parsed policy document (the TOML's tables)."""
    r = _Reader(source)
    top = r.table(dict(data), "", _TOP_KEYS)
    raw_groups = r.table(top.get("groups", {}), "groups")
    groups = {name: _group(r, name, spec) for name, spec in raw_groups.items()}
    if "channels" not in top:
        raise r.fail("channels", "missing: at least one channel is required")
    raw_channels = r.table(top["channels"], "channels")
    if not raw_channels:
        raise r.fail("channels", "empty: at least one channel is required")
    channels = {name: _channel(r, name, spec, groups) for name, spec in raw_channels.items()}
    return ChannelPolicy(MappingProxyType(channels), MappingProxyType(groups), source)


def _group(r: _Reader, name: str, spec: object) -> LocationGroup:
    key = f"groups.{name}"
    if not _NAME.match(name):
        raise r.fail(key, f"invalid group name (must match {_NAME.pattern})")
    t = r.table(spec, key, _GROUP_KEYS)
    types = r.location_types(t.get("location_types", []), f"{key}.location_types")
    locations = r.strings(t.get("locations", []), f"{key}.locations")
    prefixes = r.strings(t.get("prefixes", []), f"{key}.prefixes")
    if not (types or locations or prefixes):
        raise r.fail(key, "group has no locations (give location_types, locations or prefixes)")
    return LocationGroup(
        name=name,
        location_types=frozenset(types),
        locations=frozenset(locations),
        prefixes=tuple(prefixes),
        description=r.string(t.get("description", ""), f"{key}.description"),
    )


def _group_refs(
    r: _Reader, value: object, key: str, groups: Mapping[str, LocationGroup]
) -> list[LocationGroup]:
    names = r.strings(value, key)
    for i, name in enumerate(names):
        if name not in groups:
            known = _list(groups) or "none defined"
            raise r.fail(f"{key}[{i}]", f"unknown group {name!r} (known: {known})")
    return [groups[name] for name in names]


def _channel(r: _Reader, name: str, spec: object, groups: Mapping[str, LocationGroup]) -> Channel:
    key = f"channels.{name}"
    if not _NAME.match(name):
        raise r.fail(key, f"invalid channel name (must match {_NAME.pattern})")
    t = r.table(spec, key, _CHANNEL_KEYS)
    for required in _CHANNEL_REQUIRED:
        if required not in t:
            raise r.fail(_join(key, required), "missing")
    types = frozenset(r.location_types(t["location_types"], f"{key}.location_types"))
    if not types:
        raise r.fail(f"{key}.location_types", "channel is eligible for nothing (no location type)")

    restrict: tuple[LocationGroup, ...] | None = None
    if "groups" in t:
        restrict = tuple(_group_refs(r, t["groups"], f"{key}.groups", groups))
        reachable = [g for g in restrict if g.locations or g.prefixes or g.location_types & types]
        if not reachable:
            raise r.fail(
                f"{key}.groups",
                f"channel is eligible for nothing: no listed group holds a location of an "
                f"eligible type ({_list(types)})",
            )
    aggregates = _group_refs(r, t.get("aggregates", []), f"{key}.aggregates", groups)

    return Channel(
        name=name,
        location_types=types,
        min_confidence=_min_confidence(r, t["min_confidence"], f"{key}.min_confidence", types),
        groups=restrict,
        aggregates=tuple(g.name for g in aggregates),
        buffer_units=r.integer(t.get("buffer_units", 0), f"{key}.buffer_units"),
        buffer_pct=r.number(t.get("buffer_pct", 0), f"{key}.buffer_pct", 0.0, 100.0),
        publish_cap=(
            None if "publish_cap" not in t else r.integer(t["publish_cap"], f"{key}.publish_cap")
        ),
        rate_limit=_rate_limit(r, t.get("rate_limit"), f"{key}.rate_limit"),
        confidence_step=r.number(
            t.get("confidence_step", DEFAULT_CONFIDENCE_STEP), f"{key}.confidence_step", 0.0, 1.0
        ),
        thresholds=_thresholds(r, t["thresholds"], f"{key}.thresholds"),
        atp=_atp(r, t.get("atp", {"terms": list(DEFAULT_TERMS)}), f"{key}.atp"),
        description=r.string(t.get("description", ""), f"{key}.description"),
    )


def _min_confidence(
    r: _Reader, value: object, key: str, eligible: frozenset[str]
) -> Mapping[str, float]:
    if not isinstance(value, dict):  # one number for every eligible location type
        number = r.number(value, key, 0.0, 1.0)
        return MappingProxyType(dict.fromkeys(sorted(eligible), number))
    t = r.table(value, key)
    result: dict[str, float] = {}
    for kind, number in t.items():
        if kind not in LOCATION_TYPES:
            raise r.fail(f"{key}.{kind}", f"unknown location type (known: {_list(LOCATION_TYPES)})")
        if kind not in eligible:
            raise r.fail(
                f"{key}.{kind}",
                f"location type is not eligible for this channel ({_list(eligible)})",
            )
        result[kind] = r.number(number, f"{key}.{kind}", 0.0, 1.0)
    missing = sorted(eligible - result.keys())
    if missing:
        raise r.fail(f"{key}.{missing[0]}", "missing: every eligible location type needs a minimum")
    return MappingProxyType(result)


def _rate_limit(r: _Reader, value: object, key: str) -> float | None:
    if value is None:
        return None
    rate = r.number(value, key, 0.0, math.inf)
    if rate <= 0:
        raise r.fail(key, f"must be > 0 records/s, got {value!r}")
    return rate


def _thresholds(r: _Reader, value: object, key: str) -> Thresholds:
    t = r.table(value, key, _THRESHOLD_KEYS)
    if "low" not in t:
        raise r.fail(f"{key}.low", "missing")
    out = r.integer(t.get("out", 0), f"{key}.out")
    low = r.integer(t["low"], f"{key}.low")
    if low < out:
        raise r.fail(key, f"thresholds out of order: low ({low}) must be >= out ({out})")
    return Thresholds(out=out, low=low)


def _atp(r: _Reader, value: object, key: str) -> AtpFormula:
    t = r.table(value, key, _ATP_KEYS)
    if "terms" not in t:
        raise r.fail(f"{key}.terms", "missing")
    terms = r.strings(t["terms"], f"{key}.terms")
    for i, term in enumerate(terms):
        if term not in ATP_TERMS:
            raise r.fail(
                f"{key}.terms[{i}]", f"unknown ATP term {term!r} (known: {_list(ATP_TERMS)})"
            )
    if "on_hand" not in terms:
        raise r.fail(f"{key}.terms", "must count on_hand (the confidence is about on-hand units)")
    safety: dict[str, int] = {}
    if "safety_stock" in t:
        if "safety_stock" not in terms:
            raise r.fail(f"{key}.safety_stock", "given but 'safety_stock' is not among the terms")
        sst = r.table(t["safety_stock"], f"{key}.safety_stock")
        for kind, units in sst.items():
            if kind not in LOCATION_TYPES:
                raise r.fail(
                    f"{key}.safety_stock.{kind}",
                    f"unknown location type (known: {_list(LOCATION_TYPES)})",
                )
            safety[kind] = r.integer(units, f"{key}.safety_stock.{kind}")
    elif "safety_stock" in terms:
        raise r.fail(f"{key}.safety_stock", "missing: units per location type, e.g. {store = 1}")
    return AtpFormula(frozenset(terms), MappingProxyType(safety))
