"""
Tests for L{netd.services.chargen}: the pattern, the protocols alone and
over real sockets, and the plugin's wiring.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.testing import StringTransport
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.connlog import ConnectionLoggingFactory
from netd.datagram import PerSourceRateLimiter
from netd.services.chargen.plugin import chargen
from netd.services.chargen.server import (
    CYCLE,
    LINE_LENGTH,
    MAX_DATAGRAM_REPLY,
    RING,
    STREAM_CHUNK,
    ChargenDatagramProtocol,
    ChargenFactory,
    patternLines,
)
from netd.services.discard.plugin import discard
from netd.tap import Options
from tests.common import CollectUntilClosed

#: RFC 864's example: its first line.
RFC_FIRST_LINE = (
    b"!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefgh\r\n"
)


def stream(length: int) -> bytes:
    """
    The first C{length} bytes of a chargen stream.
    """
    return (CYCLE * (length // len(CYCLE) + 1))[:length]


class PatternTests(SynchronousTestCase):
    """
    L{patternLines}: RFC 864's rotating pattern.
    """

    def test_ring(self) -> None:
        """
        The ring holds the 95 printing ASCII characters, C{!} first and the
        space last.
        """
        self.assertEqual(len(RING), 95)
        self.assertEqual(set(RING), set(range(0x20, 0x7F)))
        self.assertEqual(RING[:1] + RING[-2:], b"!~ ")

    def test_lines(self) -> None:
        """
        Line 0 is RFC 864's first line; every line is 72 characters and CR
        LF, starting one character further round the ring than the last;
        after 95 lines the pattern starts again.
        """
        lines = patternLines(0, 200).split(b"\r\n")[:-1]
        self.assertEqual(lines[0] + b"\r\n", RFC_FIRST_LINE)
        self.assertEqual({len(line) for line in lines}, {LINE_LENGTH})
        for number, line in enumerate(lines):
            start = number % 95
            self.assertEqual(line[:1], RING[start : start + 1])
        self.assertEqual(lines[93][:3], b"~ !")
        self.assertEqual(lines[95:190], lines[:95])
        self.assertEqual(CYCLE, patternLines(0, 95))
        self.assertEqual(patternLines(95, 1), RFC_FIRST_LINE)

    def test_chunk(self) -> None:
        """
        The stream's chunk is whole turns of the pattern, so chunk after
        chunk is the pattern unbroken.
        """
        self.assertEqual(len(STREAM_CHUNK) % len(CYCLE), 0)
        self.assertEqual(STREAM_CHUNK * 2, stream(2 * len(STREAM_CHUNK)))


def connect() -> tuple[Any, StringTransport]:
    protocol = ChargenFactory().buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


class ChargenProtocolTests(SynchronousTestCase):
    """
    L{ChargenProtocol} on a L{StringTransport}.
    """

    def test_pullProducer(self) -> None:
        """
        The protocol is its transport's pull producer: it writes nothing by
        itself, and one chunk each time the transport asks.
        """
        protocol, transport = connect()
        self.assertIs(transport.producer, protocol)
        self.assertFalse(transport.streaming)
        self.assertEqual(transport.value(), b"")
        for asked in range(1, 4):
            protocol.resumeProducing()
            self.assertEqual(len(transport.value()), asked * len(STREAM_CHUNK))
        self.assertEqual(transport.value(), stream(3 * len(STREAM_CHUNK)))

    def test_inputIgnored(self) -> None:
        """
        What the client sends changes nothing; a half-close does not stop
        the stream.
        """
        protocol, transport = connect()
        protocol.dataReceived(b"hello\r\n" * 1000)
        protocol.readConnectionLost()
        protocol.resumeProducing()
        self.assertEqual(transport.value(), STREAM_CHUNK)
        self.assertFalse(transport.disconnecting)

    def test_close(self) -> None:
        """
        When the client cannot read any more, or netd stops, the
        connection closes at once and the producer is unregistered.
        """
        for close in ("writeConnectionLost", "stopGracefully"):
            protocol, transport = connect()
            getattr(protocol, close)()
            self.assertTrue(transport.disconnecting)
            self.assertIsNone(transport.producer)


class ChargenDatagramTests(SynchronousTestCase):
    """
    L{ChargenDatagramProtocol}: no reply longer than its request.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.sent: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, address: Any) -> None:
        self.sent.append((data, address))

    def serve(self, rate: float = 1000.0) -> ChargenDatagramProtocol:
        limiter = PerSourceRateLimiter(self.clock)
        limiter.setRate(rate)
        protocol = ChargenDatagramProtocol(limiter)
        protocol.transport = self  # type: ignore[assignment]
        return protocol

    def test_reflectionPortsAndRate(self) -> None:
        """
        Datagrams from the reflecting services' ports get nothing; a source
        gets its burst of replies (two seconds' worth), then the rate.
        """
        protocol = self.serve(rate=1.0)
        for port in (0, 7, 13, 19, 37, 123):
            protocol.datagramReceived(b"loop", ("127.0.0.1", port))
        self.assertEqual(self.sent, [])
        for _ in range(5):
            protocol.datagramReceived(b"x", ("127.0.0.1", 40000))
        self.assertEqual(len(self.sent), 2)
        self.clock.advance(1)
        protocol.datagramReceived(b"x", ("127.0.0.1", 40000))
        self.assertEqual(len(self.sent), 3)
        self.assertEqual(protocol.dropped, 9)

    def test_noLongerThanTheRequest(self) -> None:
        """
        Each reply is the pattern cut to the request's length, at most 512
        bytes: 0 for 0, 1 for 1, 512 for 512 and for 65,507; each starts
        one line further on.
        """
        protocol = self.serve()
        sizes = [0, 1, 74, 100, 512, 513, 65507]
        for size in sizes:
            protocol.datagramReceived(b"x" * size, ("127.0.0.1", 40000))
        self.assertEqual(
            [len(data) for data, _address in self.sent],
            [min(size, MAX_DATAGRAM_REPLY) for size in sizes],
        )
        for line, (data, _address) in enumerate(self.sent):
            self.assertEqual(data, patternLines(line, 7)[: len(data)])

    def test_cycle(self) -> None:
        """
        After 95 datagrams, replies start from the first line again, and a
        reply starting on the last lines wraps round.
        """
        protocol = self.serve()
        for _ in range(96):
            protocol.datagramReceived(b"x" * 512, ("127.0.0.1", 40000))
        self.assertEqual(self.sent[94][0], patternLines(94, 7)[:512])
        self.assertEqual(self.sent[95][0], self.sent[0][0])


class ChargenLoopbackTests(TestCase):
    """
    chargen over real sockets on 127.0.0.1.
    """

    def listen(self) -> tuple[ConnectionLoggingFactory, int]:
        factory = ConnectionLoggingFactory("chargen", ChargenFactory(), _reactor)
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    @defer.inlineCallbacks
    def test_stream(self) -> Any:
        """
        A client reads the pattern unbroken (here 1 MiB) and closes.
        """
        _factory, port = self.listen()
        client = CollectUntilClosed(halfClose=True, until=1 << 20)
        yield connectProtocol(TCP4ClientEndpoint(_reactor, "127.0.0.1", port), client)
        received = yield client.closed
        self.assertGreaterEqual(len(received), 1 << 20)
        self.assertEqual(received, stream(len(received)))

    @defer.inlineCallbacks
    def test_clientThatNeverReads(self) -> Any:
        """
        For a client that does not read, netd holds at most one chunk once
        the kernel's buffers are full; when it reads, the pattern goes on
        unbroken.
        """
        factory, port = self.listen()
        client = CollectUntilClosed(halfClose=False, until=4 << 20)
        yield connectProtocol(TCP4ClientEndpoint(_reactor, "127.0.0.1", port), client)
        client.transport.pauseProducing()
        while not factory.protocols:
            yield task.deferLater(_reactor, 0.001, lambda: None)
        (wrapper,) = factory.protocols
        server = wrapper.transport
        produced = []
        original = wrapper.wrappedProtocol.resumeProducing

        def counting() -> None:
            produced.append(1)
            original()

        wrapper.wrappedProtocol.resumeProducing = counting
        # Wait until the stream stalls: no chunk asked for in 50 turns.
        quiet = 0
        for _ in range(20000):
            before = len(produced)
            yield task.deferLater(_reactor, 0.001, lambda: None)
            quiet = quiet + 1 if len(produced) == before else 0
            if quiet >= 50 and server in _reactor.getWriters():
                break
        buffered = len(server.dataBuffer) - server.offset
        buffered += sum(map(len, server._tempDataBuffer))
        self.assertLessEqual(buffered, len(STREAM_CHUNK))
        self.assertLess(len(produced) * len(STREAM_CHUNK), 64 << 20)
        client.transport.resumeProducing()
        received = yield client.closed
        self.assertEqual(received, stream(len(received)))


class ChargenPluginTests(SynchronousTestCase):
    """
    The C{chargen} plugin: off by default, TCP and UDP on 50019.
    """

    def test_offByDefault(self) -> None:
        """
        Without C{--services}, chargen does not run; named, it serves TCP
        and UDP 50019 on 127.0.0.1.
        """
        options = Options([chargen, discard])
        options.parseOptions([])
        self.assertEqual(options["services"], [])
        options = Options([chargen, discard])
        options.parseOptions(["--services=chargen", "--chargen-udp-rate=5"])
        self.assertEqual(options["services"], [chargen])
        self.assertEqual(
            options["endpoints"]["chargen"],
            ["tcp:50019:interface=127.0.0.1", "udp:50019:interface=127.0.0.1"],
        )
        self.assertEqual(options["serviceOptions"]["chargen"], {"udp-rate": 5.0})

    def test_configFile(self) -> None:
        """
        The config file can turn chargen on and set its endpoints and rate;
        an unknown key in its table stops start-up.
        """
        path = self.mktemp()
        with open(path, "w") as stream:
            stream.write(
                'services = ["chargen"]\n[chargen]\n'
                'endpoints = ["udp:0"]\nudp-rate = 2.5\n'
            )
        options = Options([chargen, discard])
        options.parseOptions(["--config", path])
        self.assertEqual(options["services"], [chargen])
        self.assertEqual(options["endpoints"]["chargen"], ["udp:0"])
        self.assertEqual(options["serviceOptions"]["chargen"], {"udp-rate": 2.5})
        with open(path, "a") as stream:
            stream.write("size = 3\n")
        error = self.assertRaises(
            UsageError, Options([chargen]).parseOptions, ["--config", path]
        )
        self.assertIn("chargen.'size'", str(error))
