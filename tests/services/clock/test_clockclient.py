"""
Tests for L{netd.services.clock.client}: reading daytime, time and SNTP replies, and
the commands run in this process against netd's protocols on loopback.
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.testing import StringTransport
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.cli import Options
from netd.datagram import PerSourceRateLimiter
from netd.services.clock.client import (
    MAX_REPLY,
    DatagramExchange,
    ReadToClose,
    describeReferenceId,
    formatUTC,
    isSNTPAnswer,
    offsetAndDelay,
    parseDaytime,
    sntpRequest,
)
from netd.services.clock.server import (
    NTP_PACKET,
    AnnouncingDatagramProtocol,
    AnnouncingFactory,
    DaytimeAnnouncer,
    SNTPServerProtocol,
    TimeAnnouncer,
    ntpTimestamp,
)
from tests.services.clock.test_clock import (
    BOOK_DATE,
    WRAP_2036,
    clockAt,
    started,
    useTimeZone,
)


def offsetIn(output: str) -> float:
    """
    The offset in netd-client's C{offset +0.123 s from the local clock} line.
    """
    match = re.search(r"^offset ([-+][\d.]+) s from the local clock", output, re.M)
    if match is None:
        raise AssertionError(f"no offset in {output!r}")
    return float(match[1])


class ParsingTests(SynchronousTestCase):
    """
    The clients read what netd's clock services send.
    """

    def test_daytimeISO(self) -> None:
        """
        An RFC 3339 UTC line reads as its moment, whatever the local zone.
        """
        useTimeZone(self, "EST+5")
        self.assertEqual(parseDaytime(b"2010-06-12T10:07:23Z\r\n"), BOOK_DATE)

    def test_daytimeCtime(self) -> None:
        """
        A ctime line reads in the local time zone (taken to be the server's).
        """
        useTimeZone(self, "EST+5")
        self.assertEqual(parseDaytime(b"Sat Jun 12 05:07:23 2010\r\n"), BOOK_DATE)
        self.assertEqual(
            parseDaytime(b"Sat Jun  5 05:07:23 2010\r\n"), BOOK_DATE - 7 * 86400
        )

    def test_daytimeOther(self) -> None:
        """
        Any other text, or bytes that are not text, read as L{None}.
        """
        for line in (b"", b"tomorrow\r\n", b"\xff\xfe", b"2010-06-12 10:07:23"):
            self.assertIsNone(parseDaytime(line))

    def test_formatUTC(self) -> None:
        """
        Times print as RFC 3339 UTC, with microseconds only when there is a
        fraction.
        """
        self.assertEqual(formatUTC(BOOK_DATE), "2010-06-12T10:07:23Z")
        self.assertEqual(formatUTC(BOOK_DATE + 0.25), "2010-06-12T10:07:23.250000Z")
        self.assertEqual(formatUTC(WRAP_2036), "2036-02-07T06:28:16Z")

    def test_sntpRequest(self) -> None:
        """
        The request is 48 bytes, version 4, client mode, with the send time
        as its transmit timestamp and zeros elsewhere.
        """
        request = sntpRequest(BOOK_DATE + 0.5)
        self.assertEqual(len(request), 48)
        self.assertEqual(request[0], 0x23)
        self.assertEqual(request[1:40], b"\0" * 39)
        self.assertEqual(NTP_PACKET.unpack(request)[10], ntpTimestamp(BOOK_DATE + 0.5))

    def test_isSNTPAnswer(self) -> None:
        """
        Only a server-mode packet whose origin is our transmit timestamp
        answers our request.
        """
        clock = clockAt(BOOK_DATE)
        server = SNTPServerProtocol(clock, PerSourceRateLimiter(clock))
        request = sntpRequest(BOOK_DATE)
        answer = server.reply(request, ("127.0.0.1", 40000))
        assert answer is not None
        self.assertTrue(isSNTPAnswer(request, answer))
        self.assertFalse(isSNTPAnswer(request, answer[:47]))
        self.assertFalse(
            isSNTPAnswer(request, bytes([answer[0] & 0xF8 | 5]) + answer[1:])
        )
        self.assertFalse(isSNTPAnswer(sntpRequest(BOOK_DATE + 1), answer))

    def test_offsetAndDelay(self) -> None:
        """
        A server 10 s ahead, 0.1 s away each way, taking 0.05 s to answer:
        offset 10, delay 0.2.
        """
        offset, delay = offsetAndDelay(100.0, 110.1, 110.15, 100.25)
        self.assertAlmostEqual(offset, 10.0)
        self.assertAlmostEqual(delay, 0.2)

    def test_referenceId(self) -> None:
        """
        Reference ids show as letters at stratum 1 (and for codes such as
        LOCL), as an address above.
        """
        self.assertEqual(describeReferenceId(1, b"GPS\0"), "GPS")
        self.assertEqual(describeReferenceId(10, b"LOCL"), "LOCL")
        self.assertEqual(describeReferenceId(2, b"\xc0\x00\x02\x01"), "192.0.2.1")


class ReadToCloseTests(SynchronousTestCase):
    """
    L{ReadToClose} collects a stream reply, within bounds.
    """

    def test_oversized(self) -> None:
        """
        A server that sends more than a clock reply could be is cut off.
        """
        client = ReadToClose(task.Clock(), 0.0)
        transport = StringTransport()
        client.makeConnection(transport)
        client.dataReceived(b"x" * (MAX_REPLY + 1))
        self.assertTrue(transport.disconnecting)
        client.connectionLost(None)
        self.failureResultOf(client.done, ValueError)


class DatagramExchangeTests(SynchronousTestCase):
    """
    L{DatagramExchange} takes its answer only from the server.
    """

    def test_otherSourcesIgnored(self) -> None:
        """
        Datagrams from another address or port, or that are not answers,
        are ignored; the first answer from the server is taken, with the
        times it was sent and received.
        """
        clock = clockAt(BOOK_DATE)
        exchange = DatagramExchange(
            clock,
            ("127.0.0.1", 37),
            lambda sent: b"request",
            lambda request, answer: answer != b"junk",
        )
        transport = started(exchange)
        self.assertEqual(transport.written, [(b"request", ("127.0.0.1", 37))])
        clock.advance(1)
        exchange.datagramReceived(b"spoof", ("127.0.0.2", 37))
        exchange.datagramReceived(b"spoof", ("127.0.0.1", 38))
        exchange.datagramReceived(b"junk", ("127.0.0.1", 37))
        self.assertNoResult(exchange.done)
        exchange.datagramReceived(b"answer", ("127.0.0.1", 37))
        exchange.datagramReceived(b"again", ("127.0.0.1", 37))
        reply = self.successResultOf(exchange.done)
        self.assertEqual(
            (reply.data, reply.sent, reply.received),
            (b"answer", BOOK_DATE, BOOK_DATE + 1),
        )


class CommandTests(TestCase):
    """
    The commands, run in this process against netd's protocols on loopback
    whose clock is set a known amount ahead of the real one.
    """

    def command(self, *arguments: str) -> tuple[Any, list[str]]:
        options = Options()
        options.parseOptions(list(arguments))
        command = options.subOptions
        output: list[str] = []
        command.write = output.append
        return command, output

    def serverClock(self, ahead: float) -> task.Clock:
        return clockAt(time.time() + ahead)

    @defer.inlineCallbacks
    def test_time(self) -> defer.Generator:
        """
        C{netd-client time} reads a server an hour ahead, over TCP and UDP.
        """
        announcer = TimeAnnouncer(self.serverClock(3600))
        tcp = _reactor.listenTCP(0, AnnouncingFactory(announcer), interface="127.0.0.1")
        self.addCleanup(tcp.stopListening)
        udp = _reactor.listenUDP(
            0,
            AnnouncingDatagramProtocol(
                "time", announcer, PerSourceRateLimiter(_reactor)
            ),
            interface="127.0.0.1",
        )
        self.addCleanup(udp.stopListening)
        for arguments in [
            ("--port", str(tcp.getHost().port)),
            ("--udp", "--port", str(udp.getHost().port)),
        ]:
            command, output = self.command("time", *arguments)
            status = yield command.run(_reactor)
            self.assertEqual(status, 0)
            self.assertLessEqual(abs(offsetIn("".join(output)) - 3600), 2)

    @defer.inlineCallbacks
    def test_daytime(self) -> defer.Generator:
        """
        C{netd-client daytime} prints the line and the offset of a server
        a day behind.
        """
        factory = AnnouncingFactory(DaytimeAnnouncer(self.serverClock(-86400), "iso"))
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        command, output = self.command("daytime", "--port", str(port.getHost().port))
        status = yield command.run(_reactor)
        self.assertEqual(status, 0)
        line, *_ = "".join(output).splitlines()
        read = calendar.timegm(time.strptime(line, "%Y-%m-%dT%H:%M:%SZ"))
        self.assertLessEqual(abs(read + 86400 - time.time()), 2)
        self.assertLessEqual(abs(offsetIn("".join(output)) + 86400), 2)

    @defer.inlineCallbacks
    def test_sntp(self) -> defer.Generator:
        """
        C{netd-client sntp} prints the stratum, reference and an offset of a
        server 2.5 s ahead.
        """
        server = SNTPServerProtocol(
            self.serverClock(2.5),
            PerSourceRateLimiter(_reactor),
            stratum=1,
            referenceId=b"GPS\0",
        )
        port = _reactor.listenUDP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        command, output = self.command("sntp", "--port", str(port.getHost().port))
        status = yield command.run(_reactor)
        self.assertEqual(status, 0)
        text = "".join(output)
        self.assertIn("stratum 1, reference GPS, version 4, leap indicator 0\n", text)
        self.assertLessEqual(abs(offsetIn(text) - 2.5), 1)

    @defer.inlineCallbacks
    def test_sntpKissOfDeath(self) -> defer.Generator:
        """
        A Kiss-o'-Death fails C{netd-client sntp} with its kiss code.
        """
        server = SNTPServerProtocol(
            _reactor, PerSourceRateLimiter(_reactor, rate=0.001, burst=1)
        )
        port = _reactor.listenUDP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        for expected in (0, ConnectionError):
            command, output = self.command("sntp", "--port", str(port.getHost().port))
            if expected == 0:
                status = yield command.run(_reactor)
                self.assertEqual(status, 0)
            else:
                error = yield self.assertFailure(command.run(_reactor), expected)
                self.assertIn("Kiss-o'-Death 'RATE'", str(error))

    def listenAnnouncing(self, message: bytes) -> int:
        """
        Listen on loopback with a stream server that sends C{message}.
        """

        class Fixed:
            def announcement(self) -> bytes:
                return message

        port = _reactor.listenTCP(0, AnnouncingFactory(Fixed()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_notRFC868(self) -> defer.Generator:
        """
        A reply that is not 4 bytes is an error naming what came.
        """
        command, output = self.command(
            "time", "--port", str(self.listenAnnouncing(b"12345"))
        )
        error = yield self.assertFailure(command.run(_reactor), ValueError)
        self.assertIn("b'12345'", str(error))

    @defer.inlineCallbacks
    def test_unknownDaytime(self) -> defer.Generator:
        """
        A daytime line netd-client cannot read is printed without an offset.
        """
        command, output = self.command(
            "daytime", "--port", str(self.listenAnnouncing(b"half past nine\r\n"))
        )
        status = yield command.run(_reactor)
        self.assertEqual(status, 0)
        self.assertEqual(
            output, ["half past nine\n", "(not a ctime or RFC 3339 line: no offset)\n"]
        )

    def test_badPort(self) -> None:
        """
        A port outside 1-65535 is refused.
        """
        self.assertRaises(UsageError, self.command, "time", "--port", "70000")
