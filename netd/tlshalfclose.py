# -*- test-case-name: tests.test_tlshalfclose -*-
"""
TLS connections that a client can half-close, as it can a TCP connection.

A client that sends its request and then its TLS C{close_notify} (socat
with its input at end, C{SSL_shutdown} after C{SSL_write}) means "that is
all I will send", as a TCP client means with C{shutdown(SHUT_WR)}. Twisted's
L{TLSMemoryBIOProtocol} answers a C{close_notify} at once with its own and
drops every write after it, as RFC 5246 7.2.1 once asked; so a reply not
yet written, or still in Twisted's write aggregation, was lost. RFC 8446
6.1 made C{close_notify} a half-close, and OpenSSL lets a server write
after receiving one under TLS 1.2 as well as 1.3.

Here a C{close_notify} ends the input only: a service that accepts
half-closes (L{IHalfCloseableProtocol}, as echo and getfile do) gets
C{readConnectionLost} and writes all it has to, and netd's own
C{close_notify} follows when the service closes the connection. A service
that does not is closed as a TCP service would be, after what it wrote
before.

This module is the only one in netd that relies on the private parts of
L{TLSMemoryBIOProtocol}; C{tests.test_tlshalfclose} checks that they are
still there and still shaped as relied on.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import SENT_SHUTDOWN, Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IReactorSSL,
    IStreamServerEndpoint,
)
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

#: What this module uses of L{TLSMemoryBIOProtocol} and
#: L{BufferingTLSTransport} that Twisted does not document.
TWISTED_PRIVATE_NAMES = (
    "_tlsConnection",
    "_lostTLSConnection",
    "_aborted",
    "_flushReceiveBIO",
    "_flushSendBIO",
    "_shutdownTLS",
    "_tlsShutdownFinished",
    "_aggregator",
    "_producer",
)

#: The attributes of Twisted's own C{tls:PATH} endpoint
#: (C{twisted.protocols._sni.TLSServerEndpoint}) that
#: L{halfCloseableTwistedTLS} reads.
TWISTED_SNI_ENDPOINT_NAMES = ("endpoint", "connectionCreator", "clock")


class HalfCloseableTLSProtocol(BufferingTLSTransport):
    """
    A server's TLS layer on which a client's C{close_notify} is a
    half-close.

    It is also half-closeable towards TCP: an end of input after the
    client's C{close_notify} leaves the reply going out, while an end of
    input without one (a truncated stream) drops the connection as before.
    It says so (provides L{IHalfCloseableProtocol}) only once the protocols
    above it are connected: Twisted's L{ProtocolWrapper} copies the
    interfaces of its transport, and netd's wrappers must not claim
    half-closes for a service that does not take them.

    @ivar inputEnded: whether the client's C{close_notify} has come and the
        service was told.
    """

    inputEnded = False

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        alsoProvides(self, IHalfCloseableProtocol)

    def dataReceived(self, data: bytes) -> None:
        """
        Decrypt what came; nothing may follow a C{close_notify}, so what
        does is dropped.
        """
        if not self.inputEnded:
            super().dataReceived(data)

    def _flushReceiveBIO(self) -> None:
        """
        Deliver the application bytes the TLS layer has decrypted: Twisted's
        loop, but for what a C{close_notify} does (L{_closeNotifyReceived}).
        """
        connection = self._tlsConnection
        while not (self._lostTLSConnection or self.inputEnded):
            try:
                data = connection.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:
                self._closeNotifyReceived()
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
        self._flushSendBIO()

    def _closeNotifyReceived(self) -> None:
        """
        The client will send no more: tell a half-closeable service, and
        keep writing; close any other service as TCP does, once what it
        wrote so far is on its way.
        """
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.inputEnded = True
            if self._tlsConnection.get_shutdown() & SENT_SHUTDOWN:
                # netd had sent its own close_notify already: both are done.
                self._shutdownTLS()
            elif not self.disconnecting:
                self.wrappedProtocol.readConnectionLost()
            return
        self._aggregator.flush()
        if self._producer is not None:
            # The connection ends here: a producer is asked for nothing more
            # (over TCP, it would not be waited for).
            self.unregisterProducer()
        self._shutdownTLS()
        self._tlsShutdownFinished(None)

    def readConnectionLost(self) -> None:
        """
        The client's TCP stream ended. After its C{close_notify} that is
        expected, and the reply still goes out; without one the input may
        have been cut short, and the connection is dropped as Twisted does.
        """
        if not (self.inputEnded or self._lostTLSConnection):
            self.transport.abortConnection()

    def writeConnectionLost(self) -> None:
        """
        Never called: netd does not half-close the TCP stream under TLS.
        """


class HalfCloseableTLSFactory(TLSMemoryBIOFactory):
    """
    L{TLSMemoryBIOFactory} building L{HalfCloseableTLSProtocol}s.
    """

    protocol = HalfCloseableTLSProtocol


def listenTLS(
    reactor: Any,
    port: int,
    factory: Any,
    contextFactory: Any,
    backlog: int = 50,
    interface: str = "",
) -> Any:
    """
    Listen for TLS connections as C{reactor.listenSSL} does, with the
    half-close of L{HalfCloseableTLSProtocol}.
    """
    tlsFactory = HalfCloseableTLSFactory(contextFactory, False, factory, reactor)
    return reactor.listenTCP(port, tlsFactory, backlog, interface)


@implementer(IStreamServerEndpoint)
class HalfCloseableTLSEndpoint:
    """
    TLS over another stream server endpoint, with the half-close of
    L{HalfCloseableTLSProtocol}.

    @ivar endpoint: the endpoint TLS runs over.
    @ivar contextFactory: the server's TLS configuration.
    @ivar clock: the L{IReactorTime} scheduling Twisted's write aggregation.
    """

    def __init__(self, endpoint: Any, contextFactory: Any, clock: Any = None) -> None:
        self.endpoint = endpoint
        self.contextFactory = contextFactory
        self.clock = clock

    def listen(self, protocolFactory: Any) -> Any:
        return self.endpoint.listen(
            HalfCloseableTLSFactory(
                self.contextFactory, False, protocolFactory, self.clock
            )
        )


def halfCloseableTwistedTLS(endpoint: Any) -> Any:
    """
    The same listener as Twisted's own C{tls:PATH} endpoint (a
    C{twisted.protocols._sni.TLSServerEndpoint}), with half-closes.
    """
    return HalfCloseableTLSEndpoint(
        endpoint.endpoint, endpoint.connectionCreator, endpoint.clock
    )


@implementer(IReactorSSL)
class HalfCloseableTLSReactor:
    """
    A reactor whose C{listenSSL} is L{listenTLS}, for Twisted's C{ssl:}
    endpoint: C{serverFromString(HalfCloseableTLSReactor(reactor),
    "ssl:...")} listens with TLS half-closes.

    @ivar reactor: the real reactor.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def listenSSL(
        self,
        port: int,
        factory: Any,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> Any:
        return listenTLS(
            self.reactor, port, factory, contextFactory, backlog, interface
        )

    def connectSSL(self, *args: Any, **kwargs: Any) -> Any:
        return self.reactor.connectSSL(*args, **kwargs)
