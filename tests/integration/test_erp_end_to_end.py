"""Input events to the ERP, end to end (issue 5): the worker nets stock deltas, the dispatcher
delivers them to the ERP simulator, and the worker is SIGKILLed mid-stream and restarted.

The ERP must end with every delta id applied exactly once and, per sku-location, a net quantity
equal to the on hand of a reference fold written separately over the input events.
"""

from __future__ import annotations

import signal

from streams import topics
from tests.integration.conftest import Deployment
from tests.integration.kafka_io import poll_until, produce
from tests.integration.test_erp_delivery import (
    ErpSim,
    assert_applied_once,
    dead_letters,
    start_dispatcher,
)
from tests.integration.test_worker_e2e import (
    MINUTE,
    T0,
    Item,
    Mismatch,
    as_events,
    movement,
    workload,
)
from tests.reference import reference_positions


def test_erp_net_equals_the_reference_on_hand_across_a_worker_kill(
    deployment: Deployment, erp: ErpSim
) -> None:
    # two days: each ends with one receipt per key, which moves event time on so that every
    # netting window before it closes (a quiet input topic holds time back by the skew bound)
    day = 24 * 60 * MINUTE
    first, second = workload(seed=11, n=600), workload(seed=12, n=600, start=T0 + day + MINUTE)
    keys = sorted({key for _, key, _ in first + second})

    def closing(at: int, ids: int) -> list[Item]:
        return [
            movement(ids + i, *topics.split_key(key), at, "RECEIPT", 1)
            for i, key in enumerate(keys)
        ]

    erp.start()
    start_dispatcher(deployment, erp, "erp-1")
    produce(deployment.settings, first + closing(T0 + day, 200_000))
    worker = deployment.start_worker("w1")
    poll_until(lambda: len(erp.state()["accepted"]) >= 10, 120, "deltas reaching the ERP")
    produce(deployment.settings, second)
    deployment.stop_worker(worker, signal.SIGKILL)  # mid-stream: batches folded, not committed
    deployment.start_worker("w1")
    produce(deployment.settings, closing(T0 + 2 * day, 300_000))
    # every window closes but the last receipts' own: nothing comes after them
    settled = first + closing(T0 + day, 200_000) + second
    reference = reference_positions(as_events(settled))
    expected = {key: on_hand for key, (on_hand, _) in reference.items()}

    def erp_has_the_reference() -> bool | Mismatch:
        net = erp.state()["net"]
        wrong = {k: (v, net.get(k)) for k, v in expected.items() if net.get(k, 0) != v}
        return (
            True if not wrong else Mismatch(keys_wrong=len(wrong), sample=list(wrong.items())[:5])
        )

    try:
        poll_until(erp_has_the_reference, 240, "the ERP's net = the reference on hand")
    except AssertionError:
        print(deployment.logs())
        raise
    state = assert_applied_once(erp)
    assert len(state["accepted"]) > len(keys), "deltas of several windows per key"
    assert dead_letters(deployment) == []
