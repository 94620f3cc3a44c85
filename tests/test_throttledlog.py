"""
Tests for L{netd.throttledlog}, and for the log lines a flood can cause.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from netd.datagram import PerSourceRateLimiter
from netd.services.echo.server import EchoDatagramProtocol, EchoReplies
from netd.throttledlog import ThrottledLog


class ThrottledLogTests(SynchronousTestCase):
    """
    L{ThrottledLog} lets one line through per interval.
    """

    def test_oncePerInterval(self) -> None:
        """
        Of many lines within the interval, only the first is logged; the
        first after it says how many were held back.
        """
        clock = Clock()
        throttle = ThrottledLog(clock, interval=60)
        log = Logger()
        with capturedLogs() as events:
            for n in range(100):
                throttle.emit(log.info, "line {n}", n=n)
            clock.advance(59)
            throttle.emit(log.info, "line {n}", n=100)
            clock.advance(1)
            throttle.emit(log.info, "line {n}", n=101)
        self.assertEqual(
            [formatEvent(event) for event in events],
            ["line 0", "line 101 (100 more like it held back)"],
        )

    def test_linesPerWindow(self) -> None:
        """
        With C{lines}, that many lines pass in each window.
        """
        clock = Clock()
        throttle = ThrottledLog(clock, interval=1, lines=3)
        log = Logger()
        with capturedLogs() as events:
            for n in range(5):
                throttle.emit(log.info, "line {n}", n=n)
            clock.advance(1)
            throttle.emit(log.info, "line {n}", n=5)
        self.assertEqual(
            [formatEvent(event) for event in events],
            ["line 0", "line 1", "line 2", "line 5 (2 more like it held back)"],
        )


class DatagramFloodTests(SynchronousTestCase):
    """
    A flood of datagrams that are dropped makes one log line a minute.
    """

    def test_dropsThrottled(self) -> None:
        """
        A thousand datagrams from a reflection port, or over the rate, are
        all dropped, and logged once.
        """
        clock = Clock()
        protocol = EchoDatagramProtocol(
            EchoReplies(clock), PerSourceRateLimiter(clock, rate=1, burst=1)
        )
        sent: list[Any] = []
        protocol.transport = type("T", (), {"write": lambda _, *a: sent.append(a)})()
        with capturedLogs() as events:
            for _ in range(500):
                protocol.datagramReceived(b"x", ("192.0.2.1", 7))
            for _ in range(500):
                protocol.datagramReceived(b"x", ("192.0.2.2", 40000))
        self.assertEqual(len(sent), 1)
        self.assertEqual(protocol.dropped, 999)
        self.assertEqual(len(events), 1)
        self.assertIn("dropped a datagram", formatEvent(events[0]))
