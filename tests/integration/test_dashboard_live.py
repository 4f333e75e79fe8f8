"""Every dashboard panel returns data from a real Prometheus scraping real processes under load,
and the worker's probes answer (issue 6).

Processes, each its own OS process as in production: the worker, the Redis sink
(``invsync sink redis``), the ERP simulator and the ERP dispatcher (``python -m sinks.erp``, what
``invsync sink erp`` runs) posting to it. Prometheus scrapes them under the jobs of
ops/prometheus/prometheus.yml (``invsync``, ``invsync-redis-sink``, ``invsync-erp``). ERP deltas
are emitted once the event-time horizon (watermark - lateness) passes a netting window's end, so
this test nets over 2 s windows with a 2 s lateness bound and skew; the steady load advances
event time by 1 s every 200 ms, so deltas reach the ERP within seconds.

Every panel must have data: a metric that legitimately stays 0 (Redis write errors) is exported
at 0 from the start, so its panel draws a flat line rather than nothing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops import dashboard_live
from sinks.read_model import RedisReadModel
from streams import topics
from tests.integration.conftest import INVSYNC, ROOT, Deployment, free_port
from tests.integration.kafka_io import poll_until, produce
from tests.integration.test_erp_delivery import ErpSim, start_dispatcher
from tests.integration.test_redis_sink import delete_keys
from tests.integration.test_reservations_e2e import reservation
from tests.integration.test_worker_e2e import T0, count, sale

# Event time: small netting windows and horizon, so ERP deltas flow while the test runs.
FAST_EVENT_TIME = {
    "INVSYNC_ERP_WINDOW_MS": "2000",
    "INVSYNC_LATENESS_MS": "2000",
    "INVSYNC_INPUT_SKEW_MS": "2000",
}

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="needs Debian's prometheus (ops/install-prereqs.sh)"
)


def _get(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def start_redis_sink(dep: Deployment) -> tuple[subprocess.Popen[bytes], int]:
    """``invsync sink redis`` as its own process on a free port; stopped by the deployment
    fixture (its log is one of the deployment's)."""
    port = free_port()
    env = dict(os.environ) | dep.env | {"INVSYNC_REDIS_SINK_PORT": str(port)}
    with (dep.tmp / "worker-redis-sink.log").open("ab") as log:
        proc = subprocess.Popen(
            [str(INVSYNC), "sink", "redis"], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    dep.workers.append(proc)
    return proc, port


def _ready(base: str) -> bool:
    try:
        return _get(f"{base}/readyz")[0] == 200
    except (urllib.error.URLError, ConnectionError):
        return False  # the web server is not up yet


def _steady_load(dep: Deployment, stop: threading.Event) -> None:
    """Sales, a count, a reservation that opens and ends, and a poison record every 200 ms, in
    event time order, until stopped."""
    i = 0
    while not stop.is_set():
        at = T0 + i * 1000
        batch = [sale(10 * i + k, f"SKU{k}", "S1", at + k, 1) for k in range(5)]
        batch.append(count(10 * i + 5, "SKU9", "DC1", at, 40))
        batch.append((topics.POS_SALES, "SKU1|S1", b"\x00\x00\x00\x00\x01garbage"))
        hold = f"R{i}"
        batch.append(reservation(2 * i, hold, "created", "SKU2", "S1", at, 1, at + 60_000))
        batch.append(reservation(2 * i + 1, hold, "released", "SKU2", "S1", at + 500))
        produce(dep.settings, batch)
        i += 1
        stop.wait(0.2)


def test_every_panel_has_data_and_the_probes_answer(erp: ErpSim, deployment: Deployment) -> None:
    deployment.env.update(FAST_EVENT_TIME)
    erp.start()
    worker = deployment.start_worker()
    redis_sink, redis_port = start_redis_sink(deployment)
    dispatcher, erp_port = start_dispatcher(deployment, erp, "erp-dispatcher")
    processes = {"worker": worker, "redis sink": redis_sink, "ERP dispatcher": dispatcher}
    read_model = RedisReadModel.from_settings(deployment.settings)  # the deployment's key prefix
    base = f"http://127.0.0.1:{deployment.web_ports['w1']}"

    def running(check: object) -> object:
        exited = {name: p.returncode for name, p in processes.items() if p.poll() is not None}
        assert not exited, f"exited: {exited}\n{deployment.logs()}"
        return check

    stop = threading.Event()
    load = threading.Thread(target=_steady_load, args=(deployment, stop), daemon=True)
    try:
        poll_until(lambda: running(_ready(base)), 120, "the worker to be ready")
        assert _get(f"{base}/livez") == (200, {"status": "alive"})
        load.start()
        poll_until(
            lambda: running(b"invsync_event_to_publish_seconds_count" in _metrics(base)),
            60,
            "the worker to publish",
        )
        redis_metrics = f"http://127.0.0.1:{redis_port}/metrics"
        erp_metrics = f"http://127.0.0.1:{erp_port}/metrics"
        applied = {"sink": "redis", "outcome": "applied"}
        poll_until(
            lambda: running(_sample(redis_metrics, "invsync_sink_records_total", **applied)),
            60,
            "the Redis sink to write availability records",
        )
        poll_until(
            lambda: running(
                _sample(erp_metrics, "invsync_erp_deltas_accepted_total")
                and erp.state()["accepted"]
            ),
            60,
            "the ERP to accept stock deltas",
        )
        out = io.StringIO()
        missing = dashboard_live.run(
            [
                dashboard_live.Target.parse(f"{base}/metrics"),  # job "invsync"
                dashboard_live.Target.parse(f"invsync-redis-sink={redis_metrics}"),
                dashboard_live.Target.parse(f"invsync-erp={erp_metrics}"),
            ],
            port=free_port(),
            timeout=90,
            out=out,
        )
        running(None)
    finally:
        stop.set()
        if load.is_alive():
            load.join(30)
        deployment.stop_worker(redis_sink)  # before its keys go (the fixture stops the rest)
        delete_keys(read_model)
        read_model.close()
    assert missing == [], out.getvalue()


def _metrics(base: str) -> bytes:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        return bytes(response.read())


def _sample(url: str, name: str, **labels: str) -> float:
    """One sample's value on a /metrics page (0 while it is absent or the page is not up)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0
