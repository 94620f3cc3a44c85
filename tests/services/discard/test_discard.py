"""
Tests for L{netd.services.discard}: the protocols alone and over real
sockets, and the plugin's wiring.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.connlog import ConnectionLoggingFactory
from netd.services.discard.plugin import discard
from netd.services.discard.server import (
    DEFAULT_READ_RATE,
    DiscardDatagramProtocol,
    DiscardFactory,
)
from netd.tap import Options
from tests.common import CollectUntilClosed


def connect(factory: DiscardFactory) -> tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


class DiscardProtocolTests(SynchronousTestCase):
    """
    L{DiscardProtocol} on a L{StringTransport} with a L{task.Clock}.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()

    def test_nothingSent(self) -> None:
        """
        Whatever arrives, nothing is sent and the connection stays open.
        """
        protocol, transport = connect(DiscardFactory(self.clock))
        protocol.dataReceived(b"x" * 1000)
        protocol.dataReceived(b"")
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.producerState, "producing")

    def test_readRate(self) -> None:
        """
        Past a second's worth of bytes, reading pauses until the bucket
        has refilled, then resumes; a steady sender at the rate never
        pauses.
        """
        protocol, transport = connect(DiscardFactory(self.clock, readRate=1000))
        protocol.dataReceived(b"x" * 1000)
        self.assertEqual(transport.producerState, "producing")
        with capturedLogs() as events:
            protocol.dataReceived(b"x" * 500)
        [event] = events
        self.assertEqual(event["rate"], 1000)
        self.assertIn("sends faster than 1000 bytes/s", formatEvent(event))
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(protocol.pauses, 1)
        self.clock.advance(0.49)
        self.assertEqual(transport.producerState, "paused")
        self.clock.advance(0.01)
        self.assertEqual(transport.producerState, "producing")
        for _ in range(10):
            self.clock.advance(0.1)
            protocol.dataReceived(b"x" * 90)
        self.assertEqual(protocol.pauses, 1)
        self.assertEqual(transport.producerState, "producing")

    def test_rateChangesLive(self) -> None:
        """
        The factory's rate is read at every chunk, so a reload reaches open
        connections.
        """
        factory = DiscardFactory(self.clock, readRate=1000)
        protocol, transport = connect(factory)
        factory.readRate = 100_000
        self.clock.advance(1)
        protocol.dataReceived(b"x" * 50_000)
        self.assertEqual(transport.producerState, "producing")

    def test_closeCancelsResume(self) -> None:
        """
        A connection lost while paused leaves no call pending; netd's stop
        closes it at once.
        """
        protocol, transport = connect(DiscardFactory(self.clock, readRate=10))
        protocol.dataReceived(b"x" * 100)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        protocol.stopGracefully()
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_badRate(self) -> None:
        """
        A rate that is not positive is refused.
        """
        self.assertRaises(ValueError, DiscardFactory, self.clock, 0)


class DiscardDatagramTests(SynchronousTestCase):
    """
    L{DiscardDatagramProtocol} counts and never answers.
    """

    def test_counted(self) -> None:
        """
        Datagrams and their bytes are counted; nothing is written.
        """
        protocol = DiscardDatagramProtocol()
        protocol.transport = None  # any write would fail
        for size in (0, 1, 65507):
            protocol.datagramReceived(b"x" * size, ("127.0.0.1", 7))
        self.assertEqual((protocol.datagrams, protocol.bytes), (3, 65508))


class DiscardLoopbackTests(TestCase):
    """
    discard over real sockets on 127.0.0.1.
    """

    @defer.inlineCallbacks
    def test_everyByteReadAndLogged(self) -> Any:
        """
        A client sends 3 MiB and half-closes: netd reads it all (pausing
        for the rate on the way), sends nothing, closes, and logs the bytes.
        """
        factory = ConnectionLoggingFactory(
            "discard",
            DiscardFactory(_reactor, readRate=DEFAULT_READ_RATE * 8),
            _reactor,
        )
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = CollectUntilClosed(send=b"d" * (3 << 20))
        with capturedLogs() as events:
            yield connectProtocol(
                TCP4ClientEndpoint(_reactor, "127.0.0.1", port.getHost().port), client
            )
            received = yield client.closed
            while factory.protocols:
                yield task.deferLater(_reactor, 0.001, lambda: None)
        self.assertEqual(received, b"")
        [logged] = [event for event in events if event.get("service") == "discard"]
        self.assertEqual((logged["bytesIn"], logged["bytesOut"]), (3 << 20, 0))

    @defer.inlineCallbacks
    def test_udp(self) -> Any:
        """
        Datagrams from any port, 0 to 8,192 bytes, are counted, and nothing
        comes back.
        """
        server = DiscardDatagramProtocol()
        port = _reactor.listenUDP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        answers: list[bytes] = []

        class Client(DatagramProtocol):
            def datagramReceived(self, data: bytes, address: Any) -> None:
                answers.append(data)

        client = _reactor.listenUDP(0, Client(), interface="127.0.0.1")
        self.addCleanup(client.stopListening)
        sizes = [0, 1, 512, 8192]
        for size in sizes:
            client.write(b"u" * size, ("127.0.0.1", port.getHost().port))
        while server.datagrams < len(sizes):
            yield task.deferLater(_reactor, 0.001, lambda: None)
        self.assertEqual(server.bytes, sum(sizes))
        self.assertEqual(answers, [])


class DiscardPluginTests(SynchronousTestCase):
    """
    The C{discard} plugin: off by default, TCP and UDP on 50009.
    """

    def test_options(self) -> None:
        """
        Named in C{--services}, discard serves TCP and UDP 50009 on
        127.0.0.1 at 1 MiB/s per connection by default; a rate that is not
        positive stops start-up.
        """
        options = Options([discard])
        options.parseOptions(["--services=discard"])
        self.assertEqual(
            options["endpoints"]["discard"],
            ["tcp:50009:interface=127.0.0.1", "udp:50009:interface=127.0.0.1"],
        )
        self.assertEqual(options["serviceOptions"]["discard"], {"read-rate": 1 << 20})
        for bad in ("0", "-5"):
            self.assertRaises(
                UsageError,
                Options([discard]).parseOptions,
                ["--services=discard", f"--discard-read-rate={bad}"],
            )

    def test_reconfigure(self) -> None:
        """
        The read rate applies live.
        """
        factory = DiscardFactory(task.Clock(), 10)
        applied = discard.reconfigure({"read-rate": 99}, ["read-rate"], factory, [])
        self.assertEqual((list(applied), factory.readRate), (["read-rate"], 99))
