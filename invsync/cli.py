"""The ``invsync`` command: run the local stack, create topics, run the worker, simulate, tail."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from invsync.settings import Settings, SettingsError, load_settings

console = Console()
app = typer.Typer(
    help="invsync: real-time inventory availability on Kafka. Settings come from INVSYNC_* "
    "environment variables (see README).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(
    help="Local Kafka + schema registry + Redis, run as plain processes.", no_args_is_help=True
)
topics_app = typer.Typer(help="Create and list the topics of the catalogue.", no_args_is_help=True)
sink_app = typer.Typer(
    help="Sinks, each its own process with its own consumer group and /metrics.",
    no_args_is_help=True,
)
readmodel_app = typer.Typer(help="The Redis read model.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
app.add_typer(sink_app, name="sink")
app.add_typer(readmodel_app, name="readmodel")


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _say(message: str) -> None:
    console.print(message)


def _stack_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a stack operation; a StackError is printed as a message, not a traceback."""
    from invsync import stack

    try:
        return fn(*args, **kwargs)
    except stack.StackError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


@stack_app.command("install")
def stack_install() -> None:
    """Fetch the Kafka and Apicurio jars (Maven) if they are not cached yet."""
    from invsync import stack

    _stack_call(stack.install, _settings(), progress=_say)


@stack_app.command("up")
def stack_up() -> None:
    """Start Kafka (KRaft), Apicurio Registry and Redis; wait until each answers. Idempotent."""
    from invsync import stack

    _print_status(_stack_call(stack.up, _settings(), progress=_say))


@stack_app.command("down")
def stack_down() -> None:
    """Stop the services `stack up` started (and nothing else)."""
    from invsync import stack

    _stack_call(stack.down, _settings(), progress=_say)


@stack_app.command("status")
def stack_status() -> None:
    """Show which local services run and where they listen."""
    from invsync import stack

    statuses = stack.status(_settings())
    _print_status(statuses)
    if not all(s.running for s in statuses):
        raise typer.Exit(1)


def _print_status(statuses: list[Any]) -> None:
    table = Table("service", "running", "pid", "endpoint", "log")
    for s in statuses:
        table.add_row(
            s.name, "yes" if s.running else "no", str(s.pid or "-"), s.endpoint, str(s.log)
        )
    console.print(table)


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic of the catalogue that is missing (idempotent), then check them all."""
    from streams.admin import create_topics

    settings = _settings()
    created = create_topics(settings)
    console.print(f"created {len(created)} topic(s): {', '.join(created) or '-'}")


@topics_app.command("list")
def topics_list() -> None:
    """List the catalogue: name, key, schema, partitions, cleanup policy."""
    from streams.topics import all_topics

    settings = _settings()
    table = Table("topic", "role", "key", "value schema", "partitions", "cleanup")
    for spec in all_topics(settings):
        table.add_row(
            spec.full_name(settings),
            spec.role,
            spec.key,
            f"schemas/avro/{spec.schema}.avsc",
            str(spec.partitions or settings.partitions),
            spec.cleanup_policy(),
        )
    console.print(table)


@sink_app.command("redis")
def sink_redis() -> None:
    """Keep the Redis read model at the latest version of every availability record (until
    Ctrl-C); /metrics and /livez on INVSYNC_REDIS_SINK_PORT."""
    from sinks.redis_sink import run_redis_sink
    from streams.admin import ClusterUnavailable, TopicsMissing

    settings = _settings()
    settings.configure_logging()
    try:
        run_redis_sink(settings)
    except (ClusterUnavailable, TopicsMissing, OSError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


@sink_app.command("erp")
def sink_erp() -> None:
    """Deliver ERP stock deltas over HTTP (idempotency key = delta_id) until Ctrl-C; /metrics
    and /livez on INVSYNC_ERP_SINK_PORT."""
    from sinks.erp import main as erp_main

    erp_main()


@readmodel_app.command("rebuild")
def readmodel_rebuild() -> None:
    """Write every availability record of the compacted topics to Redis (after a Redis restart
    without persistence); newer versions already there are kept."""
    from sinks.redis_sink import rebuild_read_model

    settings = _settings()
    try:
        written = rebuild_read_model(settings)
    except Exception as exc:  # Redis or Kafka unreachable: say so, exit non-zero
        console.print(f"[red]rebuild failed: {exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"read model rebuilt from {written} record(s)")


@app.command("erp-simulator")
def erp_simulator(
    port: Annotated[int, typer.Option(help="port to listen on")] = 18090,
    db: Annotated[str, typer.Option(help="sqlite file of accepted deltas")] = ".state/erp.sqlite",
) -> None:
    """A small ERP peer for local runs and tests: accepts stock deltas once per delta_id."""
    from invsync.erp_simulator import main as simulator_main

    simulator_main(["--port", str(port), "--db", db])


@app.command()
def worker() -> None:
    """Run the fold worker (Faust) until Ctrl-C. Fails fast on bad settings or missing topics."""
    from invsync import worker as worker_module
    from streams.admin import ClusterUnavailable, TopicsMissing

    try:
        worker_module.run(_settings())
    except (ClusterUnavailable, TopicsMissing) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    except SettingsError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None


@app.command()
def simulate(
    events: Annotated[int, typer.Option(help="events to produce; 0 = run until Ctrl-C")] = 100_000,
    rate: Annotated[float, typer.Option(help="events per second; 0 = as fast as possible")] = 2_000,
    skus: Annotated[int, typer.Option(help="number of SKUs")] = 500,
    stores: Annotated[int, typer.Option(help="number of stores")] = 20,
    dcs: Annotated[int, typer.Option(help="number of distribution centres")] = 2,
    duplicates: Annotated[float, typer.Option(help="share of events sent twice")] = 0.01,
    out_of_order: Annotated[float, typer.Option(help="share of events delayed")] = 0.02,
    poison: Annotated[float, typer.Option(help="share of poison (undecodable) messages")] = 0.001,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same stream)")] = 7,
    movements: Annotated[
        float,
        typer.Option(
            help="WMS damage/adjustment movements per simulated second (receipts, transfers "
            "and picks follow from sales and orders)"
        ),
    ] = 0.02,
    reservations: Annotated[
        float, typer.Option(help="online order lines (reservations) per simulated second; 0 = none")
    ] = 0.1,
    wms: Annotated[bool, typer.Option(help="produce WMS movements (--no-wms: none)")] = True,
) -> None:
    """Produce a realistic stream of POS sales, WMS movements, cycle counts and reservations
    to the input topics."""
    from invsync import simulate as simulate_module

    config = simulate_module.SimulationConfig(
        events=events,
        rate=rate,
        skus=skus,
        stores=stores,
        dcs=dcs,
        duplicate_share=duplicates,
        out_of_order_share=out_of_order,
        poison_share=poison,
        seed=seed,
        movements_per_second=movements,
        reservations_per_second=reservations,
        wms=wms,
    )
    simulate_module.run(_settings(), config, console=console)


@app.command()
def quality(
    scenario: Annotated[str, typer.Option(help="scenario file (TOML)")] = "scenarios/default.toml",
    json_out: Annotated[
        str | None, typer.Option("--json", help="write the result as JSON here")
    ] = None,
    plot: Annotated[str | None, typer.Option(help="write a calibration PNG here")] = None,
) -> None:
    """Decision quality on a simulated network with a hidden true stock: phantom/hidden
    availability of naive ATP, a static buffer and the confidence policy, and calibration."""
    from invsync import quality as quality_module

    args = ["--scenario", scenario]
    if json_out:
        args += ["--json", json_out]
    if plot:
        args += ["--plot", plot]
    raise typer.Exit(quality_module.main(args))


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="topic to read, e.g. availability.web")],
    from_beginning: Annotated[bool, typer.Option(help="start at the oldest record")] = False,
    limit: Annotated[int, typer.Option(help="stop after this many records; 0 = never")] = 0,
) -> None:
    """Print a topic's records decoded from Avro as JSON lines (Ctrl-C to stop)."""
    from invsync import tail as tail_module

    tail_module.run(_settings(), topic, from_beginning=from_beginning, limit=limit)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for chatty in ("httpx", "httpx2"):  # one line per registry request otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    app()
