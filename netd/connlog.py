# -*- test-case-name: tests.test_connlog -*-
"""
One log event per connection: service, peer, outcome, bytes and duration,
in the spirit of the book's C{Server connected by ... at ...} line.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure

from netd.listeners import describeAddress
from netd.metrics import NO_STREAM_METRICS, StreamListenerMetrics
from netd.wrappers import PassThroughWrapper


class LoggedConnection(PassThroughWrapper):
    """
    Count a connection's bytes both ways and log them when it ends, with
    the subject of the client's certificate when TLS verified one.

    @ivar metrics: its listener's, set by the L{netd.policy.PolicyFactory}
        that accepted it.
    """

    log = Logger()
    factory: ConnectionLoggingFactory
    wrappedProtocol: Any

    bytesIn = 0
    bytesOut = 0
    started = 0.0
    subject: str | None = None
    metrics: StreamListenerMetrics = NO_STREAM_METRICS

    def makeConnection(self, transport: Any) -> None:
        self.started = self.factory.clock.seconds()
        self.metrics.opened()
        super().makeConnection(transport)

    def handshakeCompleted(self) -> None:
        from netd.tls import peerSubject

        self.subject = peerSubject(self.transport)
        super().handshakeCompleted()

    def dataReceived(self, data: bytes) -> None:
        self.bytesIn += len(data)
        self.wrappedProtocol.dataReceived(data)

    def write(self, data: bytes) -> None:
        self.bytesOut += len(data)
        super().write(data)

    def sentDirectly(self, count: int) -> None:
        """
        Count bytes the wrapped protocol sent straight to the socket, past
        this wrapper (getfile's C{os.sendfile}; see
        L{netd.services.getfile.server.reportSentDirectly}).
        """
        self.bytesOut += count

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        duration = self.factory.clock.seconds() - self.started
        self.metrics.closed(self.bytesIn, self.bytesOut, duration)
        self.log.info(
            "{service} {peer}{certificate} {outcome}: {bytesIn} bytes in, "
            "{bytesOut} bytes out, {duration:.3f}s",
            service=self.factory.serviceName,
            peer=describeAddress(self.getPeer()),
            certificate="" if self.subject is None else f" ({self.subject})",
            subject=self.subject,
            outcome=_outcome(reason),
            bytesIn=self.bytesIn,
            bytesOut=self.bytesOut,
            duration=duration,
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
        self._emptyObservers: list[Deferred[None]] = []

    def logPrefix(self) -> str:
        return self.serviceName

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            observers, self._emptyObservers = self._emptyObservers, []
            for observer in observers:
                observer.callback(None)

    def whenEmpty(self) -> Deferred[None]:
        """
        Fire once none of this factory's connections is open (at once when
        none is).
        """
        if not self.protocols:
            return succeed(None)
        observer: Deferred[None] = Deferred()
        self._emptyObservers.append(observer)
        return observer


def _outcome(reason: Failure) -> str:
    """
    How a connection ended, in a few words: C{closed}, or the error (TLS
    errors by OpenSSL's reasons, C{TLS: peer did not return a certificate}).
    """
    if reason.check(ConnectionDone):
        return "closed"
    if type(reason.value).__module__ == "OpenSSL.SSL":
        from netd.tls import describeOpenSSLError

        return f"TLS: {describeOpenSSLError(reason.value)}"
    return reason.getErrorMessage()
