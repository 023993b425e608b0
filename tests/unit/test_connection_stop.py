"""Stopping the Temporal connection always ends, whatever its loops were doing
(found by CI: an operator test's teardown waited 600 s on a manager whose
Temporal had been killed).

Python 3.11's ``asyncio.wait_for`` drops a cancellation that arrives as the
awaited call finishes (it returns the result instead): a probe that failed
fast (connection refused) at the moment of stop() kept its loop probing for
good, and stop() (the pod's shutdown) waited forever. The loops use
``asyncio.timeout`` instead, which keeps the cancellation.
"""

from __future__ import annotations

import asyncio

from agentexec.metrics import Metrics
from agentexec.settings import TemporalSettings
from agentexec.temporal.connection import Connection
from localenv.procs import free_port


async def test_stop_ends_even_when_it_lands_as_a_probe_finishes() -> None:
    # Nothing listens: every probe fails at once, so stops land on finishing
    # probes often; 300 stops at staggered moments (28 of them hung before).
    address = f"127.0.0.1:{free_port()}"
    fast = TemporalSettings(
        address=address, probe_interval=0.001, probe_interval_disconnected=0.001
    )
    hung = 0
    for n in range(300):
        connection = Connection(fast, Metrics())
        connection.start()
        await asyncio.sleep(0.003 * (n % 7))
        try:
            async with asyncio.timeout(2):
                await connection.stop()
        except TimeoutError:
            hung += 1
            for task in asyncio.all_tasks():  # cancelled again, so the test ends
                if task.get_name().startswith("temporal-"):
                    task.cancel()
    assert hung == 0, f"{hung} of 300 stops never ended"
