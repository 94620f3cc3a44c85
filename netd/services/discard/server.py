# -*- test-case-name: tests.services.discard.test_discard -*-
"""
The discard service (RFC 863): everything received is thrown away, and
nothing is ever sent.

Over a stream, each connection is read at no more than a set number of
bytes a second (a token bucket holding one second's worth): past that,
netd stops reading from it until the bucket has refilled, so the kernel's
buffers fill and TCP slows the sender down. The connection log counts the
bytes read. Over UDP, datagrams are counted and dropped.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from netd.plugin import IGracefulProtocol
from netd.throttledlog import ThrottledLog

#: Bytes a second read from one connection, by default: 1 MiB.
DEFAULT_READ_RATE = 1 << 20


@implementer(IGracefulProtocol)
class DiscardProtocol(Protocol):
    """
    Read and drop one connection's bytes, at most C{factory.readRate} a
    second.

    @ivar factory: the L{DiscardFactory}.
    @ivar pauses: how many times reading paused for the rate.
    """

    factory: DiscardFactory
    transport: Any
    pauses = 0

    def __init__(self) -> None:
        self._tokens = 0.0
        self._last = 0.0
        self._resume: Any = None

    def connectionMade(self) -> None:
        self._last = self.factory.clock.seconds()
        self._tokens = float(self.factory.readRate)

    def dataReceived(self, data: bytes) -> None:
        rate = self.factory.readRate
        now = self.factory.clock.seconds()
        self._tokens = min(float(rate), self._tokens + (now - self._last) * rate)
        self._tokens -= len(data)
        self._last = now
        if self._tokens < 0 and self._resume is None:
            self.pauses += 1
            if self.pauses == 1:
                self.factory.overRate(self.transport)
            self.transport.pauseProducing()
            self._resume = self.factory.clock.callLater(
                -self._tokens / rate, self._resumeReading
            )

    def _resumeReading(self) -> None:
        self._resume = None
        self.transport.resumeProducing()

    def stopGracefully(self) -> None:
        """
        Nothing is ever in flight: close now.
        """
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None


class DiscardFactory(Factory):
    """
    Make L{DiscardProtocol}s.

    @ivar clock: an L{IReactorTime}, for the read rate.
    @ivar readRate: bytes a second read from each connection.
    """

    protocol = DiscardProtocol  # type: ignore[assignment]
    noisy = False
    log = Logger()

    def __init__(self, clock: Any, readRate: int = DEFAULT_READ_RATE) -> None:
        if readRate <= 0:
            raise ValueError(f"the read rate must be positive, not {readRate!r}")
        self.clock = clock
        self.readRate = readRate
        self._rateLog = ThrottledLog(clock, interval=1.0, lines=10)

    def overRate(self, transport: Any) -> None:
        """
        Log (throttled) that a connection first went over the read rate.
        """
        from netd.listeners import describeAddress

        self._rateLog.emit(
            self.log.info,
            "discard: {peer} sends faster than {rate} bytes/s; reading from "
            "it pauses while it is over",
            peer=describeAddress(transport.getPeer()),
            rate=self.readRate,
        )


class DiscardDatagramProtocol(DatagramProtocol):
    """
    Count and drop every datagram; never answer.

    @ivar datagrams: datagrams received.
    @ivar bytes: bytes received in them.
    """

    noisy = False

    def __init__(self) -> None:
        self.datagrams = 0
        self.bytes = 0

    def logPrefix(self) -> str:
        return "discard"

    def datagramReceived(self, data: bytes, address: Any) -> None:
        self.datagrams += 1
        self.bytes += len(data)
