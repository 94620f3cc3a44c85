"""
Tests for L{netd.proxyheader}: the service's protocol is built only once
the PROXY header said who the client is.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

from twisted.internet import task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvidedBy

from netd.metrics import StreamListenerMetrics, refusalReason
from netd.policy import (
    Policy,
    PolicyFactory,
    PolicySettings,
    parseNetwork,
)
from netd.prometheus import ListenerFactory
from netd.proxyheader import ProxiedConnection, ProxyHeaderFactory
from tests.test_policy import RecorderFactory

V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 7\r\n"


def v2Header(source: str, port: int) -> bytes:
    """
    A PROXY v2 header for a TCP over IPv6 connection from C{source}.
    """
    addresses = socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(
        socket.AF_INET6, "2001:db8::1"
    )
    body = addresses + struct.pack("!HH", port, 7)
    return b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x21" + struct.pack("!H", len(body)) + body


class ProxyHeaderTests(SynchronousTestCase):
    """
    L{ProxyHeaderFactory} in front of the policy and a service.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.service = RecorderFactory()
        self.policy = Policy()
        self.factory = ProxyHeaderFactory(
            PolicyFactory("test", self.service, self.policy, self.clock), self.clock
        )
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 5555)
        )
        self.protocol: Any = self.factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def test_nothingBeforeHeader(self) -> None:
        """
        Until the header arrived, the service has built no protocol.
        """
        self.protocol.dataReceived(V1[:10])
        self.assertEqual(self.service.built, [])

    def test_v1(self) -> None:
        """
        After a v1 header, the service's protocol is connected with the
        client's address, and gets the bytes after the header.
        """
        self.protocol.dataReceived(V1 + b"hello")
        [built] = self.service.built
        self.assertEqual(built.events, ["made", b"hello"])
        self.assertEqual(
            built.transport.getPeer(), IPv4Address("TCP", "192.0.2.7", 40000)
        )

    def test_halfCloseDeclaredOnClass(self) -> None:
        """
        Once the header arrived, the wrapper accepts half-closes if the
        service does, by its class: no interface is declared on the
        instance; a service that does not accept them is not offered them.
        """
        self.protocol.dataReceived(V1)
        self.assertIsInstance(self.protocol, ProxiedConnection)
        self.assertTrue(IHalfCloseableProtocol.providedBy(self.protocol))
        self.assertEqual(list(directlyProvidedBy(self.protocol)), [])
        self.protocol.readConnectionLost()
        self.assertEqual(self.service.built[0].events, ["made", "half-closed"])

        plain = ProxyHeaderFactory(
            PolicyFactory(
                "plain", Factory.forProtocol(Protocol), self.policy, self.clock
            ),
            self.clock,
        ).buildProtocol(self.transport.getPeer())
        plain.makeConnection(StringTransport())
        plain.dataReceived(V1)
        self.assertFalse(IHalfCloseableProtocol.providedBy(plain))
        self.assertEqual(list(directlyProvidedBy(plain)), [])

    def test_v1Fragmented(self) -> None:
        """
        A header arriving a byte at a time is read all the same.
        """
        for index in range(len(V1)):
            self.protocol.dataReceived(V1[index : index + 1])
        self.assertEqual(len(self.service.built), 1)
        self.assertFalse(self.transport.disconnecting)

    def test_v2(self) -> None:
        """
        A v2 header with an IPv6 source gives that address.
        """
        self.protocol.dataReceived(v2Header("2001:db8::7", 4242))
        [built] = self.service.built
        address = built.transport.getPeer()
        self.assertIsInstance(address, IPv6Address)
        self.assertEqual(
            (ipaddress.ip_address(address.host), address.port),
            (ipaddress.ip_address("2001:db8::7"), 4242),
        )

    def test_policySeesClient(self) -> None:
        """
        The policy judges the client's address from the header, not the
        proxy's: a denied client never reaches the service.
        """
        self.policy.update(PolicySettings(deny=(parseNetwork("192.0.2.7"),)))
        self.protocol.dataReceived(V1)
        self.assertEqual(self.service.built, [])
        self.assertTrue(self.transport.disconnected)

    def test_malformed(self) -> None:
        """
        A connection that does not start with a header is aborted.
        """
        self.protocol.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.service.built, [])

    def test_oversizedV1(self) -> None:
        """
        A v1 header line longer than the protocol allows is aborted.
        """
        self.protocol.dataReceived(b"PROXY " + b"x" * 200)
        self.assertTrue(self.transport.disconnected)

    def test_badV2Version(self) -> None:
        """
        A v2 signature with an unknown version is aborted.
        """
        self.protocol.dataReceived(b"\r\n\r\n\x00\r\nQUIT\n\x31\x21\x00\x00")
        self.assertTrue(self.transport.disconnected)

    def test_slowHeader(self) -> None:
        """
        A header that does not arrive in time is given up on.
        """
        self.protocol.dataReceived(b"PROX")
        self.clock.advance(self.factory.headerTimeout)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.service.built, [])

    def test_lostBeforeHeader(self) -> None:
        """
        A connection lost before its header leaves no timer and reaches
        no service.
        """
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.service.built, [])


class TrustTests(SynchronousTestCase):
    """
    A PROXY header is believed only from a trusted proxy, and the policy
    judges and counts the proxy's connection while its header is awaited.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.service = RecorderFactory()
        self.policy = Policy()
        self.policed = PolicyFactory("test", self.service, self.policy, self.clock)
        self.factory = ProxyHeaderFactory(self.policed, self.clock)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def connect(self, host: str = "127.0.0.1", port: int = 5555) -> StringTransport:
        address: Any = (
            IPv6Address("TCP", host, port)
            if ":" in host
            else IPv4Address("TCP", host, port)
        )
        transport = StringTransport(peerAddress=address)
        protocol = self.factory.buildProtocol(address)
        protocol.makeConnection(transport)
        transport.protocol = protocol
        return transport

    def logged(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def test_loopbackTrustedByDefault(self) -> None:
        """
        By default, headers from 127.0.0.0/8 and ::1 (and IPv4-mapped
        loopback) are believed.
        """
        for host in ("127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"):
            transport = self.connect(host)
            transport.protocol.dataReceived(V1)
            self.assertFalse(transport.disconnecting, host)
        self.assertEqual(len(self.service.built), 4)

    def test_untrustedRefused(self) -> None:
        """
        A connection from outside the trusted ranges is aborted before its
        header is read, whatever it forges (v1 or v2), and logged.
        """
        self.policy.update(
            PolicySettings(trustedProxies=(parseNetwork("192.0.2.0/24"),))
        )
        for header in (V1, v2Header("2001:db8::7", 4242)):
            transport = self.connect("127.0.0.1")
            self.assertTrue(transport.disconnected)
            transport.protocol.dataReceived(header)
        self.assertEqual(self.service.built, [])
        self.assertEqual(self.policed.active, 0)
        refusals = [line for line in self.logged() if "not a trusted proxy" in line]
        self.assertEqual(len(refusals), 2, self.logged())
        self.assertIn("test refused TCP 127.0.0.1:5555", refusals[0])
        transport = self.connect("192.0.2.9")
        transport.protocol.dataReceived(V1)
        self.assertEqual(len(self.service.built), 1)

    def test_policyJudgesTheProxy(self) -> None:
        """
        The allow and deny ranges apply to the proxy's address before the
        header: a denied proxy is refused, whoever it says the client is.
        """
        self.policy.update(PolicySettings(deny=(parseNetwork("127.0.0.1"),)))
        transport = self.connect("127.0.0.1")
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.service.built, [])
        self.assertTrue(
            any("denied by 127.0.0.1/32" in line for line in self.logged()),
            self.logged(),
        )

    def test_waitingConnectionsCount(self) -> None:
        """
        Connections waiting for their header count toward the service's
        limits, as the proxy's: beyond them, more are refused; once its
        header came, a connection counts as its client's.
        """
        self.policy.update(PolicySettings(maxConnections=3, maxPerSource=2))
        first = self.connect("127.0.0.1")
        second = self.connect("127.0.0.1")
        self.assertEqual(self.policed.active, 2)
        self.assertEqual(self.policed.perSource, {"127.0.0.1": 2})
        third = self.connect("127.0.0.1")
        self.assertTrue(third.disconnected)
        fourth = self.connect("127.0.0.2")
        self.assertFalse(fourth.disconnected)
        self.assertTrue(self.connect("127.0.0.3").disconnected)
        first.protocol.dataReceived(V1)
        self.assertEqual(len(self.service.built), 1)
        self.assertEqual(self.policed.active, 3)
        self.assertEqual(
            self.policed.perSource,
            {"127.0.0.1": 1, "127.0.0.2": 1, "192.0.2.7": 1},
        )
        second.protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.policed.active, 2)

    def test_headerTimeout(self) -> None:
        """
        A connection that sends no header is closed after the header
        timeout (5 seconds), logged, and no longer counted.
        """
        self.assertEqual(self.factory.headerTimeout, 5.0)
        self.policy.update(PolicySettings(maxConnections=1))
        transport = self.connect()
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnected)
        self.assertTrue(self.connect("127.0.0.2").disconnected)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        transport.protocol.connectionLost(Failure(ConnectionError("aborted")))
        self.assertEqual(self.policed.active, 0)
        self.assertTrue(
            any("no PROXY header within 5s" in line for line in self.logged()),
            self.logged(),
        )
        self.assertFalse(self.connect("127.0.0.2").disconnected)

    def test_malformedLogged(self) -> None:
        """
        A malformed header is logged, and the connection no longer counted
        once it is gone.
        """
        transport = self.connect()
        transport.protocol.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertTrue(transport.disconnected)
        transport.protocol.connectionLost(Failure(ConnectionError("aborted")))
        self.assertEqual(self.policed.active, 0)
        self.assertTrue(
            any("malformed PROXY header" in line for line in self.logged()),
            self.logged(),
        )


class ListenerMetricsTrustTests(TrustTests):
    """
    The same with metrics on: the policy reached through the listener's
    L{ListenerFactory}, and refusals reported to the listener's metrics.
    """

    def setUp(self) -> None:
        super().setUp()
        self.refusals: list[str] = []
        refusals = self.refusals

        class Recording(StreamListenerMetrics):
            def refused(self, reason: str) -> None:
                refusals.append(reason)

        self.factory = ProxyHeaderFactory(
            ListenerFactory(self.policed, Recording()), self.clock
        )

    def test_refusalReported(self) -> None:
        """
        A refusal before the header is reported to the listener's metrics.
        """
        self.policy.update(
            PolicySettings(trustedProxies=(parseNetwork("192.0.2.0/24"),))
        )
        self.connect("127.0.0.1")
        self.assertEqual(len(self.refusals), 1)
        self.assertEqual(refusalReason(self.refusals[0]), "untrusted-proxy")
