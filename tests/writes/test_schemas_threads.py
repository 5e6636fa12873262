"""The first requests of a fresh API process arrive on many threads at once: validating them must not
crash the process (msgspec builds a type's validation info on first use; see ``prepare_item_type``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.stack import ROOT

FIRST_USE_FROM_16_THREADS = textwrap.dedent(
    """
    import threading
    from writes.schemas import EventIn, parse_writes

    body = b'{"batch": [' + b",".join(b'{"name": "x", "properties": {"n": %d}}' % i for i in range(200)) + b"]}"
    barrier = threading.Barrier(16)

    def validate():
        barrier.wait()
        parse_writes(body, EventIn, max_items=10_000)

    threads = [threading.Thread(target=validate) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("ok")
    """
)


def test_parse_writes_first_used_from_many_threads_at_once_does_not_crash_the_process():
    # A fresh interpreter each time: the crash happens only while the type is first prepared.
    for _ in range(5):
        run = subprocess.run(
            [sys.executable, "-c", FIRST_USE_FROM_16_THREADS], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, f"exit {run.returncode} (-11 is SIGSEGV):\n{run.stderr[-2000:]}"
        assert run.stdout.strip() == "ok"
