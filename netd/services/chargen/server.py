# -*- test-case-name: tests.services.chargen.test_chargen -*-
"""
The character generator service (RFC 864).

Over a stream, the server sends the classic rotating pattern until the
client goes away: lines of 72 characters taken from a ring of the 95
printing ASCII characters, each line starting one character further on,
each ended by CR LF. The ring starts at C{!} and puts the space after C{~}
(RFC 864's sorted ring begun at its line 1), so that the first line is the
one RFC 864's example starts with, C{!"#...fgh}, as xinetd's is. The stream
is a pull producer: a chunk is written only when the transport has sent
the last one, so a client that reads slowly costs no memory.

Over UDP, RFC 864 answers any datagram with 0 to 512 characters, whatever
the datagram held, which made chargen a classic amplifier of forged-source
floods (US-CERT TA14-017A). netd answers each datagram with the pattern cut
to the datagram's own length (at most 512 bytes): a reply is never longer
than the request, an empty datagram gets an empty reply. Replies are also
limited per source, as every netd UDP service's are.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IPullProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from netd.datagram import GuardedDatagramProtocol, PerSourceRateLimiter
from netd.plugin import IGracefulProtocol

#: The 95 printing ASCII characters, in the order the lines take them.
RING = bytes(range(0x21, 0x7F)) + b" "

#: Characters in a line, before its CR LF.
LINE_LENGTH = 72

#: The most bytes a UDP reply holds (RFC 864: 0 to 512 characters).
MAX_DATAGRAM_REPLY = 512


def patternLines(first: int, count: int) -> bytes:
    """
    Lines of the chargen pattern.

    @param first: the number of the first line (0 starts at C{!}).
    @param count: how many lines.
    @return: the lines, each C{LINE_LENGTH} characters and CR LF.
    """
    doubled = RING * 2
    lines = []
    for number in range(first, first + count):
        start = number % len(RING)
        lines.append(doubled[start : start + LINE_LENGTH] + b"\r\n")
    return b"".join(lines)


#: One whole turn of the pattern: the line after the last is line 0 again.
CYCLE = patternLines(0, len(RING))

#: What the stream writes each time the transport asks: whole turns of
#: the pattern (so every chunk is the same bytes object), about 62 KiB.
STREAM_CHUNK = CYCLE * 9

#: A turn and a bit, so that a datagram's reply can start on any line.
_WRAPPED_CYCLE = CYCLE + CYCLE[:MAX_DATAGRAM_REPLY]


@implementer(IPullProducer, IHalfCloseableProtocol, IGracefulProtocol)
class ChargenProtocol(Protocol):
    """
    Stream the pattern to one client until it goes away.

    The protocol is its transport's pull producer: the transport asks for
    the next chunk only when it has sent the last one. What the client
    sends is read and ignored (RFC 864); a client that half-closes still
    gets the stream, as xinetd's chargen does.
    """

    transport: Any

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, False)

    def dataReceived(self, data: bytes) -> None:
        """
        RFC 864 servers throw away what clients send.
        """

    def resumeProducing(self) -> None:
        """
        The transport has sent the last chunk: here is the next.
        """
        self.transport.write(STREAM_CHUNK)

    def stopProducing(self) -> None:
        """
        The connection is going away; nothing to release.
        """

    def readConnectionLost(self) -> None:
        """
        The client half-closed: it may still read, so keep streaming.
        """

    def writeConnectionLost(self) -> None:
        """
        The client cannot read any more: close.
        """
        self.stopGracefully()

    def stopGracefully(self) -> None:
        """
        The stream has no end to wait for: close now.
        """
        self.transport.unregisterProducer()
        self.transport.loseConnection()


class ChargenFactory(Factory):
    """
    Make L{ChargenProtocol}s.
    """

    protocol = ChargenProtocol
    noisy = False


class ChargenDatagramProtocol(GuardedDatagramProtocol):
    """
    Answer each datagram with as many bytes of the pattern as it held, up
    to L{MAX_DATAGRAM_REPLY}; each reply starts one line further on.
    """

    def __init__(self, limiter: PerSourceRateLimiter) -> None:
        """
        @param limiter: the per-source reply limit.
        """
        super().__init__("chargen", limiter)
        self._line = 0

    def reply(self, data: bytes, address: tuple[str, int]) -> bytes:
        size = min(len(data), MAX_DATAGRAM_REPLY)
        start = self._line * (LINE_LENGTH + 2)
        self._line = (self._line + 1) % len(RING)
        return _WRAPPED_CYCLE[start : start + size]
