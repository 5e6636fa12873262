"""``writes-client send``: a file of JSON lines into the log, once, even when sent twice."""

from __future__ import annotations

import io
import json
import time

import pytest
from writes_client.cli import send_file

from tests.conftest import ALL_DATABASES, make_tenant
from tests.edge import shared_server
from writes.models import WriteLog

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)]


def test_cli_sends_a_file_once_even_when_sent_again(live_worker, tmp_path):
    tenant = make_tenant("client-cli")
    lines = [json.dumps({"name": "imported", "properties": {"line": n}}) for n in range(2500)]
    lines.insert(1000, "{not json")
    lines.insert(2000, "")
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")

    def rows() -> list[tuple[str, int]]:
        log = WriteLog.objects.using(tenant.shard).filter(tenant_id=tenant.tenant.id)
        return [
            (str(write_id), payload["properties"]["line"])
            for write_id, payload in log.values_list("write_id", "payload")
        ]

    outputs = []
    for _ in range(2):
        out = io.StringIO()
        status = send_file(
            str(path), kind="events", url=shared_server().url, api_key=tenant.api_key, batch=500, out=out
        )
        outputs.append(out.getvalue())
        assert status == 1, "the broken line must make the run fail"
        deadline = time.monotonic() + 30
        while len(rows()) < 2500 and time.monotonic() < deadline:
            time.sleep(0.1)

    assert "2501 lines, 2500 accepted, 1 not accepted" in outputs[0]
    assert "invalid: line 1001" in outputs[0]
    assert "100.0%" in outputs[0]
    time.sleep(1)
    applied = rows()
    assert len(applied) == 2500, "sending the file again added writes"
    assert sorted(line for _, line in applied) == list(range(2500))
