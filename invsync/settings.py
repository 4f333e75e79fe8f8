"""The one settings object, read from ``INVSYNC_*`` environment variables.

Every process (worker, simulator, stack, tests, bench) reads its configuration through
:func:`load_settings`. A bad value stops the process at start-up with a message that names the
variable and says what is expected; nothing reads ``os.environ`` elsewhere.
"""

from __future__ import annotations

import logging
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from state.confidence import PRIORS
from state.trading_hours import ALWAYS_OPEN, TradingHours

LOCATION_TYPES = frozenset(PRIORS)

ENV_PREFIX = "INVSYNC_"
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class SettingsError(SystemExit):
    """Raised (and exits the process with status 2) when a setting is invalid."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Settings(BaseSettings):
    """Configuration of an invsync process. Field ``x`` is read from ``INVSYNC_X``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- endpoints -------------------------------------------------------------------------
    kafka_bootstrap: str = Field(
        "127.0.0.1:19092", description="Kafka bootstrap servers, host:port[,host:port]"
    )
    schema_registry_url: str = Field(
        "http://127.0.0.1:18081/apis/ccompat/v7",
        description="Confluent-compatible schema registry base URL",
    )
    redis_url: str = Field("redis://127.0.0.1:16379/0", description="Redis read model URL")

    # --- topics and the app ----------------------------------------------------------------
    app_id: str = Field("invsync", description="Faust app id = consumer group id")
    topic_prefix: str = Field(
        "", description="prefix for every topic name (isolates test runs on one broker)"
    )
    partitions: int = Field(6, ge=1, le=1024, description="partitions of every input topic")
    replication_factor: int = Field(1, ge=1, le=5, description="replication of every topic")
    channels: Annotated[tuple[str, ...], NoDecode] = Field(
        ("web",), description="commerce channels, comma separated; each gets availability.<ch>"
    )

    # --- worker ----------------------------------------------------------------------------
    channel_policy: Path | None = Field(
        None,
        description="channel policy file (TOML, see ops/channels.example.toml); unset: every "
        "channel offers all of ATP",
    )
    state_dir: Path = Field(Path(".state"), description="local table state (RocksDB) directory")
    store: Literal["rocksdb", "memory"] = Field(
        "rocksdb", description="table store: rocksdb (durable, local) or memory (tests)"
    )
    standby_replicas: int = Field(
        0, ge=0, le=10, description="warm copies of each table partition kept by other workers"
    )
    web_port: int = Field(6066, ge=1, le=65535, description="worker HTTP port (metrics, health)")
    trading_hours: Annotated[dict[str, TradingHours], NoDecode] = Field(
        "",  # parsed by _parse_trading_hours
        validate_default=True,
        description="open hours (UTC) per location type, e.g. store=8-22; a silence since the "
        "last sale counts only open hours (phantom-stock evidence); unset types: always open",
    )
    batch_max: int = Field(2000, ge=1, le=100_000, description="max events folded per batch")
    batch_within_ms: int = Field(50, ge=1, le=60_000, description="max wait to fill a batch")
    sweep_keys: int = Field(
        2000,
        ge=1,
        le=1_000_000,
        description="due positions advanced per batch when stream time jumps (bounds one "
        "batch's time, ~250 us a position, so the worker keeps folding fresh events)",
    )
    lateness_ms: int = Field(
        600_000, ge=0, description="event-time lateness bound; later events are marked late"
    )
    input_skew_ms: int = Field(
        1_800_000,
        ge=0,
        description="event time a quiet input topic may trail the newest before it stops "
        "holding back the watermark",
    )
    reservation_retain_ms: int = Field(
        7 * 86_400_000,
        ge=0,
        description="event time an ended reservation stays in the table (duplicates and late "
        "ends are recognised as such); after it, the reservation is forgotten",
    )
    transfer_timeout_ms: int = Field(
        14 * 86_400_000,
        ge=0,
        description="event time after its TRANSFER_OUT at which a transfer not received "
        "(no TRANSFER_IN) stops counting as in transit at the destination (expired, counted in "
        "invsync_transfers_ended_total)",
    )
    reservation_idle_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="after this long without reservation events on a partition, its stream "
        "time advances with the wall clock so holds still expire",
    )
    startup_timeout_s: float = Field(
        60.0, gt=0, description="give up (exit non-zero) if Kafka/registry stay unreachable"
    )
    learn_accuracy: bool = Field(
        True,
        description="learn each location type's loss rate and variance terms from count "
        "discrepancies, starting from the priors (streams/learning.py); false: the priors only",
    )
    demand_velocity: bool = Field(
        False,
        description="keep demand velocity per sku-location in an hourly Faust windowed table "
        "(streams/velocity.py, shown by GET /v1/positions); it costs a Faust table write per "
        "netted ERP delta, on the fold's core",
    )
    log_level: Literal["crit", "error", "warn", "info", "debug"] = "info"
    metrics_enabled: bool = Field(
        True,
        description="the worker's metrics; false only to measure their cost: "
        "/metrics then serves nothing of the worker's own",
    )

    # --- sinks (separate processes: invsync sink redis|erp) ----------------------------------
    redis_batch: int = Field(
        500, ge=1, le=100_000, description="availability records per Redis pipeline"
    )
    redis_sink_port: int = Field(
        6067, ge=1, le=65535, description="HTTP port of the Redis sink (/metrics, /livez)"
    )
    erp_url: str = Field(
        "http://127.0.0.1:18090/v1/stock-deltas",
        description="ERP endpoint that accepts stock deltas (POST, Idempotency-Key header)",
    )
    erp_window_ms: int = Field(
        300_000, ge=1_000, le=86_400_000, description="event-time window that nets ERP deltas"
    )
    erp_timeout_s: float = Field(10.0, gt=0, le=300, description="one ERP request's timeout")
    erp_max_attempts: int = Field(
        8,
        ge=1,
        le=100,
        description="failed ERP attempts in a row on one delta before the dispatcher counts a "
        "sink failure (and alerts); it keeps retrying: only ERP rejections are dead-lettered",
    )
    erp_backoff_max_s: float = Field(
        30.0, gt=0, le=3600, description="cap of the exponential backoff between ERP attempts"
    )
    erp_sink_port: int = Field(
        6068, ge=1, le=65535, description="HTTP port of the ERP dispatcher (/metrics, /livez)"
    )

    # --- local stack (invsync stack up) ----------------------------------------------------
    stack_dir: Path = Field(Path(".stack"), description="jars, data and logs of the local stack")
    kafka_port: int = Field(19092, ge=1, le=65535)
    kafka_controller_port: int = Field(19093, ge=1, le=65535)
    registry_port: int = Field(18081, ge=1, le=65535)
    redis_port: int = Field(16379, ge=1, le=65535)

    @field_validator("channels", mode="before")
    @classmethod
    def _split_channels(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("channels")
    @classmethod
    def _check_channels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one channel is required, e.g. INVSYNC_CHANNELS=web")
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"channel {name!r} must match {_NAME.pattern}")
        return value

    @field_validator("trading_hours", mode="before")
    @classmethod
    def _parse_trading_hours(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        hours: dict[str, TradingHours] = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            kind, _, span = part.partition("=")
            open_h, _, close_h = span.partition("-")
            if kind.strip() not in LOCATION_TYPES or not (open_h.isdigit() and close_h.isdigit()):
                raise ValueError(
                    f"{part!r} is not <type>=<open>-<close> with a type in "
                    f"{sorted(LOCATION_TYPES)}, e.g. store=8-22"
                )
            hours[kind.strip()] = TradingHours(int(open_h), int(close_h)).check()
        return hours

    def hours_of(self, location_type: str) -> TradingHours:
        """The trading hours of a location type (always open unless configured)."""
        return self.trading_hours.get(location_type, ALWAYS_OPEN)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value

    @field_validator("schema_registry_url")
    @classmethod
    def _check_registry(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", "mock://")):
            raise ValueError("must start with http://, https:// or mock://")
        return value.rstrip("/")

    @cached_property
    def default_channel(self) -> str:
        return self.channels[0]

    def configure_logging(self) -> None:
        """Standard-library logging at ``log_level`` (for the processes that are not Faust's)."""
        levels = {"crit": "CRITICAL", "error": "ERROR", "warn": "WARNING", "info": "INFO",
                  "debug": "DEBUG"}  # fmt: skip
        logging.basicConfig(
            level=levels[self.log_level],
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (``overrides`` win); exit 2 naming a bad setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = ["invalid settings:"]
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            env = f"{ENV_PREFIX}{field.upper()}"
            got = error.get("input")
            lines.append(f"  {env}={got!r}: {error['msg']}")
        raise SettingsError("\n".join(lines)) from None
