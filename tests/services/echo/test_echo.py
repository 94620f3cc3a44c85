"""
Tests for L{netd.services.echo.server}: the echo protocol alone, and over real sockets.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.internet.testing import StringTransport
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.datagram import PerSourceRateLimiter
from netd.services.echo.client import LockStepEchoClient
from netd.services.echo.server import EchoDatagramProtocol, EchoFactory, EchoReplies
from tests.common import CollectUntilClosed


def connect(factory: EchoFactory) -> tuple[Any, StringTransport]:
    """
    Connect a protocol of C{factory} to a L{StringTransport}.
    """
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


class EchoProtocolTests(SynchronousTestCase):
    """
    L{netd.services.echo.server.EchoProtocol} on a L{StringTransport}.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()

    def test_prefix(self) -> None:
        """
        Every chunk comes back behind C{Echo=>} by default.
        """
        protocol, transport = connect(EchoFactory(self.clock))
        protocol.dataReceived(b"Hello network world")
        self.assertEqual(transport.value(), b"Echo=>Hello network world")

    def test_eachChunk(self) -> None:
        """
        Each chunk gets its own prefix, in order.
        """
        protocol, transport = connect(EchoFactory(self.clock))
        for word in (b"spam", b"Spam", b"SPAM"):
            protocol.dataReceived(word)
        self.assertEqual(transport.value(), b"Echo=>spamEcho=>SpamEcho=>SPAM")

    def test_plainEcho(self) -> None:
        """
        An empty prefix gives RFC 862's plain echo, binary bytes included.
        """
        protocol, transport = connect(EchoFactory(self.clock, prefix=b""))
        data = bytes(range(256))
        protocol.dataReceived(data)
        self.assertEqual(transport.value(), data)

    def test_stamp(self) -> None:
        """
        With C{stamp}, each reply ends with C{" at "} and the server's ctime
        from the factory's clock.
        """
        self.clock.advance(1_276_337_243)
        protocol, transport = connect(EchoFactory(self.clock, stamp=True))
        protocol.dataReceived(b"x")
        expected = b"Echo=>x at " + time.ctime(1_276_337_243).encode()
        self.assertEqual(transport.value(), expected)

    def test_delayFirstReply(self) -> None:
        """
        With a delay, nothing is sent until it passes, and then every reply
        received meanwhile is sent; later replies are not delayed.
        """
        protocol, transport = connect(EchoFactory(self.clock, delay=5))
        protocol.dataReceived(b"one")
        protocol.dataReceived(b"two")
        self.clock.advance(4.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(transport.value(), b"Echo=>oneEcho=>two")
        protocol.dataReceived(b"three")
        self.assertEqual(transport.value(), b"Echo=>oneEcho=>twoEcho=>three")

    def test_delayPausesReading(self) -> None:
        """
        While the first reply waits, the server stops reading from the client,
        so a client cannot pile up data meanwhile; it reads again afterwards.
        """
        protocol, transport = connect(EchoFactory(self.clock, delay=1))
        protocol.dataReceived(b"x")
        self.assertEqual(transport.producerState, "paused")
        self.clock.advance(1)
        self.assertEqual(transport.producerState, "producing")

    def test_halfClose(self) -> None:
        """
        A client that half-closes gets every reply, then the server closes.
        """
        protocol, transport = connect(EchoFactory(self.clock))
        protocol.dataReceived(b"last words")
        protocol.readConnectionLost()
        self.assertEqual(transport.value(), b"Echo=>last words")
        self.assertTrue(transport.disconnecting)

    def test_halfCloseDuringDelay(self) -> None:
        """
        A client that half-closes while its first reply is delayed still gets
        it; the server closes only after sending it.
        """
        protocol, transport = connect(EchoFactory(self.clock, delay=2))
        protocol.dataReceived(b"early")
        protocol.readConnectionLost()
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertEqual(transport.value(), b"Echo=>early")
        self.assertTrue(transport.disconnecting)

    def test_lostDuringDelay(self) -> None:
        """
        A connection lost while its reply is delayed leaves no timer behind.
        """
        protocol, transport = connect(EchoFactory(self.clock, delay=2))
        protocol.dataReceived(b"gone")
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_backpressure(self) -> None:
        """
        When the transport pauses the protocol (replies piling up), the
        server stops reading; when it resumes, reading resumes.
        """
        protocol, transport = connect(EchoFactory(self.clock))
        self.assertIs(transport.producer, protocol)
        self.assertTrue(transport.streaming)
        protocol.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        protocol.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_backpressureDuringDelay(self) -> None:
        """
        A resume from the transport does not restart reading while the first
        reply is still delayed.
        """
        protocol, transport = connect(EchoFactory(self.clock, delay=1))
        protocol.dataReceived(b"x")
        protocol.pauseProducing()
        protocol.resumeProducing()
        self.assertEqual(transport.producerState, "paused")

    def test_clientAndServer(self) -> None:
        """
        The lock-step client gets one whole reply per message from the server.
        """
        replies: list[bytes] = []
        client, server, pump = connectedServerAndClient(
            lambda: EchoFactory(self.clock).buildProtocol(None),
            lambda: LockStepEchoClient(len(b"Echo=>")),
        )
        for word in (b"Hello", b"network", b"world"):
            client.exchange(word).addCallback(replies.append)
            pump.flush()
        self.assertEqual(replies, [b"Echo=>Hello", b"Echo=>network", b"Echo=>world"])

    def test_delayConcurrentClients(self) -> None:
        """
        The book's slow server, done without blocking: three clients that
        connect at once are all answered after one delay, not three.
        """
        factory = EchoFactory(self.clock, delay=5)
        replies: list[bytes] = []
        pumps = []
        for n in range(3):
            client, server, pump = connectedServerAndClient(
                lambda: factory.buildProtocol(None),
                lambda: LockStepEchoClient(len(b"Echo=>")),
            )
            client.exchange(b"client %d" % (n,)).addCallback(replies.append)
            pump.flush()
            pumps.append(pump)
        self.assertEqual(replies, [])
        self.clock.advance(5)
        for pump in pumps:
            pump.flush()
        self.assertEqual(
            replies, [b"Echo=>client 0", b"Echo=>client 1", b"Echo=>client 2"]
        )


class EchoDatagramTests(SynchronousTestCase):
    """
    L{netd.services.echo.server.EchoDatagramProtocol} with a fake transport.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.sent: list[tuple[bytes, Any]] = []
        self.protocol = EchoDatagramProtocol(
            EchoReplies(self.clock),
            PerSourceRateLimiter(self.clock, rate=1, burst=2),
        )
        self.protocol.transport = self  # type: ignore[assignment]

    def write(self, data: bytes, address: Any) -> None:
        self.sent.append((data, address))

    def test_reply(self) -> None:
        """
        A datagram comes back to its sender behind the prefix.
        """
        self.protocol.datagramReceived(b"ping", ("127.0.0.1", 40000))
        self.assertEqual(self.sent, [(b"Echo=>ping", ("127.0.0.1", 40000))])

    def test_emptyDatagram(self) -> None:
        """
        An empty datagram gets the prefix alone.
        """
        self.protocol.datagramReceived(b"", ("127.0.0.1", 40000))
        self.assertEqual(self.sent, [(b"Echo=>", ("127.0.0.1", 40000))])

    def test_reflectionPorts(self) -> None:
        """
        Datagrams from the ports of echo, daytime, chargen, time and NTP (and
        port 0) are dropped, so two servers cannot loop.
        """
        for port in (0, 7, 13, 19, 37, 123):
            self.protocol.datagramReceived(b"loop", ("127.0.0.1", port))
        self.assertEqual(self.sent, [])
        self.assertEqual(self.protocol.dropped, 6)

    def test_rateLimited(self) -> None:
        """
        Past its burst, a source gets replies only at the configured rate;
        other sources are not affected.
        """
        for _ in range(5):
            self.protocol.datagramReceived(b"x", ("10.0.0.1", 40000))
        self.assertEqual(len(self.sent), 2)
        self.protocol.datagramReceived(b"y", ("10.0.0.2", 40000))
        self.assertEqual(len(self.sent), 3)
        self.clock.advance(1)
        self.protocol.datagramReceived(b"x", ("10.0.0.1", 40000))
        self.assertEqual(len(self.sent), 4)


class EchoLoopbackTests(TestCase):
    """
    The echo service over real sockets on 127.0.0.1.
    """

    def listen(self, **kwargs: Any) -> int:
        from netd.connlog import ConnectionLoggingFactory

        factory = ConnectionLoggingFactory(
            "echo", EchoFactory(_reactor, **kwargs), _reactor
        )
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def connect(self, port: int, protocol: Protocol) -> defer.Deferred[Any]:
        return connectProtocol(
            TCP4ClientEndpoint(_reactor, "127.0.0.1", port), protocol
        )

    @defer.inlineCallbacks
    def test_threeWordsThreeReplies(self) -> Any:
        """
        The book's echo-client: three words on one connection, each sent
        after the previous reply, give three replies.
        """
        port = self.listen()
        client = LockStepEchoClient(len(b"Echo=>"))
        yield self.connect(port, client)
        replies = []
        for word in (b"Hello", b"network", b"world"):
            replies.append((yield client.exchange(word)))
        client.transport.loseConnection()
        yield client.closed
        self.assertEqual(replies, [b"Echo=>Hello", b"Echo=>network", b"Echo=>world"])

    @defer.inlineCallbacks
    def test_eightParallelClients(self) -> Any:
        """
        The book's testecho: eight clients at once are all served, each
        getting only its own replies.
        """
        port = self.listen()

        @defer.inlineCallbacks
        def one(n: int) -> Any:
            client = LockStepEchoClient(len(b"Echo=>"))
            yield self.connect(port, client)
            replies = []
            for i in range(5):
                replies.append(
                    (yield client.exchange(b"client %d message %d" % (n, i)))
                )
            client.transport.loseConnection()
            yield client.closed
            return replies

        results = yield defer.gatherResults([one(n) for n in range(8)])
        for n, replies in enumerate(results):
            self.assertEqual(
                replies, [b"Echo=>client %d message %d" % (n, i) for i in range(5)]
            )

    @defer.inlineCallbacks
    def test_halfCloseGetsEverything(self) -> Any:
        """
        A client that sends 1 MiB and half-closes at once (C{nc -N} style)
        gets every byte back before the server closes.
        """
        port = self.listen(prefix=b"")
        client = CollectUntilClosed(halfClose=False)
        yield self.connect(port, client)
        data = bytes(range(256)) * 4096
        client.transport.write(data)
        client.transport.loseWriteConnection()
        received = yield client.closed
        self.assertEqual(received, data)

    @defer.inlineCallbacks
    def test_clientThatNeverReads(self) -> Any:
        """
        A client that sends without reading is not read from once the
        server's unsent replies fill its buffer: the server's memory for it
        stays bounded. When the client reads, everything comes back.
        """
        from netd.connlog import ConnectionLoggingFactory

        factory = ConnectionLoggingFactory(
            "echo", EchoFactory(_reactor, prefix=b""), _reactor
        )
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        client = CollectUntilClosed(halfClose=False)
        yield self.connect(port.getHost().port, client)
        client.transport.pauseProducing()  # the client stops reading
        while not factory.protocols:
            yield task.deferLater(_reactor, 0.001, lambda: None)
        (wrapper,) = factory.protocols
        server = wrapper.transport

        def clientBuffered() -> int:
            transport = client.transport
            return len(transport.dataBuffer) + sum(map(len, transport._tempDataBuffer))

        chunk = b"z" * 65536
        sent = 0
        # Write only as fast as the client's own buffer drains into the
        # kernel, so that what piles up is the server's problem, until the
        # server stops reading (or 64 MiB, which would be a failure).
        while server in _reactor.getReaders() and sent < 64 * 1024 * 1024:
            client.transport.write(chunk)
            sent += len(chunk)
            while clientBuffered() and server in _reactor.getReaders():
                yield task.deferLater(_reactor, 0.001, lambda: None)
        self.assertNotIn(server, _reactor.getReaders())
        self.assertLess(sent, 64 * 1024 * 1024)
        buffered = len(server.dataBuffer) + sum(map(len, server._tempDataBuffer))
        self.assertLessEqual(buffered, server.bufferSize + len(chunk))

        # Now read: everything sent comes back.
        client.transport.resumeProducing()
        client.transport.loseWriteConnection()
        received = yield client.closed
        self.assertEqual(len(received), sent)

    @defer.inlineCallbacks
    def test_delayedClientsOverSockets(self) -> Any:
        """
        Over real sockets, with the delay driven by a fake clock: three
        clients whose requests all reached the server get their replies
        after a single advance of the delay.
        """
        from netd.connlog import ConnectionLoggingFactory

        clock = task.Clock()
        echo = EchoFactory(clock, delay=30)
        factory = ConnectionLoggingFactory("echo", echo, _reactor)
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        clients = [LockStepEchoClient(len(b"Echo=>")) for _ in range(3)]
        for client in clients:
            yield self.connect(port.getHost().port, client)
        replies = [c.exchange(b"slow %d" % (n,)) for n, c in enumerate(clients)]
        # Wait for the three requests to reach the server (real events).
        while sum(len(p.wrappedProtocol._pending) for p in factory.protocols) < 3:
            yield task.deferLater(_reactor, 0.001, lambda: None)
        self.assertEqual([r.called for r in replies], [False, False, False])
        clock.advance(30)
        received = yield defer.gatherResults(replies)
        self.assertEqual(received, [b"Echo=>slow 0", b"Echo=>slow 1", b"Echo=>slow 2"])
        for client in clients:
            client.transport.loseConnection()
        yield defer.gatherResults([client.closed for client in clients])

    @defer.inlineCallbacks
    def test_udpEcho(self) -> Any:
        """
        A UDP datagram comes back to its sender behind the prefix.
        """
        server = EchoDatagramProtocol(
            EchoReplies(_reactor), PerSourceRateLimiter(_reactor, rate=100, burst=100)
        )
        serverPort = _reactor.listenUDP(0, server, interface="127.0.0.1")
        self.addCleanup(serverPort.stopListening)

        class Client(DatagramProtocol):
            def __init__(self) -> None:
                self.received: defer.Deferred[tuple[bytes, Any]] = defer.Deferred()

            def datagramReceived(self, data: bytes, address: Any) -> None:
                self.received.callback((data, address))

        client = Client()
        clientPort = _reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(clientPort.stopListening)
        address = ("127.0.0.1", serverPort.getHost().port)
        clientPort.write(b"ping", address)
        data, source = yield client.received.addTimeout(10, _reactor)
        self.assertEqual((data, source), (b"Echo=>ping", address))
