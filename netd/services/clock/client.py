# -*- test-case-name: tests.services.clock.test_clockclient -*-
"""
Clock clients: C{netd-client daytime}, C{netd-client time} (each over TCP,
or UDP with C{--udp}) and C{netd-client sntp}. Each prints the server's time
and its offset from the local clock.
"""

from __future__ import annotations

import calendar
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import DatagramProtocol, Protocol

from netd.cli import ClientCommand
from netd.services.clock.server import (
    NTP_MODE_CLIENT,
    NTP_MODE_SERVER,
    NTP_PACKET,
    ntpTimestamp,
    unixFromNTPTimestamp,
    unixFromRFC868,
)

#: The most bytes a daytime or time reply is read to: more is not a reply.
MAX_REPLY = 1024


class Reply:
    """
    What a server answered, and when, by the local clock.

    @ivar data: the bytes received.
    @ivar sent: when the request was sent (or the connection asked for).
    @ivar received: when the answer was complete.
    """

    def __init__(self, data: bytes, sent: float, received: float) -> None:
        self.data = data
        self.sent = sent
        self.received = received


class ReadToClose(Protocol):
    """
    Read everything a server sends until it closes (at most L{MAX_REPLY}
    bytes).

    @ivar done: fires with the L{Reply}.
    """

    def __init__(self, clock: Any, sent: float) -> None:
        self.clock = clock
        self.sent = sent
        self.data = b""
        self.done: defer.Deferred[Reply] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > MAX_REPLY:
            self.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:
        if len(self.data) > MAX_REPLY:
            self.done.errback(ValueError(f"a reply of more than {MAX_REPLY} bytes"))
        else:
            self.done.callback(Reply(self.data, self.sent, self.clock.seconds()))


class DatagramExchange(DatagramProtocol):
    """
    Send one datagram and wait for the server's answer.

    @ivar done: fires with the L{Reply} to the first datagram from the
        server that C{isAnswer} accepts.
    """

    noisy = False

    def __init__(
        self,
        clock: Any,
        address: tuple[str, int],
        request: Callable[[float], bytes],
        isAnswer: Callable[[bytes, bytes], bool] = lambda request, answer: True,
    ) -> None:
        """
        @param clock: an L{IReactorTime}, the local clock.
        @param address: the server's address and port.
        @param request: makes the request from the time it is sent.
        @param isAnswer: whether a datagram from the server answers the request.
        """
        self.clock = clock
        self.address = address
        self.makeRequest = request
        self.isAnswer = isAnswer
        self.done: defer.Deferred[Reply] = defer.Deferred()

    def startProtocol(self) -> None:
        self.sent = self.clock.seconds()
        self.request = self.makeRequest(self.sent)
        self.transport.write(self.request, self.address)

    def datagramReceived(self, data: bytes, address: Any) -> None:
        received = self.clock.seconds()
        if tuple(address[:2]) != self.address or self.done.called:
            return
        if self.isAnswer(self.request, data):
            self.done.callback(Reply(data, self.sent, received))


class ClockCommand(ClientCommand):
    """
    What the clock clients share: asking over TCP or UDP, and printing.
    """

    synopsis = "[options]"

    def write(self, text: str) -> None:
        """
        Print a line of the command's output.
        """
        sys.stdout.write(text)
        sys.stdout.flush()

    @defer.inlineCallbacks
    def ask(
        self,
        reactor: Any,
        udp: bool,
        request: Callable[[float], bytes] = lambda sent: b"",
        isAnswer: Callable[[bytes, bytes], bool] = lambda request, answer: True,
    ) -> Any:
        """
        Ask the server once: over TCP, connect and read until it closes;
        over UDP, send C{request} and wait for an answer.

        @return: a Deferred firing with the L{Reply}.
        """
        if not udp:
            client = ReadToClose(reactor, reactor.seconds())
            yield connectProtocol(self.endpoint(reactor), client)
            reply = yield client.done.addTimeout(self["timeout"], reactor)
            return reply
        host = self["host"]
        if isIPv6Address(host):
            interface = "::"
        else:
            interface = ""
            host = yield reactor.resolve(host)
        exchange = DatagramExchange(reactor, (host, self["port"]), request, isAnswer)
        port = reactor.listenUDP(0, exchange, interface=interface)
        try:
            reply = yield exchange.done.addTimeout(self["timeout"], reactor)
        except defer.TimeoutError:
            raise ConnectionError(
                f"no answer from {self['host']} UDP port {self['port']} "
                f"in {self['timeout']:g} s"
            ) from None
        finally:
            yield port.stopListening()
        return reply

    def reportWholeSeconds(self, server: int, local: float) -> None:
        """
        Print a server's time given in whole seconds, and its offset from
        the local clock: the server's second started at C{server}, so its
        clock read C{server + 0.5} give or take half a second.
        """
        self.write(timeLine(server))
        self.write(
            f"offset {server + 0.5 - local:+.1f} s from the local clock "
            "(+-0.5 s: whole seconds)\n"
        )


def timeLine(seconds: float) -> str:
    """
    A line showing a moment in UTC and in the local time zone.
    """
    return f"{formatUTC(seconds)}  ({time.ctime(seconds)} local)\n"


def formatUTC(seconds: float) -> str:
    """
    RFC 3339 UTC, with microseconds when there is a fraction.
    """
    whole = int(seconds // 1)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    micros = round((seconds - whole) * 1e6)
    if micros:
        text += f".{min(micros, 999999):06d}"
    return text + "Z"


def parseDaytime(line: bytes) -> int | None:
    """
    Read a daytime line netd sends: C{ctime} in the local time zone (taken to
    be the server's too), or RFC 3339 UTC.

    @return: seconds since 1970, or L{None} for any other text.
    """
    text = line.decode("ascii", "replace").strip()
    try:
        return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        pass
    try:
        return int(time.mktime(time.strptime(text, "%a %b %d %H:%M:%S %Y")))
    except (ValueError, OverflowError):
        return None


class DaytimeCommand(ClockCommand):
    """
    C{netd-client daytime [--udp]}: print the server's daytime line.
    """

    defaultPort = 50013
    optFlags = [["udp", "u", "Ask over UDP instead of TCP."]]

    @defer.inlineCallbacks
    def run(self, reactor: Any) -> Any:
        reply = yield self.ask(reactor, self["udp"])
        self.write(reply.data.decode("ascii", "replace").rstrip("\r\n") + "\n")
        server = parseDaytime(reply.data)
        if server is None:
            self.write("(not a ctime or RFC 3339 line: no offset)\n")
        else:
            self.reportWholeSeconds(server, reply.received)
        return 0


class TimeCommand(ClockCommand):
    """
    C{netd-client time [--udp]}: read the server's RFC 868 time.
    """

    defaultPort = 50037
    optFlags = [["udp", "u", "Ask over UDP instead of TCP."]]

    @defer.inlineCallbacks
    def run(self, reactor: Any) -> Any:
        reply = yield self.ask(reactor, self["udp"])
        if len(reply.data) != 4:
            raise ValueError(f"an RFC 868 reply is 4 bytes, not {reply.data!r}")
        (value,) = struct.unpack("!I", reply.data)
        self.reportWholeSeconds(unixFromRFC868(value, reply.received), reply.received)
        return 0


def sntpRequest(sent: float) -> bytes:
    """
    An SNTPv4 client request whose transmit timestamp is C{sent}.
    """
    return NTP_PACKET.pack(
        (4 << 3) | NTP_MODE_CLIENT,
        0,
        0,
        0,
        0,
        0,
        b"\0" * 4,
        0,
        0,
        0,
        ntpTimestamp(sent),
    )


def isSNTPAnswer(request: bytes, answer: bytes) -> bool:
    """
    Whether C{answer} is a server's reply to C{request}: server mode, and
    the request's transmit timestamp as its origin.
    """
    return (
        len(answer) >= NTP_PACKET.size
        and answer[0] & 0x7 == NTP_MODE_SERVER
        and answer[24:32] == request[40:48]
    )


def offsetAndDelay(
    sent: float, serverReceived: float, serverSent: float, received: float
) -> tuple[float, float]:
    """
    The server clock's offset from ours and the round-trip delay of one
    exchange, as RFC 4330 section 5 computes them from its four times.

    @param sent: when we sent the request, by our clock.
    @param serverReceived: when the server received it, by its clock.
    @param serverSent: when the server sent its reply, by its clock.
    @param received: when we received the reply, by our clock.
    """
    offset = ((serverReceived - sent) + (serverSent - received)) / 2
    delay = (received - sent) - (serverSent - serverReceived)
    return offset, delay


class SNTPCommand(ClockCommand):
    """
    C{netd-client sntp}: one SNTPv4 exchange, with offset and delay as
    RFC 4330 computes them.
    """

    defaultPort = 50123

    @defer.inlineCallbacks
    def run(self, reactor: Any) -> Any:
        reply = yield self.ask(reactor, True, sntpRequest, isSNTPAnswer)
        fields = NTP_PACKET.unpack_from(reply.data)
        first, stratum, referenceId = fields[0], fields[1], fields[6]
        if stratum == 0:
            code = referenceId.rstrip(b"\0").decode("ascii", "replace")
            raise ConnectionError(
                f"{self['host']} sent a Kiss-o'-Death {code!r}: it refuses "
                f"to answer now ('RATE': ask less often)"
            )
        sent, received = reply.sent, reply.received
        serverSent = unixFromNTPTimestamp(fields[10], received)
        offset, delay = offsetAndDelay(
            sent, unixFromNTPTimestamp(fields[9], sent), serverSent, received
        )
        reference = describeReferenceId(stratum, referenceId)
        self.write(
            timeLine(serverSent) + f"stratum {stratum}, reference {reference}, "
            f"version {(first >> 3) & 0x7}, leap indicator {first >> 6}\n"
            f"offset {offset:+.6f} s from the local clock, "
            f"round-trip delay {delay:.6f} s\n"
        )
        return 0


def describeReferenceId(stratum: int, referenceId: bytes) -> str:
    """
    A reference id as text: letters at stratum 0 and 1 (and for C{LOCL}),
    an IPv4 address above.
    """
    letters = referenceId.rstrip(b"\0")
    if stratum <= 1 or (letters.isalnum() and letters.isascii() and letters.isupper()):
        return letters.decode("ascii", "replace")
    return ".".join(str(byte) for byte in referenceId)
