"""The operations page (staff only, in a real headless browser) and its figures, and the extension point
through which the read side reports projection lag and repair runs."""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.conftest import ALL_DATABASES, make_tenant
from tests.stack import ROOT
from writes.apply import apply_batch
from writes.models import WriteLog
from writes.operations import ProjectionStatus, forget_cached_overview

NOW = datetime.now(UTC).isoformat()
PASSWORD = "operations-test-password"


@pytest.fixture(autouse=True)
def fresh_overview():
    forget_cached_overview()
    yield
    forget_cached_overview()


def apply_events(shard: str, count: int) -> int:
    """Apply ``count`` events to ``shard`` through the real applier; returns the log's last position."""
    tenant = uuid.uuid4()
    rows = [[str(uuid.uuid4()), "page_view", "{}", NOW] for _ in range(count)]
    apply_batch(shard=shard, groups=[[str(tenant), "event", NOW, rows]])
    return int(WriteLog.objects.using(shard).order_by("-position").values_list("position", flat=True)[0])


def example_projection_source(shard: str) -> list[ProjectionStatus]:
    """A stand-in for the read side's source, used only to prove the extension point is wired."""
    return [
        ProjectionStatus(shard=shard, projection="event_counts", lag_positions=7, lag_seconds=1.5, last_repair_drift=2)
    ]


@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_operations_page_is_for_staff_only():
    response = Client().get("/admin/operations/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
    User.objects.create_user("viewer", password=PASSWORD)
    client = Client()
    client.login(username="viewer", password=PASSWORD)
    assert client.get("/admin/operations/data").status_code == 302


@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_operations_data_reports_each_shard_and_registered_projection_sources(settings):
    settings.WRITES_PROJECTION_STATUS_SOURCES = ["tests.writes.test_operations.example_projection_source"]
    last = apply_events("shard_1", 25)
    User.objects.create_superuser("ops", password=PASSWORD)
    client = Client()
    client.login(username="ops", password=PASSWORD)
    data = client.get("/admin/operations/data").json()
    shards = {s["shard"]: s for s in data["shards"]}
    assert set(shards) == {"shard_0", "shard_1"}
    assert shards["shard_1"]["last_position"] == last
    assert shards["shard_1"]["rows_per_second"] > 0
    assert shards["shard_1"]["queue_depth"] is not None
    assert shards["shard_1"]["projections"] == [
        {
            "projection": "event_counts",
            "checkpoint": None,
            "lag_positions": 7,
            "lag_seconds": 1.5,
            "last_repair_at": None,
            "last_repair_drift": 2,
        }
    ]
    metrics = Client().get("/metrics").content.decode()
    assert 'writes_projection_lag_positions{projection="event_counts",shard="shard_1"} 7.0' in metrics
    assert 'writes_repair_last_drift_rows{projection="event_counts",shard="shard_1"} 2.0' in metrics


def chromium_driver() -> Any:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("chromium and chromedriver are not installed: run `make browser` (CI's .ci/run does).")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,800"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def shards_table(driver: Any) -> dict[str, dict[str, str]]:
    """The shards table as the page shows it now: shard → {last_position, queue_depth} (text)."""
    found: dict[str, dict[str, str]] = driver.execute_script(
        """
        const rows = {};
        for (const tr of document.querySelectorAll("#shards tbody tr")) {
            const text = (selector) => (tr.querySelector(selector) || {}).textContent || "";
            rows[tr.dataset.shard] = {last_position: text(".last-position"), queue_depth: text(".queue-depth")};
        }
        return rows;
        """
    )
    return found


def digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


@pytest.mark.e2e
@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_operations_page_in_a_browser_shows_shards_and_refreshes_itself(live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    make_tenant("acme")
    apply_events("shard_0", 300)
    apply_events("shard_1", 120)
    User.objects.create_superuser("ops", password=PASSWORD)
    driver = chromium_driver()
    try:
        driver.get(f"{live_server.url}/admin/operations/?refresh=1")
        # Staff only: the admin asks for a login first, then comes back to the page.
        driver.find_element(By.NAME, "username").send_keys("ops")
        driver.find_element(By.NAME, "password").send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        wait = WebDriverWait(driver, 15)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-shard="shard_1"]'))
        # The page redraws its table every second, replacing the rows: each check reads the table afresh,
        # in one script call (so a redraw cannot happen halfway), rather than keeping elements around.
        position = WriteLog.objects.using("shard_0").order_by("-position").values_list("position", flat=True)[0]
        wait.until(lambda d: digits(shards_table(d).get("shard_0", {}).get("last_position", "")) == str(position))
        table = shards_table(driver)
        assert set(table) == {"shard_0", "shard_1"}
        assert table["shard_0"]["queue_depth"] not in ("", "—")
        assert "Dead-letter queue" in driver.find_element(By.ID, "operations").text

        # New writes show up without reloading the page.
        newer = apply_events("shard_0", 40)
        WebDriverWait(driver, 10).until(
            lambda d: digits(shards_table(d).get("shard_0", {}).get("last_position", "")) == str(newer),
            "the page did not refresh itself",
        )

        shots = ROOT / "var" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shots / "operations-page.png"))
        if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
            driver.save_screenshot(str(Path(ROOT) / "docs" / "operations-page.png"))
        assert (shots / "operations-page.png").stat().st_size > 10_000
    finally:
        driver.quit()


def test_time_to_drain_is_depth_over_message_rate_and_infinite_when_stalled():
    import math

    from writes.operations import ShardStatus

    def status(depth: int, per_second: float, idle: float | None) -> ShardStatus:
        return ShardStatus(
            shard="shard_0",
            queue="q",
            logical_shards=1,
            queue_depth=depth,
            batches_per_second=per_second,
            idle_seconds=idle,
        )

    assert status(120, 4.0, 0.5).seconds_to_drain == 30.0
    assert status(0, 0.0, None).seconds_to_drain == 0.0
    assert math.isinf(status(10, 0.0, None).seconds_to_drain or 0)  # nothing ever applied
    assert math.isinf(status(10, 2.0, 60.0).seconds_to_drain or 0)  # a rate from a minute ago, nothing since


@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_writes_status_prints_each_shard_and_the_busiest_logical_shards():
    import io

    from django.core.management import call_command

    from writes.routing import logical_shard_for

    tenant = uuid.uuid4()
    rows = [[str(uuid.uuid4()), "page_view", "{}", NOW] for _ in range(30)]
    apply_batch(shard="shard_0", groups=[[str(tenant), "event", NOW, rows]])
    output = io.StringIO()
    call_command("writes_status", stdout=output)
    lines = output.getvalue().splitlines()
    assert lines[0].split()[:3] == ["shard", "depth", "consumers"]
    assert [line.split()[0] for line in lines[1:] if line[:1].strip()][:2] == ["shard_0", "shard_1"]
    assert "projection event_counts: checkpoint" in output.getvalue()
    busiest = io.StringIO()
    call_command("writes_status", "--busiest", "shard_0", stdout=busiest)
    assert busiest.getvalue().splitlines()[1].split() == [str(logical_shard_for(tenant)), "30"]
