"""Reports from workflows (``report_status``) waiting for reconcile to write
them, by execution key *and* uid: a report of a deleted object must never be
acknowledged in place of the one of the new object of the same name.

``submit`` returns a future that is True once the report was written (or is
moot: the object it is about is gone), False when this replica stopped leading
first (Temporal then retries the activity on the leader).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from agentexec.conditions import TERMINAL
from agentexec.temporal.types import StatusReport

Key = tuple[str, str]


@dataclass
class _Pending:
    report: StatusReport
    waiters: list[asyncio.Future[bool]] = field(default_factory=list)


class Reports:
    def __init__(self) -> None:
        self._pending: dict[Key, dict[str, _Pending]] = {}

    def submit(self, report: StatusReport) -> asyncio.Future[bool]:
        key = (report.ref.namespace, report.ref.name)
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        by_uid = self._pending.setdefault(key, {})
        pending = by_uid.get(report.ref.uid)
        superseded = (
            pending is not None
            and pending.report.result.phase in TERMINAL
            and report.result.phase not in TERMINAL
        )
        if pending is not None and superseded:
            # A late progress report after the end: the end stands.
            pending.waiters.append(waiter)
        else:
            # A new object (not mutated): a reconcile already holding the old
            # one will not mistake it for what it applied.
            waiters = [*(pending.waiters if pending else []), waiter]
            by_uid[report.ref.uid] = _Pending(report, waiters)
        return waiter

    def for_key(self, key: Key, uid: str) -> StatusReport | None:
        """The report to decide on: the one of the object with ``uid``, else one
        of another object of the same name (the planner reads the object, and
        finds it moot or ours)."""
        by_uid = self._pending.get(key)
        if not by_uid:
            return None
        pending = by_uid.get(uid) or next(iter(by_uid.values()))
        return pending.report

    def resolve(self, report: StatusReport) -> None:
        """``report`` is written (or moot): its waiters return. A newer report
        that replaced it meanwhile stays."""
        key = (report.ref.namespace, report.ref.name)
        by_uid = self._pending.get(key, {})
        pending = by_uid.get(report.ref.uid)
        if pending is None or pending.report is not report:
            return
        del by_uid[report.ref.uid]
        if not by_uid:
            self._pending.pop(key, None)
        _settle(pending, True)

    def drop(self, key: Key, uid: str | None = None) -> None:
        """The object is gone: its reports are moot (acknowledged)."""
        by_uid = self._pending.get(key)
        if not by_uid:
            return
        for report_uid in [u for u in by_uid if uid is None or u == uid]:
            _settle(by_uid.pop(report_uid), True)
        if not by_uid:
            self._pending.pop(key, None)

    def has(self, key: Key) -> bool:
        return bool(self._pending.get(key))

    def fail_all(self) -> None:
        """Leadership lost: every waiter fails, and Temporal retries on the leader."""
        for by_uid in self._pending.values():
            for pending in by_uid.values():
                _settle(pending, False)
        self._pending.clear()

    def __len__(self) -> int:
        return sum(len(by_uid) for by_uid in self._pending.values())


def _settle(pending: _Pending, written: bool) -> None:
    for waiter in pending.waiters:
        if not waiter.done():
            waiter.set_result(written)
