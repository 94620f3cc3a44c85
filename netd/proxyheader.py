# -*- test-case-name: tests.test_proxyheader -*-
"""
C{haproxy:} endpoints whose service sees the real client from the start.

Twisted's own C{haproxy:} wrapper connects the service's protocol when the
TCP connection is made, before the PROXY header says who the client is: a
service that answers at once (daytime, time) would answer before the
header, the access policy would judge the proxy's address, and a client
that sends nothing after the header would never be served. Here the
service's factory is asked for a protocol only once the header (v1 or v2,
parsed by Twisted's own parsers) arrived, with the client's address; a
connection whose header is malformed, or late, is closed.

A header is believed only from a trusted proxy (C{--trusted-proxy}, by
default loopback): anyone else could name any client. A connection from
elsewhere is refused and logged before a byte is read. The service's
access policy judges the proxy's address when the connection is made (its
allow and deny ranges, and its limits: a connection waiting for its header
counts as one from the proxy), and the client's once the header came.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.connlog import sourceOf
from netd.listeners import describeAddress
from netd.policy import (
    DEFAULT_TRUSTED_PROXIES,
    Network,
    RefusedConnection,
    clientAddress,
)
from netd.throttledlog import ThrottledLog
from netd.twistedprivate import InvalidProxyHeader, V1Parser, V2Parser
from netd.wrappers import PassThroughWrapper

V1_PREFIX = b"PROXY "
#: Enough bytes to hold any header's fixed part: v2's 16, or v1's C{PROXY }.
_FIXED = 16

#: Seconds a PROXY header may take to arrive: a proxy sends it at once.
HEADER_TIMEOUT = 5.0


def isTrustedProxy(address: Any, trusted: tuple[Network, ...]) -> bool:
    """
    Whether a connection from C{address} may send a PROXY header: an IP
    address in one of the C{trusted} ranges (an IPv4-mapped IPv6 address
    counts as the IPv4 address it maps), or a UNIX socket's peer, which the
    socket file's permissions vouch for.
    """
    if not isinstance(address, IPv4Address | IPv6Address):
        return True
    host = clientAddress(address.host)
    if host is None:
        return False
    return any(
        host.version == network.version and host in network for network in trusted
    )


class ProxiedConnection(PassThroughWrapper, TimeoutMixin):
    """
    Read a PROXY header, then connect the service's protocol with the
    client's address as C{getPeer()} (and the address it connected to as
    C{getHost()}).
    """

    factory: ProxyHeaderFactory
    wrappedProtocol: Any = None
    #: The proxy's address, for the policy's count of connections from it
    #: while the header is awaited.
    source: str | None = None
    _counted = False

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        super().__init__(factory, None)  # type: ignore[arg-type]
        self._buffer = b""
        self._parser: V1Parser | V2Parser | None = None
        self._info: Any = None

    def callLater(self, period: float, func: Any) -> Any:
        return self.factory.clock.callLater(period, func)

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connected = True
        self._counted = self.factory.holdPending(self)
        self.setTimeout(self.factory.headerTimeout)

    def timeoutConnection(self) -> None:
        self.factory.headerFailed(
            self.transport.getPeer(),
            f"no PROXY header within {self.factory.headerTimeout:g}s",
        )
        self.transport.abortConnection()

    def _releasePending(self) -> None:
        if self._counted:
            self._counted = False
            self.factory.releasePending(self)

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        try:
            info, remaining = self._feed(data)
        except InvalidProxyHeader:
            self.setTimeout(None)
            self.factory.headerFailed(
                self.transport.getPeer(), "malformed PROXY header"
            )
            self.transport.abortConnection()
            return
        if info is None:
            return
        self.setTimeout(None)
        self._releasePending()
        self._info = info
        wrapped = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if wrapped is None:
            self.transport.abortConnection()
            return
        self.wrappedProtocol = wrapped
        super().makeConnection(self.transport)
        if remaining and self.wrappedProtocol is not None and self.connected:
            self.wrappedProtocol.dataReceived(remaining)

    def _feed(self, data: bytes) -> tuple[Any, bytes]:
        if self._parser is None:
            self._buffer += data
            data, self._buffer = self._buffer, b""
            if data.startswith(V2Parser.PREFIX) and len(data) >= _FIXED:
                if ord(data[12:13]) & 0xF0 != 0x20:
                    raise InvalidProxyHeader()
                self._parser = V2Parser()
            elif data.startswith(V1_PREFIX):
                self._parser = V1Parser()
            elif len(data) < _FIXED and (
                V2Parser.PREFIX.startswith(data[:12]) or V1_PREFIX.startswith(data)
            ):
                self._buffer = data  # not yet enough to tell
                return None, b""
            else:
                raise InvalidProxyHeader()
        info, remaining = self._parser.feed(data)
        return info, remaining or b""

    def getPeer(self) -> Any:
        if self._info is not None and self._info.source is not None:
            return self._info.source
        return self.transport.getPeer()

    def getHost(self) -> Any:
        if self._info is not None and self._info.destination is not None:
            return self._info.destination
        return self.transport.getHost()

    def connectionLost(self, reason: Failure) -> None:
        self.setTimeout(None)
        self._releasePending()
        if self.wrappedProtocol is not None:
            super().connectionLost(reason)
        else:
            self.connected = False


class ProxyHeaderFactory(WrappingFactory):
    """
    Wrap a service's factory so that its connections start with a PROXY
    header, and come from a trusted proxy.

    When the wrapped factory is netd's access policy
    (L{netd.policy.PolicyFactory}: it has C{policy}, C{refusal},
    C{registerProtocol} and C{unregisterProtocol}), or a listener's view of
    it (L{netd.prometheus.ListenerFactory}, with the policy as its C{factory}),
    the policy's settings say which proxies are trusted, it judges the
    proxy's address first, and counts a connection waiting for its header as
    one from the proxy; a refusal is reported to the listener's metrics.
    """

    protocol = ProxiedConnection  # type: ignore[assignment]
    noisy = False
    log = Logger()

    def __init__(
        self, wrappedFactory: Any, clock: Any, headerTimeout: float = HEADER_TIMEOUT
    ) -> None:
        """
        @param wrappedFactory: the service's factory, asked for a protocol
            with the client's address once the header arrived.
        @param clock: an L{IReactorTime}.
        @param headerTimeout: seconds the header may take to arrive.
        """
        super().__init__(wrappedFactory)
        self.clock = clock
        self.headerTimeout = headerTimeout
        self._refusalLog = ThrottledLog(clock, interval=1.0, lines=10)
        policed = wrappedFactory
        if not hasattr(policed, "refusal"):
            policed = getattr(wrappedFactory, "factory", None)
        #: The service's access policy factory, or None.
        self.policed: Any = policed if hasattr(policed, "refusal") else None

    def trustedProxies(self) -> tuple[Network, ...]:
        """
        The ranges headers are believed from: the service's policy's
        C{trustedProxies}, else loopback.
        """
        settings = getattr(getattr(self.policed, "policy", None), "settings", None)
        return getattr(settings, "trustedProxies", DEFAULT_TRUSTED_PROXIES)

    def buildProtocol(self, addr: Any) -> Any:
        reason = None
        if not isTrustedProxy(addr, self.trustedProxies()):
            reason = "not a trusted proxy (--trusted-proxy), its PROXY header ignored"
        elif self.policed is not None:
            reason = self.policed.refusal(sourceOf(addr))
        if reason is not None:
            metrics = getattr(self.wrappedFactory, "metrics", None)
            if metrics is not None:
                metrics.refused(reason)
            self._refusalLog.emit(
                self.log.info,
                "{service} refused {peer}: {reason}",
                service=self._serviceName(),
                peer=describeAddress(addr),
                reason=reason,
            )
            return RefusedConnection()
        connection = self.protocol(self)
        connection.source = sourceOf(addr)
        return connection

    def holdPending(self, connection: ProxiedConnection) -> bool:
        """
        Count a connection waiting for its header in the wrapped policy's
        limits, as one from the proxy.

        @return: whether it is counted (and must be released).
        """
        if self.policed is None:
            return False
        self.policed.registerProtocol(connection)
        return True

    def releasePending(self, connection: ProxiedConnection) -> None:
        """
        The header came, or the connection ended: it no longer counts as
        one from the proxy.
        """
        self.policed.unregisterProtocol(connection)

    def headerFailed(self, peer: Any, reason: str) -> None:
        """
        Log (throttled) a connection closed for want of a good header.
        """
        self._refusalLog.emit(
            self.log.info,
            "{service} closing {peer}: {reason}",
            service=self._serviceName(),
            peer=describeAddress(peer),
            reason=reason,
        )

    def _serviceName(self) -> str:
        return str(getattr(self.policed, "serviceName", self.logPrefix()))

    def logPrefix(self) -> str:
        prefix = getattr(self.wrappedFactory, "logPrefix", None)
        return f"{prefix() if prefix else type(self.wrappedFactory).__name__} (PROXY)"


@implementer(IStreamServerEndpoint)
class ProxiedEndpoint:
    """
    An endpoint whose connections start with a PROXY header: what netd
    makes of C{haproxy:ENDPOINT}.

    @ivar wrappedEndpoint: the endpoint the connections arrive on.
    """

    def __init__(self, wrappedEndpoint: Any, clock: Any) -> None:
        self.wrappedEndpoint = wrappedEndpoint
        self.clock = clock

    def reload(self) -> None:
        """
        Reload the wrapped endpoint's files, if it has any (the certificates
        of C{haproxy:tls:...}).
        """
        reload = getattr(self.wrappedEndpoint, "reload", None)
        if reload is not None:
            reload()

    def listen(self, protocolFactory: Any) -> Any:
        """
        Listen on the wrapped endpoint; see L{IStreamServerEndpoint.listen}.
        """
        return self.wrappedEndpoint.listen(
            ProxyHeaderFactory(protocolFactory, self.clock)
        )
