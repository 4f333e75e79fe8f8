"""The ERP dispatcher's pure parts: what an answer means, the request body, settings checks."""

from __future__ import annotations

from typing import Any

import pytest

from invsync.settings import SettingsError, load_settings
from sinks.erp import check_erp_url, classify, delta_body, iso_millis, retry_after_s

RECORD: dict[str, Any] = {
    "delta_id": "d-1", "sku": "A", "location": "S1", "net_quantity": -2,
    "reasons": {"sale": -3, "receipt": 1}, "window_start": 1_700_000_000_123,
    "window_end": 1_700_000_060_123,
}  # fmt: skip


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, "accepted"), (201, "accepted"), (202, "accepted"), (204, "accepted"),
        (400, "rejected"), (409, "rejected"), (413, "rejected"), (422, "rejected"),
        # the caller's problem or "later", never the delta's: retried, never dead-lettered
        (301, "retry"), (401, "retry"), (403, "retry"), (404, "retry"), (408, "retry"),
        (429, "retry"), (500, "retry"), (502, "retry"), (503, "retry"), (504, "retry"),
    ],
)  # fmt: skip
def test_only_answers_about_the_delta_itself_are_final(status: int, verdict: str) -> None:
    assert classify(status) == verdict


def test_timestamps_are_iso_utc_with_exact_milliseconds() -> None:
    assert iso_millis(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert iso_millis(0) == "1970-01-01T00:00:00.000Z"
    # float division would give .122 here (1700000000.1229999...)
    assert all(iso_millis(1_700_000_000_000 + ms).endswith(f".{ms:03d}Z") for ms in range(1000))


def test_the_body_is_deterministic_and_complete() -> None:
    body = delta_body(RECORD)
    assert body == {
        "delta_id": "d-1", "sku": "A", "location": "S1", "net_quantity": -2,
        "reasons": {"receipt": 1, "sale": -3}, "window_start": "2023-11-14T22:13:20.123Z",
        "window_end": "2023-11-14T22:14:20.123Z",
    }  # fmt: skip
    assert list(body["reasons"]) == ["receipt", "sale"]  # sorted: same record, same bytes
    assert delta_body(dict(reversed(RECORD.items()))) == body


@pytest.mark.parametrize(
    "record",
    [
        {k: v for k, v in RECORD.items() if k != "delta_id"},
        RECORD | {"reasons": [1, 2]},
        RECORD | {"net_quantity": "many"},
    ],
)
def test_a_record_that_is_not_a_stock_delta_raises(record: dict[str, Any]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        delta_body(record)


def test_retry_after_in_seconds_is_read_and_dates_are_ignored() -> None:
    assert retry_after_s("3") == 3.0
    assert retry_after_s(" 10 ") == 10.0
    assert retry_after_s("Wed, 21 Oct 2026 07:28:00 GMT") is None
    assert retry_after_s(None) is None


@pytest.mark.parametrize("value", ["ftp://erp/x", "erp.example.com/v1", "http://", "::"])
def test_a_bad_erp_url_stops_start_up_naming_the_variable(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        check_erp_url(load_settings(erp_url=value))
    assert "INVSYNC_ERP_URL" in caught.value.message


def test_a_good_erp_url_passes() -> None:
    check_erp_url(load_settings(erp_url="https://erp.example.com/v1/stock-deltas"))
