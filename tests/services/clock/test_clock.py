"""
Tests for L{netd.services.clock.server} and the clock services' plugins:
daytime, time and SNTP formats at fixed dates (the injected clock), their protocols over
L{StringTransport} and real loopback sockets, and their options.
"""

from __future__ import annotations

import calendar
import os
import struct
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.datagram import PerSourceRateLimiter
from netd.listeners import DatagramListener, StreamListener
from netd.services.clock import plugin as clockplugins
from netd.services.clock.server import (
    EPOCH_1900,
    NTP_PACKET,
    AnnouncingDatagramProtocol,
    AnnouncingFactory,
    DaytimeAnnouncer,
    SNTPServerProtocol,
    TimeAnnouncer,
    daytimeLine,
    ntpTimestamp,
    parseReferenceId,
    rfc868Time,
    unixFromNTPTimestamp,
    unixFromRFC868,
)
from netd.tap import Options, makeService
from tests.common import CollectUntilClosed

#: Sat Jun 12 10:07:23 2010 UTC, a date from the book's runs.
BOOK_DATE = calendar.timegm((2010, 6, 12, 10, 7, 23))

#: 2036-02-07T06:28:16Z: seconds since 1900 reach 2**32 and wrap to 0.
WRAP_2036 = 2**32 - EPOCH_1900


def useTimeZone(testCase: SynchronousTestCase, zone: str) -> None:
    """
    Set the C{TZ} environment variable for the rest of a test.
    """
    previous = os.environ.get("TZ")

    def restore() -> None:
        if previous is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = previous
        time.tzset()

    testCase.addCleanup(restore)
    os.environ["TZ"] = zone
    time.tzset()


def clockAt(seconds: float) -> task.Clock:
    """
    A L{task.Clock} reading C{seconds}.
    """
    clock = task.Clock()
    clock.advance(seconds)
    return clock


class DaytimeLineTests(SynchronousTestCase):
    """
    L{daytimeLine} formats RFC 867 lines.
    """

    def test_ctimeBookDate(self) -> None:
        """
        The C{ctime} line is C{time.ctime()} of the whole second, in the
        server's time zone, then CR LF.
        """
        useTimeZone(self, "UTC")
        self.assertEqual(daytimeLine(BOOK_DATE + 0.99), b"Sat Jun 12 10:07:23 2010\r\n")

    def test_ctimeHonoursTZ(self) -> None:
        """
        The C{ctime} line is in the time zone that C{TZ} names.
        """
        useTimeZone(self, "EST+5")
        self.assertEqual(daytimeLine(BOOK_DATE), b"Sat Jun 12 05:07:23 2010\r\n")

    def test_ctimeSingleDigitDay(self) -> None:
        """
        As C{ctime()} does, a day below 10 is padded with a space, so the
        line is always 24 characters before CR LF.
        """
        useTimeZone(self, "UTC")
        line = daytimeLine(calendar.timegm((2010, 6, 5, 9, 8, 7)))
        self.assertEqual(line, b"Sat Jun  5 09:08:07 2010\r\n")

    def test_iso(self) -> None:
        """
        The C{iso} line is RFC 3339 in UTC, whatever C{TZ} says.
        """
        useTimeZone(self, "EST+5")
        self.assertEqual(
            daytimeLine(BOOK_DATE + 0.5, "iso"), b"2010-06-12T10:07:23Z\r\n"
        )

    def test_unknownStyle(self) -> None:
        """
        A format other than C{ctime} or C{iso} is refused, by name.
        """
        error = self.assertRaises(ValueError, daytimeLine, BOOK_DATE, "rfc822")
        self.assertIn("'rfc822'", str(error))
        self.assertRaises(ValueError, DaytimeAnnouncer, task.Clock(), "rfc822")


class RFC868Tests(SynchronousTestCase):
    """
    L{rfc868Time} and L{unixFromRFC868} count seconds since 1900 modulo 2**32.
    """

    def test_unixEpoch(self) -> None:
        """
        1970-01-01T00:00:00Z is 2208988800 seconds after 1900.
        """
        self.assertEqual(rfc868Time(0), b"\x83\xaa\x7e\x80")
        self.assertEqual(struct.unpack("!I", rfc868Time(0)), (2208988800,))

    def test_bookDate(self) -> None:
        """
        The book's date, fraction dropped, is sent big-endian.
        """
        self.assertEqual(
            struct.unpack("!I", rfc868Time(BOOK_DATE + 0.99)),
            (BOOK_DATE + 2208988800,),
        )

    def test_wrap2036(self) -> None:
        """
        At 2036-02-07T06:28:16Z the count wraps from 2**32 - 1 to 0.
        """
        self.assertEqual(time.gmtime(WRAP_2036)[:6], (2036, 2, 7, 6, 28, 16))
        self.assertEqual(rfc868Time(WRAP_2036 - 1), b"\xff\xff\xff\xff")
        self.assertEqual(rfc868Time(WRAP_2036 - 0.5), b"\xff\xff\xff\xff")
        self.assertEqual(rfc868Time(WRAP_2036), b"\x00\x00\x00\x00")
        self.assertEqual(rfc868Time(WRAP_2036 + 1), b"\x00\x00\x00\x01")

    def test_readAcrossWrap(self) -> None:
        """
        A client reads a time in the era nearest its own clock: 1 just after
        the wrap, 2**32 - 1 just before it, from either side.
        """
        self.assertEqual(unixFromRFC868(1, WRAP_2036 - 60), WRAP_2036 + 1)
        self.assertEqual(unixFromRFC868(2**32 - 1, WRAP_2036 + 60), WRAP_2036 - 1)
        self.assertEqual(unixFromRFC868(BOOK_DATE + EPOCH_1900, BOOK_DATE), BOOK_DATE)
        for seconds in (0, BOOK_DATE, WRAP_2036 - 1, WRAP_2036, WRAP_2036 + 1):
            (value,) = struct.unpack("!I", rfc868Time(seconds))
            self.assertEqual(unixFromRFC868(value, seconds + 1000), seconds)


class NTPTimestampTests(SynchronousTestCase):
    """
    L{ntpTimestamp} and L{unixFromNTPTimestamp}: 32 bits of seconds since
    1900, 32 bits of fraction.
    """

    def test_fraction(self) -> None:
        """
        Half a second is 2**31 in the low 32 bits; a quarter 2**30.
        """
        self.assertEqual(ntpTimestamp(0.5), (EPOCH_1900 << 32) | 2**31)
        self.assertEqual(
            ntpTimestamp(BOOK_DATE + 0.25), ((BOOK_DATE + EPOCH_1900) << 32) | 2**30
        )

    def test_fractionStaysBelowOneSecond(self) -> None:
        """
        The largest fraction below a whole second (a float near 2010 holds
        2**-22 s) never carries into the seconds.
        """
        stamp = ntpTimestamp(BOOK_DATE + 1 - 2**-22)
        self.assertEqual(stamp >> 32, BOOK_DATE + EPOCH_1900)
        self.assertEqual(stamp & 0xFFFFFFFF, 2**32 - 2**10)

    def test_wrap2036(self) -> None:
        """
        The seconds wrap to 0 in 2036; the fraction is kept.
        """
        self.assertEqual(ntpTimestamp(WRAP_2036 + 0.5), 2**31)
        self.assertEqual(ntpTimestamp(WRAP_2036 - 0.5) >> 32, 2**32 - 1)

    def test_roundTrip(self) -> None:
        """
        A timestamp reads back to its moment (to the float's precision), in
        either era around 2036.
        """
        for seconds in (BOOK_DATE + 0.123456, WRAP_2036 - 0.25, WRAP_2036 + 0.75):
            read = unixFromNTPTimestamp(ntpTimestamp(seconds), seconds - 3600)
            self.assertAlmostEqual(read, seconds, delta=1e-6)


class ReferenceIdTests(SynchronousTestCase):
    """
    L{parseReferenceId} reads C{--sntp-refid}.
    """

    def test_letters(self) -> None:
        """
        One to four ASCII letters or digits are padded with NULs to 4 bytes.
        """
        self.assertEqual(parseReferenceId("LOCL"), b"LOCL")
        self.assertEqual(parseReferenceId("GPS"), b"GPS\0")
        self.assertEqual(parseReferenceId("P"), b"P\0\0\0")

    def test_address(self) -> None:
        """
        An IPv4 address is its 4 bytes.
        """
        self.assertEqual(parseReferenceId("192.0.2.1"), b"\xc0\x00\x02\x01")

    def test_bad(self) -> None:
        """
        Anything else is refused, quoted.
        """
        for text in ("", "TOOLONG", "A B", "\u00c4B", "1.2.3.4.5", "LO\0"):
            error = self.assertRaises(ValueError, parseReferenceId, text)
            self.assertIn(repr(text), str(error))


class AnnouncingProtocolTests(SynchronousTestCase):
    """
    Over a stream, daytime and time send their message on connect and close.
    """

    def connect(self, factory: AnnouncingFactory) -> StringTransport:
        transport = StringTransport()
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        return transport

    def test_daytime(self) -> None:
        """
        A daytime client gets the line of the clock's time, then the server
        closes.
        """
        transport = self.connect(
            AnnouncingFactory(DaytimeAnnouncer(clockAt(BOOK_DATE), "iso"))
        )
        self.assertEqual(transport.value(), b"2010-06-12T10:07:23Z\r\n")
        self.assertTrue(transport.disconnecting)

    def test_time(self) -> None:
        """
        A time client gets 4 bytes, then the server closes.
        """
        transport = self.connect(AnnouncingFactory(TimeAnnouncer(clockAt(WRAP_2036))))
        self.assertEqual(transport.value(), b"\0\0\0\0")
        self.assertTrue(transport.disconnecting)

    def test_clientDataIgnored(self) -> None:
        """
        What a client sends gets no further reply.
        """
        factory = AnnouncingFactory(TimeAnnouncer(clockAt(BOOK_DATE)))
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET / HTTP/1.0\r\n\r\n" * 100)
        self.assertEqual(transport.value(), rfc868Time(BOOK_DATE))


class RecordingDatagramTransport:
    """
    A UDP transport that records what is written, and to whom.
    """

    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        self.written.append((data, address))


def started(protocol: DatagramProtocol) -> RecordingDatagramTransport:
    """
    Give C{protocol} a L{RecordingDatagramTransport}.
    """
    transport = RecordingDatagramTransport()
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    return transport


def limiter(rate: float = 20.0, burst: int = 40) -> PerSourceRateLimiter:
    return PerSourceRateLimiter(task.Clock(), rate=rate, burst=burst)


class AnnouncingDatagramTests(SynchronousTestCase):
    """
    Over UDP, daytime and time answer any datagram from an ordinary port.
    """

    def test_anyDatagram(self) -> None:
        """
        Empty, short, junk and large datagrams each get the message.
        """
        protocol = AnnouncingDatagramProtocol(
            "time", TimeAnnouncer(clockAt(BOOK_DATE)), limiter()
        )
        transport = started(protocol)
        for data in (b"", b"\n", b"\xff" * 3, b"x" * 1400):
            protocol.datagramReceived(data, ("127.0.0.1", 40000))
        self.assertEqual(
            transport.written, [(rfc868Time(BOOK_DATE), ("127.0.0.1", 40000))] * 4
        )

    def test_daytime(self) -> None:
        """
        A daytime datagram gets the line of the clock's time.
        """
        protocol = AnnouncingDatagramProtocol(
            "daytime", DaytimeAnnouncer(clockAt(BOOK_DATE), "iso"), limiter()
        )
        transport = started(protocol)
        protocol.datagramReceived(b"", ("127.0.0.1", 40000))
        self.assertEqual(
            transport.written, [(b"2010-06-12T10:07:23Z\r\n", ("127.0.0.1", 40000))]
        )

    def test_reflectionPorts(self) -> None:
        """
        Datagrams from the ports of reflecting services (echo, daytime,
        chargen, time, NTP) and from port 0 are dropped.
        """
        protocol = AnnouncingDatagramProtocol(
            "daytime", DaytimeAnnouncer(clockAt(BOOK_DATE)), limiter()
        )
        transport = started(protocol)
        for port in (0, 7, 13, 19, 37, 123):
            protocol.datagramReceived(b"", ("127.0.0.1", port))
        self.assertEqual(transport.written, [])
        self.assertEqual(protocol.dropped, 6)

    def test_rateLimited(self) -> None:
        """
        A source gets its burst of replies, then one per 1/rate seconds;
        other sources are not held up.
        """
        clock = clockAt(BOOK_DATE)
        protocol = AnnouncingDatagramProtocol(
            "time",
            TimeAnnouncer(clock),
            PerSourceRateLimiter(clock, rate=1.0, burst=2),
        )
        transport = started(protocol)
        for _ in range(5):
            protocol.datagramReceived(b"", ("127.0.0.1", 40000))
        protocol.datagramReceived(b"", ("127.0.0.2", 40000))
        clock.advance(1)
        protocol.datagramReceived(b"", ("127.0.0.1", 40000))
        protocol.datagramReceived(b"", ("127.0.0.1", 40000))
        self.assertEqual(
            [address for _data, address in transport.written],
            [("127.0.0.1", 40000)] * 2
            + [("127.0.0.2", 40000)]
            + [("127.0.0.1", 40000)],
        )
        self.assertEqual(protocol.dropped, 4)


def sntpRequest(
    version: int = 4, mode: int = 3, transmit: int = 0x0123456789ABCDEF, poll: int = 6
) -> bytes:
    """
    An SNTP request with arbitrary values in the fields a server ignores.
    """
    return NTP_PACKET.pack(
        (3 << 6) | (version << 3) | mode,
        16,
        poll,
        -6,
        0x00010000,
        0x00020000,
        b"XXXX",
        0x1111111111111111,
        0x2222222222222222,
        0x3333333333333333,
        transmit,
    )


class SteppingClock:
    """
    A clock that moves on by a fixed step each time it is read.
    """

    def __init__(self, start: float, step: float) -> None:
        self.now = start
        self.step = step

    def seconds(self) -> float:
        now = self.now
        self.now += self.step
        return now


class SNTPServerTests(SynchronousTestCase):
    """
    L{SNTPServerProtocol} answers SNTP client requests (RFC 4330 section 5).
    """

    def setUp(self) -> None:
        self.clock = clockAt(BOOK_DATE + 0.25)
        self.server = SNTPServerProtocol(self.clock, limiter())
        self.transport = started(self.server)

    def ask(self, data: bytes, port: int = 40000) -> list[bytes]:
        self.server.datagramReceived(data, ("127.0.0.1", port))
        written, self.transport.written = self.transport.written, []
        return [reply for reply, _address in written]

    def test_fields(self) -> None:
        """
        A version 4 client request gets a 48-byte server reply: leap 0,
        version 4, mode 4, the stratum and reference id configured, the
        request's poll, the precision, no root delay or dispersion, the
        reference time at the current second, the request's transmit time as
        origin, and receive and transmit times from the clock.
        """
        [reply] = self.ask(sntpRequest(transmit=0x0123456789ABCDEF, poll=10))
        self.assertEqual(len(reply), 48)
        (
            first,
            stratum,
            poll,
            precision,
            rootDelay,
            rootDispersion,
            referenceId,
            reference,
            origin,
            received,
            transmitted,
        ) = NTP_PACKET.unpack(reply)
        self.assertEqual((first >> 6, (first >> 3) & 7, first & 7), (0, 4, 4))
        self.assertEqual(stratum, 10)
        self.assertEqual(poll, 10)
        self.assertEqual(precision, -20)
        self.assertEqual((rootDelay, rootDispersion), (0, 0))
        self.assertEqual(referenceId, b"LOCL")
        self.assertEqual(reference, (BOOK_DATE + EPOCH_1900) << 32)
        self.assertEqual(origin, 0x0123456789ABCDEF)
        self.assertEqual(received, ((BOOK_DATE + EPOCH_1900) << 32) | 2**30)
        self.assertEqual(transmitted, received)

    def test_receiveBeforeTransmit(self) -> None:
        """
        The receive time is read when the request is handled, the transmit
        time when the reply is made, so a moving clock shows in both.
        """
        server = SNTPServerProtocol(SteppingClock(BOOK_DATE, 0.5), limiter())
        transport = started(server)
        server.datagramReceived(sntpRequest(), ("127.0.0.1", 40000))
        [(reply, _address)] = transport.written
        fields = NTP_PACKET.unpack(reply)
        self.assertEqual(fields[9], ntpTimestamp(BOOK_DATE))
        self.assertEqual(fields[10], ntpTimestamp(BOOK_DATE + 0.5))

    def test_versionEchoed(self) -> None:
        """
        Versions 1 to 4 are answered in the request's version.
        """
        for version in (1, 2, 3, 4):
            [reply] = self.ask(sntpRequest(version=version))
            self.assertEqual((reply[0] >> 3) & 7, version)

    def test_badVersionIgnored(self) -> None:
        """
        Versions 0, 5, 6 and 7 get no answer.
        """
        for version in (0, 5, 6, 7):
            self.assertEqual(self.ask(sntpRequest(version=version)), [])

    def test_modes(self) -> None:
        """
        Mode 3 (client) is answered in mode 4 (server), mode 1 (symmetric
        active) in mode 2 (symmetric passive), each in versions 3 and 4
        echoed; every other mode gets nothing: never a server's, passive or
        broadcast packet (no loops between servers), nor control (6) or
        private (7) messages, nor mode 0.
        """
        for version in (3, 4):
            for mode, replyMode in ((3, 4), (1, 2)):
                [reply] = self.ask(sntpRequest(version=version, mode=mode))
                self.assertEqual(
                    (reply[0] >> 6, (reply[0] >> 3) & 7, reply[0] & 7),
                    (0, version, replyMode),
                )
                self.assertEqual(reply[1], 10)
                self.assertEqual(NTP_PACKET.unpack(reply)[8], 0x0123456789ABCDEF)
            for mode in (0, 2, 4, 5, 6, 7):
                self.assertEqual(self.ask(sntpRequest(version=version, mode=mode)), [])

    def test_shortAndJunkIgnored(self) -> None:
        """
        Datagrams shorter than 48 bytes, empty or junk, get no answer.
        """
        request = sntpRequest()
        for data in (b"", b"\x23", request[:47], b"\xff" * 47, b"hello\n"):
            self.assertEqual(self.ask(data), [])

    def test_longerRequest(self) -> None:
        """
        A request with an authenticator (key id and digest) after its 48
        bytes is answered with a plain 48-byte reply.
        """
        [reply] = self.ask(sntpRequest() + b"\0\0\0\1" + b"\xaa" * 16)
        self.assertEqual(len(reply), 48)

    def test_fromPort123(self) -> None:
        """
        NTP daemons send from port 123: their requests are answered (a
        server reply is never answered, so two servers cannot loop).
        """
        self.assertEqual(len(self.ask(sntpRequest(), port=123)), 1)
        self.assertEqual(self.ask(sntpRequest(mode=4), port=123), [])

    def test_reflectionPorts(self) -> None:
        """
        Requests from the other reflecting services' ports, and port 0, are
        dropped.
        """
        for port in (0, 7, 13, 19, 37):
            self.assertEqual(self.ask(sntpRequest(), port=port), [])
        self.assertEqual(self.server.dropped, 5)

    def test_rateLimited(self) -> None:
        """
        Each source gets at most its burst of replies at once; beyond it,
        one Kiss-o'-Death per the KoD limit, nothing else.
        """
        server = SNTPServerProtocol(self.clock, limiter(rate=1.0, burst=3))
        transport = started(server)
        for _ in range(10):
            server.datagramReceived(sntpRequest(), ("127.0.0.1", 123))
        server.datagramReceived(sntpRequest(), ("127.0.0.2", 123))
        replies = [reply for reply, _address in transport.written]
        self.assertEqual([reply[1] for reply in replies], [10, 10, 10, 0, 10])
        self.assertEqual(server.dropped, 7)
        self.assertEqual(server.kisses, 1)

    def test_kissOfDeath(self) -> None:
        """
        A Kiss-o'-Death (RFC 4330 section 8) has leap indicator 3, the
        request's version and the reply mode of its mode, stratum 0, C{RATE}
        as reference id, the request's poll, and no time of the server's:
        every timestamp is the request's transmit time, the reference 0.
        """
        server = SNTPServerProtocol(
            self.clock, PerSourceRateLimiter(self.clock, rate=1.0, burst=1)
        )
        transport = started(server)
        for version, mode, replyMode in ((4, 3, 4), (3, 1, 2)):
            self.clock.advance(60)
            for transmit in (1, 0x0123456789ABCDEF):
                server.datagramReceived(
                    sntpRequest(version, mode, transmit, poll=4),
                    ("127.0.0.1", 40000),
                )
            (_reply, _address), (kiss, _address) = transport.written
            transport.written = []
            fields = NTP_PACKET.unpack(kiss)
            self.assertEqual(
                (fields[0] >> 6, (fields[0] >> 3) & 7, fields[0] & 7),
                (3, version, replyMode),
            )
            self.assertEqual(fields[1:3], (0, 4))
            self.assertEqual(fields[6:], (b"RATE", 0) + (0x0123456789ABCDEF,) * 3)

    def test_kissOfDeathLimited(self) -> None:
        """
        Kiss-o'-Death replies are limited per source too (one every two
        seconds by default), and junk over the limit gets none: a forged
        flood gets at most as many bytes back, at a trickle.
        """
        server = SNTPServerProtocol(
            self.clock, PerSourceRateLimiter(self.clock, rate=1.0, burst=1)
        )
        transport = started(server)
        for _ in range(100):
            server.datagramReceived(sntpRequest(), ("127.0.0.1", 40000))
            server.datagramReceived(sntpRequest(mode=4), ("127.0.0.1", 40000))
        self.assertEqual(len(transport.written), 2)
        self.clock.advance(2)
        for _ in range(100):
            server.datagramReceived(sntpRequest(), ("127.0.0.1", 40000))
        # The one reply earned in 2 s, then one KoD.
        self.assertEqual([reply[1] for reply, _ in transport.written], [10, 0, 10, 0])
        self.assertEqual(server.kisses, 2)

    def test_configured(self) -> None:
        """
        The stratum and reference id given are announced.
        """
        server = SNTPServerProtocol(
            self.clock, limiter(), stratum=2, referenceId=parseReferenceId("192.0.2.1")
        )
        transport = started(server)
        server.datagramReceived(sntpRequest(), ("127.0.0.1", 40000))
        [(reply, _address)] = transport.written
        self.assertEqual(reply[1], 2)
        self.assertEqual(reply[12:16], b"\xc0\x00\x02\x01")

    def test_badConfiguration(self) -> None:
        """
        A stratum outside 1-15 or a reference id of other than 4 bytes is
        refused.
        """
        for stratum in (0, 16):
            self.assertRaises(
                ValueError, SNTPServerProtocol, self.clock, limiter(), stratum
            )
        self.assertRaises(
            ValueError, SNTPServerProtocol, self.clock, limiter(), 2, b"LOC"
        )

    def test_wrap2036(self) -> None:
        """
        After the 2036 wrap, the timestamps' seconds start again from 0.
        """
        server = SNTPServerProtocol(clockAt(WRAP_2036 + 1.5), limiter())
        transport = started(server)
        server.datagramReceived(sntpRequest(), ("127.0.0.1", 40000))
        [(reply, _address)] = transport.written
        fields = NTP_PACKET.unpack(reply)
        self.assertEqual(fields[9], (1 << 32) | 2**31)
        self.assertEqual(fields[7], 1 << 32)


class UDPClient(DatagramProtocol):
    """
    Send datagrams and collect the answers.
    """

    def __init__(self) -> None:
        self.answers: defer.DeferredQueue[bytes] = defer.DeferredQueue()

    def datagramReceived(self, data: bytes, address: Any) -> None:
        self.answers.put(data)


class LoopbackTests(TestCase):
    """
    The clock protocols over real loopback sockets, with an injected clock.
    """

    def listenUDP(self, protocol: DatagramProtocol) -> int:
        port = _reactor.listenUDP(0, protocol, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_tcp(self) -> defer.Generator:
        """
        Over TCP, daytime sends its line and time its 4 bytes, then close.
        """
        clock = clockAt(WRAP_2036 - 1)
        for factory, expected in [
            (
                AnnouncingFactory(DaytimeAnnouncer(clock, "iso")),
                b"2036-02-07T06:28:15Z\r\n",
            ),
            (AnnouncingFactory(TimeAnnouncer(clock)), b"\xff\xff\xff\xff"),
        ]:
            port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            client = CollectUntilClosed(halfClose=False)
            yield connectProtocol(
                TCP4ClientEndpoint(_reactor, "127.0.0.1", port.getHost().port), client
            )
            received = yield client.closed
            self.assertEqual(received, expected)

    @defer.inlineCallbacks
    def test_udp(self) -> defer.Generator:
        """
        Over UDP, an empty datagram gets the time, and an SNTP request its
        reply, from the port it was sent to.
        """
        clock = clockAt(BOOK_DATE)
        timePort = self.listenUDP(
            AnnouncingDatagramProtocol("time", TimeAnnouncer(clock), limiter())
        )
        sntpPort = self.listenUDP(SNTPServerProtocol(clock, limiter()))
        client = UDPClient()
        self.listenUDP(client)
        client.transport.write(b"", ("127.0.0.1", timePort))
        answer = yield client.answers.get()
        self.assertEqual(answer, rfc868Time(BOOK_DATE))
        client.transport.write(b"junk", ("127.0.0.1", sntpPort))
        client.transport.write(sntpRequest(transmit=42), ("127.0.0.1", sntpPort))
        answer = yield client.answers.get()
        self.assertEqual(NTP_PACKET.unpack(answer)[8], 42)
        self.assertEqual(NTP_PACKET.unpack(answer)[9], ntpTimestamp(BOOK_DATE))

    @defer.inlineCallbacks
    def test_sntpEveryMode(self) -> defer.Generator:
        """
        Raw requests of every mode 0-7 in versions 3 and 4 over loopback:
        only modes 1 and 3 are answered (in modes 2 and 4, the version
        echoed); over the limit, a Kiss-o'-Death. A final client request
        (its reply comes after any earlier one) closes each round.
        """
        clock = clockAt(BOOK_DATE)
        server = SNTPServerProtocol(clock, PerSourceRateLimiter(clock, 100, 100))
        sntpPort = self.listenUDP(server)
        client = UDPClient()
        self.listenUDP(client)
        answered = []
        for version in (3, 4):
            for mode in range(8):
                request = sntpRequest(version=version, mode=mode, transmit=mode)
                client.transport.write(request, ("127.0.0.1", sntpPort))
            client.transport.write(sntpRequest(transmit=99), ("127.0.0.1", sntpPort))
            while True:
                answer = yield client.answers.get()
                fields = NTP_PACKET.unpack(answer)
                if fields[8] == 99:
                    break
                answered.append(((fields[0] >> 3) & 7, fields[8], fields[0] & 7))
        self.assertEqual(answered, [(3, 1, 2), (3, 3, 4), (4, 1, 2), (4, 3, 4)])
        server.limiter.setRate(0.5)
        client.transport.write(sntpRequest(transmit=7), ("127.0.0.1", sntpPort))
        client.transport.write(sntpRequest(transmit=8), ("127.0.0.1", sntpPort))
        answers = []
        for _ in range(2):
            answers.append((yield client.answers.get()))
        self.assertEqual([answer[1] for answer in answers], [10, 0])
        self.assertEqual(answers[1][12:16], b"RATE")


class PluginTests(SynchronousTestCase):
    """
    The C{daytime}, C{time} and C{sntp} plugins' options and wiring.
    """

    def parse(self, *arguments: str) -> Options:
        options = Options([clockplugins.daytime, clockplugins.time, clockplugins.sntp])
        options.parseOptions(list(arguments))
        return options

    def test_defaults(self) -> None:
        """
        By default daytime and time listen on TCP and UDP 50013 and 50037,
        sntp on UDP 50123, all on 127.0.0.1 only.
        """
        options = self.parse()
        listeners = list(makeService(options, reactor=MemoryReactor()))
        described = sorted(
            (listener.serviceName, type(listener).__name__, listener.description)
            for listener in listeners
        )
        self.assertEqual(
            described,
            [
                ("daytime", "DatagramListener", "udp:50013:interface=127.0.0.1"),
                ("daytime", "StreamListener", "tcp:50013:interface=127.0.0.1"),
                ("sntp", "DatagramListener", "udp:50123:interface=127.0.0.1"),
                ("time", "DatagramListener", "udp:50037:interface=127.0.0.1"),
                ("time", "StreamListener", "tcp:50037:interface=127.0.0.1"),
            ],
        )
        protocols = {
            listener.serviceName: listener.protocol.wrapped  # inside the policy
            for listener in listeners
            if isinstance(listener, DatagramListener)
        }
        self.assertIsInstance(protocols["sntp"], SNTPServerProtocol)
        self.assertIsInstance(protocols["time"], AnnouncingDatagramProtocol)
        self.assertIsInstance(protocols["daytime"].announcer, DaytimeAnnouncer)

    def test_options(self) -> None:
        """
        C{--daytime-format}, C{--sntp-stratum}, C{--sntp-refid} and
        C{--NAME-udp-rate} reach the protocols.
        """
        options = self.parse(
            "--daytime-format=iso",
            "--sntp-stratum=3",
            "--sntp-refid=192.0.2.7",
            "--time-udp-rate=5",
            "--daytime",
            "tcp:0",
            "--daytime",
            "udp:0",
        )
        built = {
            (listener.serviceName, type(listener)): listener
            for listener in makeService(options, reactor=MemoryReactor())
        }
        # The service's own factory and protocols, inside policy and log.
        daytimeFactory = built["daytime", StreamListener].factory.wrappedFactory
        self.assertEqual(daytimeFactory.announcer.style, "iso")
        datagrams = {
            name: listener.protocol.wrapped
            for (name, kind), listener in built.items()
            if kind is DatagramListener
        }
        self.assertEqual(datagrams["daytime"].announcer.style, "iso")
        server = datagrams["sntp"]
        self.assertEqual((server.stratum, server.referenceId), (3, b"\xc0\x00\x02\x07"))
        self.assertEqual(datagrams["time"].limiter.rate, 5.0)

    def test_configFile(self) -> None:
        """
        The config file's C{[daytime]} and C{[sntp]} tables set the same
        options, and the command line wins.
        """
        path = self.mktemp()
        with open(path, "w") as config:
            config.write(
                '[daytime]\nformat = "iso"\n'
                '[sntp]\nendpoints = ["udp:0"]\nstratum = 1\nrefid = "GPS"\n'
            )
        options = self.parse("--config", path, "--sntp-stratum=2")
        self.assertEqual(options["serviceOptions"]["daytime"]["format"], "iso")
        self.assertEqual(
            options["serviceOptions"]["sntp"],
            {"stratum": 2, "refid": "GPS", "udp-rate": 20.0},
        )
        self.assertEqual(options["endpoints"]["sntp"], ["udp:0"])

    def test_badOptions(self) -> None:
        """
        A bad value stops start-up with a message quoting it.
        """
        for arguments, quoted in [
            (["--daytime-format=rfc822"], "'rfc822'"),
            (["--sntp-stratum=16"], "16"),
            (["--sntp-stratum=0"], "0"),
            (["--sntp-refid=TOOLONG"], "'TOOLONG'"),
            (["--time-udp-rate=0"], "0.0"),
            (["--sntp", "tcp:123"], "'tcp:123'"),
        ]:
            error = self.assertRaises(UsageError, self.parse, *arguments)
            self.assertIn(quoted, str(error))
