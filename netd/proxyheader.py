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
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.protocols.policies import TimeoutMixin, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.twistedprivate import InvalidProxyHeader, V1Parser, V2Parser
from netd.wrappers import PassThroughWrapper

V1_PREFIX = b"PROXY "
#: Enough bytes to hold any header's fixed part: v2's 16, or v1's C{PROXY }.
_FIXED = 16


class ProxiedConnection(PassThroughWrapper, TimeoutMixin):
    """
    Read a PROXY header, then connect the service's protocol with the
    client's address as C{getPeer()} (and the address it connected to as
    C{getHost()}).
    """

    factory: ProxyHeaderFactory
    wrappedProtocol: Any = None

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
        self.setTimeout(self.factory.headerTimeout)

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        try:
            info, remaining = self._feed(data)
        except InvalidProxyHeader:
            self.setTimeout(None)
            self.transport.abortConnection()
            return
        if info is None:
            return
        self.setTimeout(None)
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
        if self.wrappedProtocol is not None:
            super().connectionLost(reason)
        else:
            self.connected = False


class ProxyHeaderFactory(WrappingFactory):
    """
    Wrap a service's factory so that its connections start with a PROXY
    header.
    """

    protocol = ProxiedConnection  # type: ignore[assignment]
    noisy = False

    def __init__(
        self, wrappedFactory: Any, clock: Any, headerTimeout: float = 10.0
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

    def buildProtocol(self, addr: Any) -> ProxiedConnection:
        return self.protocol(self)

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
