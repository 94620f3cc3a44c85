# -*- test-case-name: tests.test_connlog -*-
"""
The one wrapper between a transport and a service's protocol: it logs the
connection when it ends (service, peer, outcome, bytes and duration, in the
spirit of the book's C{Server connected by ... at ...} line), counts its
bytes, closes it when idle, writes eagerly, and, with an access policy
(L{netd.policy.PolicyFactory}), refuses clients the policy refuses.

Every per-connection duty lives in this one layer, because each layer costs
a Python call per chunk each way and a Twisted L{ProtocolWrapper} costs
more when the connection is made (it declares the transport's interfaces on
every instance). Interfaces are declared on the classes instead: a wrapper
class that accepts half-closes and one that does not, chosen per protocol.

A connection's life has three hook points on the factory, where counters
or further checks belong: L{ConnectionLoggingFactory.buildProtocol}
(accepted or refused), L{ConnectionLoggingFactory.refused} and
L{ConnectionLoggingFactory.connectionEnded}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.listeners import describeAddress
from netd.metrics import NO_STREAM_METRICS, StreamListenerMetrics
from netd.throttledlog import ThrottledLog
from netd.wrappers import writeThrough

#: The connection log's format, for readers of structured logs; the text
#: of each event is built once, by L{connectionLine}.
CONNECTION_FORMAT = (
    "{service} {peer}{certificate} {outcome}: {bytesIn} bytes in, "
    "{bytesOut} bytes out, {duration:.3f}s"
)


# Loggers named as before the wrappers were merged, so that the logs read
# alike. Not class attributes: a Logger there takes its class's name.
_connectionLog = Logger(namespace="netd.connlog.LoggedConnection")
_policyLog = Logger(namespace="netd.policy.PolicyFactory")


def connectionLine(
    service: str,
    peer: str,
    subject: str | None,
    outcome: str,
    bytesIn: int,
    bytesOut: int,
    duration: float,
) -> str:
    """
    The connection log's line, as L{CONNECTION_FORMAT} would format it.
    """
    certificate = "" if subject is None else f" ({subject})"
    return (
        f"{service} {peer}{certificate} {outcome}: {bytesIn} bytes in, "
        f"{bytesOut} bytes out, {duration:.3f}s"
    )


def sourceOf(address: Any) -> str | None:
    """
    The client host an address counts under for per-source limits: its IP
    address as text, an IPv4-mapped IPv6 address (C{::ffff:192.0.2.7}, a
    dual-stack socket's view of an IPv4 client) as the IPv4 address it
    maps; L{None} for an address without a host (a UNIX socket's).
    """
    host = getattr(address, "host", None)
    if host is not None and host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


class RefusedConnection(Protocol):
    """
    What a refused client gets instead of the service's protocol: its
    connection is aborted as soon as it is made.
    """

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        transport.abortConnection()


@implementer(IHandshakeListener)
class LoggedConnection(ProtocolWrapper):
    """
    One accepted connection, between its transport and the service's
    protocol: counted while open, its bytes counted both ways, closed when
    idle, and logged when it ends, with the subject of the client's
    certificate when TLS verified one.

    The idle timer restarts on every chunk received and every write; when
    it runs out the connection is closed, and aborted if it is still open
    after as long again (a peer that reads nothing).

    On a plain TCP transport, replies are written eagerly
    (L{netd.wrappers.writeEagerly}).

    @ivar peer: the client's address, as the listening port gave it.
    @ivar source: the client's host for per-source limits (L{sourceOf}).
    @ivar idleTimeout: seconds of silence before closing (0: never).
    @ivar metrics: its listener's (L{netd.metrics}), told when it opens and
        when it ends.
    """

    factory: ConnectionLoggingFactory
    wrappedProtocol: Any

    peer: Any = None
    source: str | None = None
    idleTimeout = 0.0
    bytesIn = 0
    bytesOut = 0
    started = 0.0
    subject: str | None = None
    metrics: StreamListenerMetrics = NO_STREAM_METRICS
    _socket: Any = None
    _idleCall: Any = None
    _lastActive = 0.0
    _closingIdle = False

    def makeConnection(self, transport: Any) -> None:
        # Not ProtocolWrapper's: it declares the transport's interfaces on
        # this instance, which costs more than the rest of a connection.
        self.transport = transport
        self.connected = 1
        if type(transport) is tcp.Server:
            self._socket = transport.socket
        factory = self.factory
        self.started = self._lastActive = factory.clock.seconds()
        factory.registerProtocol(self)
        self.metrics.opened()
        if self.idleTimeout > 0:
            self._idleCall = factory.clock.callLater(self.idleTimeout, self._idle)
        self.wrappedProtocol.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        self.bytesIn += len(data)
        if self._idleCall is not None:
            self._lastActive = self.factory.clock.seconds()
        self.wrappedProtocol.dataReceived(data)

    def write(self, data: bytes) -> None:
        self.bytesOut += len(data)
        if self._idleCall is not None:
            self._lastActive = self.factory.clock.seconds()
        writeThrough(self.transport, self._socket, data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def sentDirectly(self, count: int) -> None:
        """
        Count bytes the wrapped protocol sent straight to the socket, past
        this wrapper (getfile's C{os.sendfile}; see
        L{netd.services.getfile.server.reportSentDirectly}).
        """
        self.bytesOut += count

    def resetTimeout(self) -> None:
        """
        Count as activity for the idle timeout (what a read or write does).
        """
        self._lastActive = self.factory.clock.seconds()

    def _idle(self) -> None:
        factory = self.factory
        now = factory.clock.seconds()
        remaining = self.idleTimeout - (now - self._lastActive)
        if remaining > 0.001:
            self._idleCall = factory.clock.callLater(remaining, self._idle)
            return
        if self._closingIdle:
            self._idleCall = None
            self.transport.abortConnection()
            return
        self._closingIdle = True
        _policyLog.info(
            "{service} {peer} idle for {seconds}s: closing",
            service=factory.serviceName,
            peer=describeAddress(self.getPeer()),
            seconds=self.idleTimeout,
        )
        self._lastActive = now
        self._idleCall = factory.clock.callLater(self.idleTimeout, self._idle)
        self.transport.loseConnection()

    def handshakeCompleted(self) -> None:
        from netd.tls import peerSubject

        self.subject = peerSubject(self.transport)
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def connectionLost(self, reason: Failure) -> None:
        self.connected = 0
        if self._idleCall is not None:
            if self._idleCall.active():
                self._idleCall.cancel()
            self._idleCall = None
        wrapped, self.wrappedProtocol = self.wrappedProtocol, None
        try:
            wrapped.connectionLost(reason)
        finally:
            self.factory.connectionEnded(self, reason)


@implementer(IHalfCloseableProtocol)
class HalfCloseableLoggedConnection(LoggedConnection):
    """
    A L{LoggedConnection} around a protocol that accepts half-closes, which
    it passes on (Twisted's L{ProtocolWrapper} would close the whole
    connection instead).
    """

    def readConnectionLost(self) -> None:
        self.wrappedProtocol.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.wrappedProtocol.writeConnectionLost()


class ConnectionLoggingFactory(WrappingFactory):
    """
    Wrap a service's factory so that each of its connections is logged,
    counted and timed out; with a policy, refuse the clients it refuses.

    @ivar active: how many connections are open now.
    @ivar perSource: how many connections each client host has open
        (hosts as L{sourceOf} gives them).
    @ivar policy: the L{netd.policy.Policy} new clients are judged by, or
        L{None} to accept every client.
    """

    protocol = LoggedConnection
    #: The wrapper for a protocol that accepts half-closes.
    halfCloseableProtocol = HalfCloseableLoggedConnection
    noisy = False
    #: The L{netd.budgets.DescriptorBudget} shared by every service, if any.
    budget: Any = None

    def __init__(
        self, serviceName: str, wrappedFactory: Any, clock: Any, policy: Any = None
    ) -> None:
        """
        @param serviceName: the netd service, for the log.
        @param wrappedFactory: the service's own factory.
        @param clock: an L{IReactorTime} for durations and idle timeouts.
        @param policy: a L{netd.policy.Policy}, or L{None}.
        """
        super().__init__(wrappedFactory)
        self.serviceName = serviceName
        self.clock = clock
        self.policy = policy
        self.perSource: dict[str, int] = {}
        self._refusals = ThrottledLog(clock, interval=1.0, lines=10)
        self._emptyObservers: list[Deferred[None]] = []

    @property
    def active(self) -> int:
        return len(self.protocols)

    def logPrefix(self) -> str:
        return self.serviceName

    def refusal(self, source: str | None) -> str | None:
        """
        Why the policy refuses a new connection from C{source} (a host as
        L{sourceOf} gives it) now, or L{None} when it is accepted.
        """
        policy = self.policy
        if policy is None:
            return None
        settings = policy.settings
        rules = settings.rules
        if rules is not None and source is not None:
            reason: str | None = rules.refusal(source)
            if reason is not None:
                return reason
        if 0 < settings.maxConnections <= len(self.protocols):
            return f"already {len(self.protocols)} connections"
        if source is not None and settings.maxPerSource:
            count = self.perSource.get(source, 0)
            if settings.maxPerSource <= count:
                return f"already {count} connections from there"
        if self.budget is not None:
            return self.budget.refusal(self.serviceName)  # type: ignore[no-any-return]
        return None

    def buildProtocol(
        self, addr: Any, metrics: StreamListenerMetrics = NO_STREAM_METRICS
    ) -> Any:
        """
        Accept or refuse a new client: the one place where a connection
        starts, or does not.

        @param metrics: the listener's (L{netd.prometheus.ListenerFactory}).
        """
        source = sourceOf(addr)
        reason = self.refusal(source)
        if reason is not None:
            metrics.refused(reason)
            self.refused(addr, reason)
            return RefusedConnection()
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            # The service refused; returning None would break TLS wrappers.
            metrics.refused("service")
            return RefusedConnection()
        kind: Any = self.protocol
        if IHalfCloseableProtocol.providedBy(wrapped):
            kind = self.halfCloseableProtocol
        connection: LoggedConnection = kind(self, wrapped)
        connection.peer = addr
        connection.source = source
        connection.metrics = metrics
        if self.policy is not None:
            connection.idleTimeout = self.policy.settings.idleTimeout
        return connection

    def refused(self, addr: Any, reason: str) -> None:
        """
        A client was refused by the policy: log it (throttled).
        """
        self._refusals.emit(
            _policyLog.info,
            "{service} refused {peer}: {reason}",
            service=self.serviceName,
            peer=describeAddress(addr),
            reason=reason,
        )

    def registerProtocol(self, p: Any) -> None:
        self.protocols[p] = 1
        if self.budget is not None:
            self.budget.opened(self.serviceName)
        source = p.source
        if source is not None:
            self.perSource[source] = self.perSource.get(source, 0) + 1

    def unregisterProtocol(self, p: Any) -> None:
        if self.protocols.pop(p, None) is None:
            return
        if self.budget is not None:
            self.budget.closed(self.serviceName)
        source = p.source
        if source is not None:
            left = self.perSource.pop(source) - 1
            if left:
                self.perSource[source] = left
        if not self.protocols and self._emptyObservers:
            observers, self._emptyObservers = self._emptyObservers, []
            for observer in observers:
                observer.callback(None)

    def connectionEnded(self, connection: LoggedConnection, reason: Failure) -> None:
        """
        A connection ended: forget it and log it, in one line built once.
        """
        self.unregisterProtocol(connection)
        peer = connection.peer
        if peer is None:
            peer = connection.transport.getPeer()
        subject = connection.subject
        duration = self.clock.seconds() - connection.started
        connection.metrics.closed(connection.bytesIn, connection.bytesOut, duration)
        fields = {
            "service": self.serviceName,
            "peer": describeAddress(peer),
            "certificate": "" if subject is None else f" ({subject})",
            "subject": subject,
            "outcome": _outcome(reason),
            "bytesIn": connection.bytesIn,
            "bytesOut": connection.bytesOut,
            "duration": duration,
        }
        fields["line"] = connectionLine(
            fields["service"],
            fields["peer"],
            subject,
            fields["outcome"],
            fields["bytesIn"],
            fields["bytesOut"],
            fields["duration"],
        )
        _connectionLog.info("{line}", **fields)

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
    error = reason.value
    if isinstance(error, ConnectionDone):
        return "closed"
    if type(error).__module__ == "OpenSSL.SSL":
        from netd.tls import describeOpenSSLError

        return f"TLS: {describeOpenSSLError(error)}"
    return reason.getErrorMessage()
