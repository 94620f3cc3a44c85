# -*- test-case-name: tests.services.echo.test_echo -*-
"""
The echo service: every chunk received comes back behind a prefix.

The prefix is C{Echo=>} by default, as the echo-server of I{Programming
Python} sends; an empty prefix gives RFC 862's plain echo. With C{stamp},
each reply ends with C{b" at " + ctime}, as the book's forking and threading
servers send; with C{delay}, a connection's first reply waits that long, as
the book's simulated slow server does, without holding up anyone else.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from netd.datagram import GuardedDatagramProtocol, PerSourceRateLimiter
from netd.plugin import IGracefulProtocol

DEFAULT_PREFIX = b"Echo=>"


class EchoReplies:
    """
    How replies are made: the prefix, and the optional time stamp.
    """

    def __init__(self, clock: Any, prefix: bytes = DEFAULT_PREFIX, stamp: bool = False):
        """
        @param clock: an L{IReactorTime}, for the stamp.
        @param prefix: put before every reply.
        @param stamp: whether to end every reply with C{b" at " + ctime}.
        """
        self.clock = clock
        self.prefix = prefix
        self.stamp = stamp

    def reply(self, data: bytes) -> bytes:
        """
        The reply to one chunk or datagram.
        """
        if self.stamp:
            return b"".join(
                (self.prefix, data, b" at ", time.ctime(self.clock.seconds()).encode())
            )
        return self.prefix + data


@implementer(IHalfCloseableProtocol, IPushProducer, IGracefulProtocol)
class EchoProtocol(Protocol):
    """
    Echo one connection.

    The protocol is its transport's producer: when replies pile up unsent
    (a client that sends without reading), the transport pauses it and it
    stops reading from the client, so memory stays bounded. While the first
    reply is delayed, it does not read either. A client that half-closes
    gets every reply, then the server closes. When netd stops, it answers
    what it has read and closes (L{stopGracefully}).

    @ivar factory: the L{EchoFactory}.
    """

    factory: EchoFactory
    transport: Any

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._delayed: Any = None
        self._writesPaused = False
        self._readDone = False

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        if self.factory.delay > 0:
            self._delayed = self.factory.clock.callLater(
                self.factory.delay, self._delayOver
            )

    def dataReceived(self, data: bytes) -> None:
        reply = self.factory.replies.reply(data)
        if self._delayed is not None:
            self._pending.append(reply)
            self.transport.pauseProducing()
        else:
            self.transport.write(reply)

    def _delayOver(self) -> None:
        self._delayed = None
        pending, self._pending = self._pending, []
        self.transport.writeSequence(pending)
        if self._readDone:
            self._finish()
        elif not self._writesPaused:
            self.transport.resumeProducing()

    def readConnectionLost(self) -> None:
        """
        The client half-closed: close once every reply is written.
        """
        self._readDone = True
        if self._delayed is None:
            self._finish()

    def writeConnectionLost(self) -> None:
        """
        The client cannot read any more; nothing to do but finish.
        """
        self.transport.loseConnection()

    def _finish(self) -> None:
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def stopGracefully(self) -> None:
        """
        netd is stopping: read no more, answer what has arrived (after the
        delay, if the first reply is still delayed), then close. An idle
        connection closes at once.
        """
        if self._readDone:
            return
        self.transport.pauseProducing()
        if self._delayed is not None and not self._pending:
            self._delayed.cancel()
            self._delayed = None
        self.readConnectionLost()

    def connectionLost(self, reason: Any) -> None:
        if self._delayed is not None:
            self._delayed.cancel()
            self._delayed = None
        self._pending = []

    # IPushProducer: the transport's view of us, when its buffer fills.

    def pauseProducing(self) -> None:
        """
        Replies are piling up: stop reading from the client.
        """
        self._writesPaused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Replies have drained: read again, unless the first reply still waits.
        """
        self._writesPaused = False
        if self._delayed is None and not self._readDone:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        The connection is going away; nothing to release.
        """


class EchoFactory(Factory):
    """
    Make L{EchoProtocol}s.

    @ivar clock: an L{IReactorTime}, for delays and stamps.
    @ivar replies: the L{EchoReplies}.
    @ivar delay: seconds each connection's first reply waits.
    """

    protocol = EchoProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        clock: Any,
        prefix: bytes = DEFAULT_PREFIX,
        stamp: bool = False,
        delay: float = 0.0,
    ) -> None:
        self.clock = clock
        self.replies = EchoReplies(clock, prefix, stamp)
        self.delay = delay


class EchoDatagramProtocol(GuardedDatagramProtocol):
    """
    Echo each datagram to its sender, behind the prefix.
    """

    def __init__(self, replies: EchoReplies, limiter: PerSourceRateLimiter) -> None:
        """
        @param replies: the L{EchoReplies}.
        @param limiter: the per-source reply limit.
        """
        super().__init__("echo", limiter)
        self.replies = replies

    def reply(self, data: bytes, address: tuple[str, int]) -> bytes:
        return self.replies.reply(data)
