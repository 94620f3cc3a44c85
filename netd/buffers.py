# -*- test-case-name: tests.test_buffers -*-
"""
The daemon-wide budget of client data held in memory (C{--max-buffered}):
requests buffered whole before they are handled, replies waiting for a
client that does not read. Each connection's own limits keep one client
small; this keeps all of them together from exhausting netd's memory.

A service charges what it holds to its connection (the I{owner}) and
releases it when done: L{BufferBudget.charge} always succeeds (for small
amounts a service cannot refuse without breaking its protocol),
L{BufferBudget.reserve} refuses when the budget would be exceeded (for a
large request, which the service then refuses). L{BufferBudget.greediest}
names the owner holding the most, for a service that would rather close it.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.logger import Logger

from netd.throttledlog import ThrottledLog

DEFAULT_MAX_BUFFERED = 256 * 1024 * 1024


class BufferBudget:
    """
    Bytes of client data held, against a limit.

    @ivar limit: the most bytes that L{reserve} lets be held at once.
    @ivar used: the bytes held now.
    @ivar refusals: how many reservations were refused.
    """

    log = Logger()

    def __init__(self, limit: int = DEFAULT_MAX_BUFFERED, clock: Any = None) -> None:
        """
        @param clock: an L{IReactorTime} for throttling the refusals' log
            lines (C{time.monotonic} by default).
        """
        self.limit = limit
        self.used = 0
        self.refusals = 0
        self._held: dict[object, int] = {}
        self._refusalLog = ThrottledLog(
            clock if clock is not None else _MonotonicClock(), interval=1.0, lines=10
        )

    def setLimit(self, limit: int) -> None:
        """
        Change the limit (on reload): what is held stays held.
        """
        self.limit = limit

    def charge(self, owner: object, amount: int) -> None:
        """
        Count C{amount} bytes held by C{owner}, whatever the limit.
        """
        self.used += amount
        held = self._held
        held[owner] = held.get(owner, 0) + amount

    def reserve(self, owner: object, amount: int, what: str = "a request") -> bool:
        """
        Count C{amount} bytes held by C{owner} if the limit allows; else log
        the refusal (throttled) and count nothing.

        @param what: what is refused, for the log.
        @return: whether the bytes were counted.
        """
        if self.used + amount <= self.limit:
            self.charge(owner, amount)
            return True
        self.refusals += 1
        self._refusalLog.emit(
            self.log.warn,
            "buffer budget of {limit} bytes spent ({used} held): refusing "
            "{what} of {amount} bytes",
            limit=self.limit,
            used=self.used,
            what=what,
            amount=amount,
        )
        return False

    def release(self, owner: object, amount: int) -> None:
        """
        C{owner} no longer holds C{amount} of its bytes.
        """
        held = self._held.get(owner, 0)
        amount = min(amount, held)
        self.used -= amount
        if held - amount:
            self._held[owner] = held - amount
        else:
            self._held.pop(owner, None)

    def releaseAll(self, owner: object) -> None:
        """
        C{owner} is gone: release everything it held.
        """
        self.used -= self._held.pop(owner, 0)

    def held(self, owner: object) -> int:
        """
        The bytes C{owner} holds.
        """
        return self._held.get(owner, 0)

    def greediest(self) -> object | None:
        """
        The owner holding the most bytes, or L{None} when none holds any.
        """
        if not self._held:
            return None
        return max(self._held, key=self._held.__getitem__)


class _MonotonicClock:
    def seconds(self) -> float:
        return time.monotonic()


def returnFreedBuffers(threshold: int = 128 * 1024) -> bool:
    """
    Have glibc's C{malloc} serve every allocation over C{threshold} bytes
    with its own C{mmap}, so that a client's large buffer goes back to the
    system once freed (by default glibc raises this threshold after the
    first large free, and RSS then stays at its peak after a flood).
    Nothing elsewhere than glibc.

    @return: whether the setting was applied.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    M_MMAP_THRESHOLD = -3
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


DAEMON = BufferBudget()
"""netd's own budget; L{netd.tap} sets its limit from C{--max-buffered}."""
