# -*- test-case-name: tests.test_connlog -*-
"""
One log event per connection: service, peer, outcome, bytes and duration,
in the spirit of the book's C{Server connected by ... at ...} line.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from netd.listeners import describeAddress


class LoggedConnection(ProtocolWrapper):
    """
    Count a connection's bytes both ways and log them when it ends.

    Half-closes pass through to a wrapped protocol that accepts them
    (Twisted's own L{ProtocolWrapper} would close the whole connection).
    """

    log = Logger()
    factory: ConnectionLoggingFactory
    wrappedProtocol: Any

    bytesIn = 0
    bytesOut = 0
    started = 0.0

    def makeConnection(self, transport: Any) -> None:
        self.started = self.factory.clock.seconds()
        super().makeConnection(transport)
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            alsoProvides(self, IHalfCloseableProtocol)

    def readConnectionLost(self) -> None:
        self.wrappedProtocol.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.wrappedProtocol.writeConnectionLost()

    def dataReceived(self, data: bytes) -> None:
        self.bytesIn += len(data)
        self.wrappedProtocol.dataReceived(data)

    def write(self, data: bytes) -> None:
        self.bytesOut += len(data)
        self.transport.write(data)

    def writeSequence(self, data: Any) -> None:
        data = list(data)
        self.bytesOut += sum(map(len, data))
        self.transport.writeSequence(data)

    def sentDirectly(self, count: int) -> None:
        """
        Count bytes the wrapped protocol sent straight to the socket, past
        this wrapper (getfile's C{os.sendfile}; see
        L{netd.getfile.reportSentDirectly}).
        """
        self.bytesOut += count

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.log.info(
            "{service} {peer} {outcome}: {bytesIn} bytes in, {bytesOut} bytes out, "
            "{duration:.3f}s",
            service=self.factory.serviceName,
            peer=describeAddress(self.getPeer()),
            outcome=(
                "closed" if reason.check(ConnectionDone) else reason.getErrorMessage()
            ),
            bytesIn=self.bytesIn,
            bytesOut=self.bytesOut,
            duration=self.factory.clock.seconds() - self.started,
        )


class ConnectionLoggingFactory(WrappingFactory):
    """
    Wrap a service's factory so that each of its connections is logged.
    """

    protocol = LoggedConnection
    noisy = False

    def __init__(self, serviceName: str, wrappedFactory: Any, clock: Any) -> None:
        """
        @param serviceName: the netd service, for the log.
        @param wrappedFactory: the service's own factory.
        @param clock: an L{IReactorTime} for durations.
        """
        super().__init__(wrappedFactory)
        self.serviceName = serviceName
        self.clock = clock

    def logPrefix(self) -> str:
        return self.serviceName
