"""The inputs a black-box probe found answered 500 by ``GET /api/v1/stats/events``: each is a 400 with
the JSON error naming the field. (Before: a default span stepped back past year 1, offsets converted
past the ends of ``datetime``, ``int("²")`` raised, and a NUL reached PostgreSQL.)"""

from __future__ import annotations

import pytest

from tests.conftest import ALL_DATABASES, make_tenant

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("end=0001-01-01", "end"),
        ("start=0001-01-01T00:00%2B01:00", "start"),
        ("start=9999-12-31T23:59:59-14:00", "start"),
        ("min_position=%C2%B2", "min_position"),
        ("name=%00", "name"),
    ],
)
def test_stats_inputs_that_answered_500_answer_400_naming_the_field(query, field):
    tenant = make_tenant("stats-probe")
    response = tenant.client.get(f"/api/v1/stats/events?{query}")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in {detail["field"] for detail in error["details"]}
