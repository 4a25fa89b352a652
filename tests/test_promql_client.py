"""observer.promql.instant_query, the one Prometheus query client, against a real Prometheus."""

from __future__ import annotations

import httpx
import pytest
from support import Prometheus

from observer.analytics.cost import measured_energy_kwh
from observer.netutil import free_port
from observer.promql import QueryError, instant_query

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prom():
    prom = Prometheus([])
    yield prom
    prom.stop()


def test_a_result_vector_with_labels_and_values(prom) -> None:
    result = instant_query(prom.url, 'label_replace(vector(2.5), "gpu", "0", "", "")')
    assert [(r["metric"], float(r["value"][1])) for r in result] == [({"gpu": "0"}, 2.5)]
    at = instant_query(prom.url, "time()", at=1_000_000)  # a scalar answers [time, value]
    assert float(at[1]) == 1_000_000


def test_a_bad_expression_is_a_query_error_naming_it(prom) -> None:
    with pytest.raises(QueryError, match=r"sum\(") as caught:
        instant_query(prom.url, "sum(")
    assert "parse error" in str(caught.value)


def test_an_unreachable_server_is_an_http_error_and_cost_falls_back() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(httpx.HTTPError):
        instant_query(dead, "vector(1)", timeout=2)
    assert measured_energy_kwh(dead, 30) is None  # the cost report then estimates energy


def test_no_energy_series_means_no_measurement(prom) -> None:
    assert measured_energy_kwh(prom.url, 30) is None
