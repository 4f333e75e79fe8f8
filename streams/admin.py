"""Talk to the Kafka cluster as an administrator: wait for it, create and check topics.

Topics are always created explicitly (never auto-created), with the partition count from
settings, so inputs and table changelogs stay co-partitioned.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from invsync.settings import Settings
from streams.topics import TopicSpec, all_topics

log = logging.getLogger(__name__)


class ClusterUnavailable(RuntimeError):
    pass


class TopicsMissing(RuntimeError):
    pass


def admin_client(settings: Settings) -> AdminClient:
    # librdkafka would print every refused connection; failures surface as exceptions instead
    return AdminClient(
        {"bootstrap.servers": settings.kafka_bootstrap, "socket.timeout.ms": 5000, "log_level": 0}
    )


def wait_for_cluster(settings: Settings, timeout_s: float | None = None) -> AdminClient:
    """Return an admin client once the cluster answers; raise after ``startup_timeout_s``."""
    limit = timeout_s or settings.startup_timeout_s
    deadline = time.monotonic() + limit
    client = admin_client(settings)
    attempt = 0
    while True:
        attempt += 1
        try:
            client.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
            return client
        except KafkaException as exc:
            log.warning(
                "Kafka at %s not reachable yet (attempt %d, giving up in %.0fs): %s",
                settings.kafka_bootstrap, attempt, max(0.0, deadline - time.monotonic()), exc,
            )  # fmt: skip
            if time.monotonic() >= deadline:
                raise ClusterUnavailable(
                    f"Kafka at {settings.kafka_bootstrap} (INVSYNC_KAFKA_BOOTSTRAP) did not "
                    f"answer within {limit:.0f}s: {exc}. Is it running? Locally: "
                    "`invsync stack up`."
                ) from None
            time.sleep(min(2.0, 0.2 * attempt))


def _partitions(settings: Settings, spec: TopicSpec) -> int:
    return spec.partitions or settings.partitions


def create_topics(settings: Settings) -> list[str]:
    """Create every topic of the catalogue that does not exist yet; return the names created."""
    client = wait_for_cluster(settings)
    existing = set(client.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(
            spec.full_name(settings),
            num_partitions=_partitions(settings, spec),
            replication_factor=settings.replication_factor,
            config=spec.topic_config(),
        )
        for spec in all_topics(settings)
        if spec.full_name(settings) not in existing
    ]
    if not wanted:
        return []
    for name, future in client.create_topics(wanted, operation_timeout=30).items():
        try:
            future.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
            log.info("topic %s already exists", name)
    check_topics(settings, client)
    return [t.topic for t in wanted]


def check_topics(settings: Settings, client: AdminClient | None = None) -> None:
    """Raise :class:`TopicsMissing` naming every topic that is absent or mis-partitioned."""
    client = client or wait_for_cluster(settings)
    deadline = time.monotonic() + 30
    while True:
        metadata = client.list_topics(timeout=10).topics
        problems = []
        for spec in all_topics(settings):
            name = spec.full_name(settings)
            if name not in metadata:
                problems.append(f"{name}: missing")
            elif len(metadata[name].partitions) != _partitions(settings, spec):
                problems.append(
                    f"{name}: {len(metadata[name].partitions)} partitions, "
                    f"expected {_partitions(settings, spec)} (INVSYNC_PARTITIONS)"
                )
        if not problems or time.monotonic() >= deadline or any("expected" in p for p in problems):
            break
        time.sleep(0.2)  # metadata propagation after create_topics; polled with a deadline
    if problems:
        raise TopicsMissing(
            "topics are not as the catalogue says (run `invsync topics create`):\n  "
            + "\n  ".join(problems)
        )
