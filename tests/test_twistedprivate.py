"""
Tests for L{netd.twistedprivate}: each private name of Twisted that netd
uses is still there on the installed Twisted, of the kind netd expects, and
behaves as netd relies on. A failure here means a Twisted release changed
it: adapt the accessor in C{netd/twistedprivate.py} (and nothing else).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import abstract, defer, protocol, tcp
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ClientEndpoint,
    connectProtocol,
    serverFromString,
)
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.internet.testing import MemoryReactor
from twisted.python.systemd import ListenFDs
from twisted.trial.unittest import SynchronousTestCase, TestCase

import twisted
from netd import twistedprivate

CHANGED = (
    "Twisted {version} changed {name}, which netd uses "
    "(netd/twistedprivate.py wraps it): {problem}"
)


def changed(name: str, problem: str) -> str:
    """
    The message of a failure: which private name, on which Twisted.
    """
    return CHANGED.format(version=twisted.__version__, name=name, problem=problem)


class HoldsQueue(protocol.Protocol):
    """
    On connection, look at the transport's write queue before and after a
    write made while the reactor cannot flush it.
    """

    def __init__(self) -> None:
        self.seen: defer.Deferred[tuple[Any, bool, bool]] = defer.Deferred()

    def connectionMade(self) -> None:
        before = twistedprivate.hasQueuedWrites(self.transport)
        self.transport.write(b"x" * 100)
        after = twistedprivate.hasQueuedWrites(self.transport)
        self.transport.loseConnection()
        self.seen.callback((self.transport, before, after))


class TransportQueueTests(TestCase):
    """
    L{twistedprivate.hasQueuedWrites} reads a TCP transport's write queue.
    """

    def test_fileDescriptorAttributes(self) -> None:
        """
        A file descriptor transport has C{_tempDataBuffer} (a list),
        C{dataBuffer} (bytes) and C{offset} (an int).
        """
        descriptor = abstract.FileDescriptor(reactor=MemoryReactor())
        for name, kind in [
            ("_tempDataBuffer", list),
            ("dataBuffer", bytes),
            ("offset", int),
        ]:
            self.assertIsInstance(
                getattr(descriptor, name, None),
                kind,
                changed(f"FileDescriptor.{name}", f"not a {kind.__name__}"),
            )
        self.assertTrue(
            issubclass(tcp.Server, abstract.FileDescriptor),
            changed("tcp.Server", "no longer a FileDescriptor"),
        )

    def test_udpConnectedAddress(self) -> None:
        """
        A UDP port has C{_connectedAddr}, L{None} until C{connect}: netd's
        datagram services (L{netd.datagram}) send replies straight to the
        socket of a port that is not connected.
        """
        from twisted.internet import udp
        from twisted.internet.protocol import DatagramProtocol

        port = udp.Port(0, DatagramProtocol(), reactor=MemoryReactor())
        self.assertIsNone(
            getattr(port, "_connectedAddr", "missing"),
            changed("udp.Port._connectedAddr", "gone or not None before connect"),
        )

    @defer.inlineCallbacks
    def test_queuedOnRealConnection(self) -> Any:
        """
        On a real TCP connection, nothing is queued at first, and a write is
        queued until the reactor writes it.
        """
        holder = HoldsQueue()
        factory = protocol.Factory.forProtocol(lambda: holder)
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = yield connectProtocol(
            TCP4ClientEndpoint(_reactor, "127.0.0.1", port.getHost().port),
            protocol.Protocol(),
        )
        self.addCleanup(client.transport.loseConnection)
        transport, before, after = yield holder.seen
        self.assertIsInstance(transport, tcp.Server)
        self.assertEqual(
            (before, after),
            (False, True),
            changed("the write queue of tcp.Server", "a write is not seen queued"),
        )


class SystemdListenFDsTests(SynchronousTestCase):
    """
    L{twistedprivate.systemdListenFDs} is the record Twisted's C{systemd:}
    endpoints read.
    """

    def test_isTwistedsRecord(self) -> None:
        """
        It is a L{ListenFDs}, and the one that C{systemd:} endpoints use: a
        record put in its place is what C{serverFromString} reads.
        """
        from twisted.internet import endpoints

        self.assertIsInstance(
            twistedprivate.systemdListenFDs(),
            ListenFDs,
            changed("_SystemdParser._sddaemon", "not a ListenFDs"),
        )
        record = ListenFDs([3, 4], ("echo", "echo-udp"))
        self.patch(endpoints._SystemdParser, "_sddaemon", record)
        self.assertIs(twistedprivate.systemdListenFDs(), record)
        endpoint = serverFromString(
            MemoryReactor(), "systemd:domain=INET:name=echo-udp"
        )
        self.assertIsInstance(endpoint, AdoptedStreamServerEndpoint)
        self.assertEqual(
            endpoint.fileno,
            4,
            changed("_SystemdParser._sddaemon", "systemd: endpoints read another"),
        )


class HAProxyParserTests(SynchronousTestCase):
    """
    The PROXY header parsers netd reuses parse headers and refuse junk as
    netd relies on.
    """

    def test_v1(self) -> None:
        """
        C{V1Parser.feed} returns the client's address and the bytes after
        the header once it is whole, and raises L{InvalidProxyHeader} on
        junk.
        """
        parser = twistedprivate.V1Parser()
        self.assertEqual(parser.feed(b"PROXY TCP4 192.0.2.7 "), (None, None))
        info, rest = parser.feed(b"127.0.0.1 40312 50007\r\nhello")
        self.assertEqual((info.source.host, info.source.port), ("192.0.2.7", 40312))
        self.assertEqual(rest, b"hello")
        self.assertRaises(
            twistedprivate.InvalidProxyHeader,
            twistedprivate.V1Parser().feed,
            b"PROXY JUNK\r\n",
        )

    def test_v2(self) -> None:
        """
        C{V2Parser} has the v2 signature as C{PREFIX} and parses a v2
        header.
        """
        import socket
        import struct

        self.assertEqual(
            twistedprivate.V2Parser.PREFIX,
            b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a",
        )
        addresses = (
            socket.inet_aton("192.0.2.7")
            + socket.inet_aton("127.0.0.1")
            + struct.pack("!HH", 40312, 50007)
        )
        header = (
            twistedprivate.V2Parser.PREFIX
            + b"\x21\x11"
            + struct.pack("!H", len(addresses))
            + addresses
        )
        info, rest = twistedprivate.V2Parser().feed(header + b"hello")
        self.assertEqual((info.source.host, info.source.port), ("192.0.2.7", 40312))
        self.assertEqual(rest, b"hello")


class TLSParserTests(SynchronousTestCase):
    """
    L{twistedprivate.twistedTLSParser} is Twisted's own C{tls:} parser.
    """

    def test_parser(self) -> None:
        """
        On the Twisted netd is tested with (24.10 and later), it is a class
        of C{tls:} endpoint parsers.
        """
        parser = twistedprivate.twistedTLSParser()
        self.assertIsNotNone(
            parser, changed("endpoints._TLSServerEndpointParser", "it is gone")
        )
        self.assertTrue(IStreamServerEndpointStringParser.providedBy(parser()))
        self.assertEqual(parser().prefix, "tls")
