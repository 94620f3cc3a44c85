"""
Tests for L{netd.connlog}: one log event per connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from netd.connlog import CONNECTION_FORMAT, ConnectionLoggingFactory
from netd.services.echo.server import EchoFactory
from tests.common import CollectUntilClosed


class ConnectionLogTests(SynchronousTestCase):
    """
    L{ConnectionLoggingFactory} around a service's factory.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.factory = ConnectionLoggingFactory(
            "echo", EchoFactory(self.clock), self.clock
        )
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "192.0.2.7", 40001)
        )
        self.protocol = self.factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def test_oneEventPerConnection(self) -> None:
        """
        When the connection ends, one event gives service, peer, outcome,
        bytes both ways and duration.
        """
        self.protocol.dataReceived(b"abc")
        self.protocol.dataReceived(b"de")
        self.clock.advance(1.5)
        with capturedLogs() as events:
            self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["echo TCP 192.0.2.7:40001 closed: 5 bytes in, 17 bytes out, 1.500s"],
        )
        self.assertEqual(events[0]["bytesOut"], len(self.transport.value()))

    def test_fieldsAndTextAgree(self) -> None:
        """
        The event's text, built once, is what its named fields give in the
        documented format, with and without a certificate subject.
        """
        for subject in (None, "CN=client"):
            protocol = self.factory.buildProtocol(self.transport.getPeer())
            protocol.makeConnection(StringTransport())
            protocol.subject = subject
            protocol.dataReceived(b"abc")
            with capturedLogs() as events:
                protocol.connectionLost(Failure(ConnectionLost("reset")))
            (event,) = events
            self.assertEqual(event["subject"], subject)
            self.assertEqual(event["log_namespace"], "netd.connlog.LoggedConnection")
            self.assertEqual(
                formatEvent(event),
                formatEvent(dict(event, log_format=CONNECTION_FORMAT)),
            )

    def test_lostConnection(self) -> None:
        """
        A connection that was lost says why.
        """
        with capturedLogs() as events:
            self.protocol.connectionLost(Failure(ConnectionLost("reset by peer")))
        self.assertIn("reset by peer", formatEvent(events[0]))

    def test_liveConnections(self) -> None:
        """
        The factory knows its live connections until they end.
        """
        self.assertEqual(list(self.factory.protocols), [self.protocol])
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(list(self.factory.protocols), [])

    def test_halfClosePassesThrough(self) -> None:
        """
        A wrapped protocol that accepts half-closes gets them; one that does
        not, the wrapper does not claim to accept them.
        """
        self.assertTrue(IHalfCloseableProtocol.providedBy(self.protocol))
        self.protocol.dataReceived(b"x")
        self.protocol.readConnectionLost()
        self.assertTrue(self.transport.disconnecting)

        plain = ConnectionLoggingFactory(
            "plain", Factory.forProtocol(Protocol), self.clock
        ).buildProtocol(None)
        plain.makeConnection(StringTransport())
        self.assertFalse(IHalfCloseableProtocol.providedBy(plain))

    def test_writeSequenceCounted(self) -> None:
        """
        Bytes written with C{writeSequence} are counted too.
        """

        @implementer(IHalfCloseableProtocol)
        class Sequence(Protocol):
            def connectionMade(self) -> None:
                self.transport.writeSequence([b"ab", b"cde"])

        factory = ConnectionLoggingFactory(
            "seq", Factory.forProtocol(Sequence), self.clock
        )
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertEqual(protocol.bytesOut, 5)


class EagerWriteTests(TestCase):
    """
    On a plain TCP transport, the wrapper writes replies to the socket at
    once when nothing is queued before them.
    """

    @defer.inlineCallbacks
    def connected(self, policed: bool = False) -> Any:
        factory: Any = ConnectionLoggingFactory(
            "plain", Factory.forProtocol(Protocol), _reactor
        )
        if policed:
            from netd.policy import Policy, PolicyFactory

            factory = PolicyFactory(
                "plain", Factory.forProtocol(Protocol), Policy(), _reactor
            )
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = CollectUntilClosed(halfClose=False)
        yield connectProtocol(
            TCP4ClientEndpoint(_reactor, "127.0.0.1", port.getHost().port), client
        )
        while not factory.protocols:
            yield task.deferLater(_reactor, 0.001, lambda: None)
        (wrapper,) = factory.protocols
        return client, wrapper

    @defer.inlineCallbacks
    def test_policedStack(self) -> Any:
        """
        In netd's own stack (policy and log in one wrapper), the wrapper on
        the transport writes eagerly, and counts the bytes.
        """
        client, policed = yield self.connected(policed=True)
        policed.wrappedProtocol.transport.write(b"through both")
        self.assertNotIn(policed.transport, _reactor.getWriters())
        self.assertEqual(policed.bytesOut, 12)
        policed.loseConnection()
        self.assertEqual((yield client.closed), b"through both")

    @defer.inlineCallbacks
    def test_smallWriteSentAtOnce(self) -> Any:
        """
        A small write leaves nothing queued and does not register the
        transport with the reactor for writing.
        """
        client, wrapper = yield self.connected()
        wrapper.write(b"at once")
        self.assertNotIn(wrapper.transport, _reactor.getWriters())
        self.assertEqual(wrapper.transport._tempDataBuffer, [])
        self.assertEqual(wrapper.bytesOut, 7)
        wrapper.loseConnection()
        self.assertEqual((yield client.closed), b"at once")

    @defer.inlineCallbacks
    def test_orderKeptPastPartialWrite(self) -> Any:
        """
        A write larger than the kernel takes is queued in part; writes after
        it queue behind it, so every byte arrives in order.
        """
        client, wrapper = yield self.connected()
        big = bytes(range(256)) * (32 * 1024)  # 8 MiB
        wrapper.write(big)
        self.assertIn(wrapper.transport, _reactor.getWriters())
        wrapper.writeSequence([b"E", b"ND"])
        wrapper.loseConnection()
        received = yield client.closed
        self.assertEqual(len(received), len(big) + 3)
        self.assertTrue(received == big + b"END")
        self.assertEqual(wrapper.bytesOut, len(big) + 3)
