# -*- test-case-name: tests.test_policy -*-
"""
A protocol wrapper that hides nothing from the protocol it wraps.

netd puts wrappers between an endpoint and a service's protocol (the
connection log with the access policy, L{netd.connlog}; the PROXY header
reader; the TLS client's handshake wait); each must be invisible to the
service.

The wrapper that sits right on a plain TCP transport also writes eagerly:
with nothing queued, a reply goes to the socket at once, as asyncio's
transports do, instead of being queued until the reactor reports the socket
writable. That saves two C{epoll_ctl} calls and a trip through the reactor
per reply (Twisted's C{write} always queues), which is most of the cost of
a small lock-step exchange.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer

from netd.twistedprivate import hasQueuedWrites


def writeEagerly(transport: Any, socket: Any, data: bytes) -> bytes:
    """
    Send what the kernel takes now of a write to a plain TCP transport
    (a L{tcp.Server}, whose C{socket} is given), if nothing is queued
    before it.

    Not while a pull producer (L{IPullProducer}, such as Twisted's
    C{FileSender}) is registered: the transport asks it for more only when
    its own buffer drains, and a chunk sent past that buffer would leave it
    waiting for ever.

    @return: what is left for the transport to queue.
    """
    if (
        (transport.producer is not None and not transport.streamingProducer)
        or hasQueuedWrites(transport)
        or transport.disconnecting
        or not transport.connected
    ):
        return data
    try:
        sent = socket.send(data)
    except OSError:
        # EAGAIN, or an error the transport will find and report itself.
        return data
    return data[sent:]


def writeThrough(transport: Any, socket: Any, data: bytes) -> None:
    """
    Write to a transport: eagerly (L{writeEagerly}) when its socket is
    given, the rest (or all) through the transport.

    @param socket: the socket of a plain TCP transport, or L{None}.
    """
    if socket is not None:
        data = writeEagerly(transport, socket, data)
        if not data:
            return
    transport.write(data)


_halfCloseables: dict[type, type] = {}


def _halfCloseable(kind: type) -> type:
    """
    The subclass of a wrapper class that declares L{IHalfCloseableProtocol}
    (made once per class).
    """
    try:
        return _halfCloseables[kind]
    except KeyError:
        subclass = implementer(IHalfCloseableProtocol)(
            type(kind.__name__, (kind,), {"__module__": kind.__module__})
        )
        _halfCloseables[kind] = subclass
        return subclass


@implementer(IHandshakeListener)
class PassThroughWrapper(ProtocolWrapper):
    """
    A L{ProtocolWrapper} that passes on what Twisted's own does not.

    Half-closes reach a wrapped protocol that accepts them (Twisted's
    L{ProtocolWrapper} closes the whole connection instead), and so does
    the end of a TLS handshake (L{IHandshakeListener}). Producer calls pass
    both ways already: C{registerProducer} goes to the real transport, and
    C{pauseProducing}/C{resumeProducing}/C{stopProducing} too.
    """

    wrappedProtocol: Any
    _socket: Any = None

    def makeConnection(self, transport: Any) -> None:
        # Not ProtocolWrapper's, nor alsoProvides: declaring interfaces on
        # an instance costs more than the rest of a connection. A wrapper
        # of a protocol that accepts half-closes becomes an instance of a
        # subclass that declares it instead.
        if type(transport) is tcp.Server:
            self._socket = transport.socket
        if IHalfCloseableProtocol.providedBy(
            self.wrappedProtocol
        ) and not IHalfCloseableProtocol.providedBy(self):
            self.__class__ = _halfCloseable(type(self))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self.wrappedProtocol.makeConnection(self)

    def write(self, data: bytes) -> None:
        writeThrough(self.transport, self._socket, data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def readConnectionLost(self) -> None:
        self.wrappedProtocol.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.wrappedProtocol.writeConnectionLost()

    def handshakeCompleted(self) -> None:
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()
