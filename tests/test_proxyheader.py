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
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvidedBy

from netd.policy import Policy, PolicyFactory, PolicySettings, parseNetwork
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
