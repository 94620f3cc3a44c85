# -*- test-case-name: tests.test_throttledlog -*-
"""
Log lines that a client can cause at will (a dropped datagram, a refused
connection) are throttled: a flood must not become a flood of log lines,
filling the disk or the journal for the price of some forged packets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ThrottledLog:
    """
    Let one kind of log line through at most C{lines} times per
    C{interval}; the next line let through says how many were held back
    meanwhile (its field C{heldBack}).
    """

    def __init__(self, clock: Any, interval: float = 60.0, lines: int = 1) -> None:
        """
        @param clock: an L{IReactorTime}.
        @param interval: the length of the window, in seconds.
        @param lines: how many lines each window lets through.
        """
        self.clock = clock
        self.interval = interval
        self.lines = lines
        self.heldBack = 0
        self._windowStart: float | None = None
        self._sent = 0

    def emit(self, emitter: Callable[..., None], format: str, **fields: Any) -> None:
        """
        Log through C{emitter} (C{log.info}, C{log.debug}...) unless this
        window's lines are spent.
        """
        now = self.clock.seconds()
        if self._windowStart is None or now - self._windowStart >= self.interval:
            self._windowStart, self._sent = now, 0
        if self._sent >= self.lines:
            self.heldBack += 1
            return
        self._sent += 1
        heldBack, self.heldBack = self.heldBack, 0
        if heldBack:
            format += " ({heldBack} more like it held back)"
        emitter(format, heldBack=heldBack, **fields)
