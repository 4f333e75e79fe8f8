"""Every dashboard panel returns data from a real Prometheus scraping a real worker under load,
and the worker's probes answer (issue 6).

Panels whose metrics belong to features not built yet are listed in ``NOT_YET_EMITTED``; the
test asserts the set of empty panels is exactly that, so a panel that goes dark — or a feature
that lands without its panel being taken off the list — fails here.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import urllib.error
import urllib.request

import pytest

from ops import dashboard_live
from streams import topics
from tests.integration.conftest import Deployment
from tests.integration.kafka_io import poll_until, produce
from tests.integration.test_reservations_e2e import reservation
from tests.integration.test_worker_e2e import T0, count, sale

# (row, panel) of panels fed by metrics of later features: ERP delivery and the Redis read model
# (channels & sinks issue).
NOT_YET_EMITTED = {
    ("Sinks", "ERP deltas accepted"),
    ("Sinks", "Redis write errors"),
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


def test_every_panel_has_data_and_the_probes_answer(deployment: Deployment) -> None:
    deployment.start_worker()
    base = f"http://127.0.0.1:{deployment.web_ports['w1']}"
    poll_until(lambda: _ready(base), 120, "the worker to be ready")
    assert _get(f"{base}/livez") == (200, {"status": "alive"})
    stop = threading.Event()
    load = threading.Thread(target=_steady_load, args=(deployment, stop), daemon=True)
    load.start()
    try:
        poll_until(
            lambda: b"invsync_event_to_publish_seconds_count" in _metrics(base),
            60,
            "the worker to publish",
        )
        out = io.StringIO()
        missing = dashboard_live.run(
            [dashboard_live.Target.parse(f"{base}/metrics")], timeout=90, out=out
        )
    finally:
        stop.set()
        load.join(30)
    empty = {(query.row, query.panel) for query in missing}
    assert empty == NOT_YET_EMITTED, out.getvalue()


def _metrics(base: str) -> bytes:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        return bytes(response.read())
