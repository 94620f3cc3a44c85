"""
Tests for L{netd.policy}: allow/deny ranges, connection limits and idle
timeouts around any service's factory, and allow/deny for UDP.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import directlyProvidedBy, implementer

from netd.policy import (
    AddressRules,
    PolicedDatagramProtocol,
    Policy,
    PolicyFactory,
    PolicySettings,
    RefusedConnection,
    clientAddress,
    parseNetwork,
)
from netd.services.echo.server import EchoFactory
from tests.common import CollectUntilClosed, exchange, refusedExchange


def settings(**values: Any) -> PolicySettings:
    """
    L{PolicySettings} with C{allow}/C{deny} given as strings.
    """
    for key in ("allow", "deny"):
        if key in values:
            values[key] = tuple(parseNetwork(text) for text in values[key])
    return PolicySettings(**values)


def peer(host: str, port: int = 40000) -> Any:
    return (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    """
    A service protocol that records what reaches it.
    """

    def __init__(self) -> None:
        self.events: list[Any] = []

    def connectionMade(self) -> None:
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:
        self.events.append(data)

    def readConnectionLost(self) -> None:
        self.events.append("half-closed")

    def writeConnectionLost(self) -> None:
        self.events.append("write-closed")

    def connectionLost(self, reason: Failure) -> None:
        self.events.append("lost")


class RecorderFactory(Factory):
    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        protocol = Recorder()
        self.built.append(protocol)
        return protocol


class RangeTests(SynchronousTestCase):
    """
    Allow and deny ranges.
    """

    def test_noRanges(self) -> None:
        """
        Without ranges, every address may connect.
        """
        self.assertIsNone(settings().refusal(clientAddress("192.0.2.1")))
        self.assertIsNone(settings().refusal(clientAddress("2001:db8::1")))

    def test_allowOnly(self) -> None:
        """
        With an allow range, only addresses in it pass, IPv4 and IPv6 alike.
        """
        policy = settings(allow=["10.0.0.0/8", "::1"])
        self.assertIsNone(policy.refusal(clientAddress("10.1.2.3")))
        self.assertIsNone(policy.refusal(clientAddress("::1")))
        self.assertEqual(
            policy.refusal(clientAddress("192.0.2.1")), "not in any allowed range"
        )
        self.assertEqual(
            policy.refusal(clientAddress("2001:db8::1")), "not in any allowed range"
        )

    def test_denyWins(self) -> None:
        """
        An address both allowed and denied is refused, naming the range.
        """
        policy = settings(allow=["10.0.0.0/8"], deny=["10.9.0.0/16"])
        self.assertEqual(
            policy.refusal(clientAddress("10.9.1.1")), "denied by 10.9.0.0/16"
        )
        self.assertIsNone(policy.refusal(clientAddress("10.8.1.1")))

    def test_mappedIPv4(self) -> None:
        """
        An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4
        client) is judged as the IPv4 address.
        """
        policy = settings(deny=["127.0.0.0/8"])
        self.assertEqual(
            policy.refusal(clientAddress("::ffff:127.0.0.1")), "denied by 127.0.0.0/8"
        )

    def test_notIP(self) -> None:
        """
        A peer without an IP address (a UNIX socket) is not judged by ranges.
        """
        self.assertIsNone(clientAddress("/run/netd.sock"))
        self.assertIsNone(settings(allow=["10.0.0.0/8"]).refusal(None))

    def test_badRange(self) -> None:
        """
        A malformed range is a L{ValueError} quoting it; host bits are fine.
        """
        error = self.assertRaises(ValueError, parseNetwork, "10.0.0.0/33")
        self.assertIn("'10.0.0.0/33'", str(error))
        self.assertRaises(ValueError, parseNetwork, "example.com")
        self.assertEqual(str(parseNetwork("10.1.2.3/8")), "10.0.0.0/8")


class PolicyFactoryTests(SynchronousTestCase):
    """
    L{PolicyFactory} around a service's factory.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.service = RecorderFactory()
        self.policy = Policy()
        self.factory = PolicyFactory("test", self.service, self.policy, self.clock)

    def connect(self, host: str = "192.0.2.1") -> tuple[Any, StringTransport]:
        address = peer(host)
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_refusedBuildsNothing(self) -> None:
        """
        A denied client is aborted at once and logged with the reason; the
        service builds no protocol for it.
        """
        self.policy.update(settings(deny=["192.0.2.0/24"]))
        with capturedLogs() as events:
            protocol, transport = self.connect()
        self.assertIsInstance(protocol, RefusedConnection)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.service.built, [])
        self.assertEqual(
            [e["reason"] for e in events if "reason" in e], ["denied by 192.0.2.0/24"]
        )

    def test_maxConnections(self) -> None:
        """
        Beyond C{maxConnections} open connections, new ones are refused;
        once one closes, a new one is accepted again.
        """
        self.policy.update(settings(maxConnections=2))
        first, _ = self.connect("192.0.2.1")
        self.connect("192.0.2.2")
        third, transport = self.connect("192.0.2.3")
        self.assertIsInstance(third, RefusedConnection)
        self.assertTrue(transport.disconnecting)
        first.connectionLost(Failure(Exception("gone")))
        fourth, transport = self.connect("192.0.2.4")
        self.assertNotIsInstance(fourth, RefusedConnection)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(self.service.built), 3)

    def test_maxPerSource(self) -> None:
        """
        One address may hold at most C{maxPerSource} connections; other
        addresses are not affected; IPv4-mapped addresses count as IPv4.
        """
        self.policy.update(settings(maxPerSource=1))
        first, _ = self.connect("192.0.2.1")
        again, _ = self.connect("::ffff:192.0.2.1")
        other, _ = self.connect("192.0.2.2")
        self.assertIsInstance(again, RefusedConnection)
        self.assertNotIsInstance(other, RefusedConnection)
        first.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.factory.perSource, {"192.0.2.2": 1})
        back, _ = self.connect("192.0.2.1")
        self.assertNotIsInstance(back, RefusedConnection)

    def test_updateAppliesToNewConnections(self) -> None:
        """
        L{Policy.update} judges the next client by the new settings.
        """
        protocol, _ = self.connect()
        self.policy.update(settings(deny=["192.0.2.1"]))
        refused, _ = self.connect()
        self.assertIsInstance(refused, RefusedConnection)
        self.assertEqual(protocol.wrappedProtocol.events, ["made"])

    def test_idleTimeout(self) -> None:
        """
        A connection with no byte either way for C{idleTimeout} seconds is
        closed, and aborted if still open as long again; each byte received
        or written restarts the wait.
        """
        self.policy.update(settings(idleTimeout=10))
        protocol, transport = self.connect()
        self.clock.advance(9)
        protocol.dataReceived(b"x")
        self.clock.advance(9)
        protocol.wrappedProtocol.transport.write(b"reply")
        self.clock.advance(9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        self.clock.advance(10)
        self.assertTrue(transport.disconnected)

    def test_idleTimeoutCancelled(self) -> None:
        """
        A connection that ends leaves no timer behind.
        """
        self.policy.update(settings(idleTimeout=10))
        protocol, _ = self.connect()
        protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noIdleTimeout(self) -> None:
        """
        With C{idleTimeout} 0 no timer is set.
        """
        self.connect()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_halfClosePassesThrough(self) -> None:
        """
        Half-closes reach a service protocol that accepts them, through
        both the policy and the connection log.
        """
        factory = PolicyFactory("test", self.service, self.policy, self.clock)
        protocol = factory.buildProtocol(peer("192.0.2.1"))
        protocol.makeConnection(StringTransport())
        self.assertTrue(IHalfCloseableProtocol.providedBy(protocol))
        protocol.readConnectionLost()
        protocol.writeConnectionLost()
        self.assertEqual(
            self.service.built[0].events, ["made", "half-closed", "write-closed"]
        )

    def test_producerCallsPassThrough(self) -> None:
        """
        A service protocol's producer registration reaches the transport,
        and the transport's pause/resume reach the service.
        """
        protocol, transport = self.connect()
        service = protocol.wrappedProtocol
        service.transport.registerProducer(service.transport, True)
        self.assertIs(transport.producer, service.transport)
        service.transport.pauseProducing()
        self.assertEqual(transport.producerState, "paused")

    def test_unixPeers(self) -> None:
        """
        UNIX-socket peers are not judged by ranges, but count towards
        C{maxConnections}.
        """
        self.policy.update(settings(allow=["10.0.0.0/8"], maxConnections=1))
        address = UNIXAddress(b"/run/netd.sock")
        first = self.factory.buildProtocol(address)
        first.makeConnection(StringTransport(peerAddress=address))
        second = self.factory.buildProtocol(address)
        self.assertNotIsInstance(first, RefusedConnection)
        self.assertIsInstance(second, RefusedConnection)


class Remember(DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[Any] = []

    def datagramReceived(self, data: bytes, address: Any) -> None:
        self.received.append((data, address))


class DatagramPolicyTests(SynchronousTestCase):
    """
    L{PolicedDatagramProtocol}: allow/deny for any UDP service.
    """

    def test_filter(self) -> None:
        """
        Datagrams from denied or not-allowed sources are dropped; the rest
        reach the service.
        """
        wrapped = Remember()
        policy = Policy(settings(allow=["192.0.2.0/24", "::1"], deny=["192.0.2.9"]))
        protocol = PolicedDatagramProtocol("test", wrapped, policy, task.Clock())
        protocol.datagramReceived(b"a", ("192.0.2.1", 5000))
        protocol.datagramReceived(b"b", ("192.0.2.9", 5000))
        protocol.datagramReceived(b"c", ("198.51.100.1", 5000))
        protocol.datagramReceived(b"d", ("::1", 5000, 0, 0))
        self.assertEqual([data for data, _ in wrapped.received], [b"a", b"d"])
        self.assertEqual(protocol.dropped, 2)


class LoopbackTests(TestCase):
    """
    The policy over real sockets, IPv4 and IPv6.
    """

    def listen(self, policy: Policy, interface: str) -> int:
        factory = PolicyFactory("echo", EchoFactory(_reactor), policy, _reactor)
        port = _reactor.listenTCP(0, factory, interface=interface)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_ipv4(self) -> defer.Generator:
        """
        A client from 127.0.0.1 is served when allowed, and closed with
        nothing sent when denied.
        """
        policy = Policy(settings(allow=["127.0.0.0/8"]))
        port = self.listen(policy, "127.0.0.1")
        endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", port)
        self.assertEqual((yield exchange(endpoint, b"hi")), b"Echo=>hi")
        policy.update(settings(allow=["127.0.0.0/8"], deny=["127.0.0.1/32"]))
        self.assertEqual((yield refusedExchange(endpoint, b"hi")), b"")

    @defer.inlineCallbacks
    def test_ipv6(self) -> defer.Generator:
        """
        A client from ::1 is refused when only IPv4 ranges are allowed,
        and served once ::1 is allowed.
        """
        policy = Policy(settings(allow=["127.0.0.0/8"]))
        port = self.listen(policy, "::1")
        endpoint = TCP6ClientEndpoint(_reactor, "::1", port)
        self.assertEqual((yield refusedExchange(endpoint, b"hi")), b"")
        policy.update(settings(allow=["::1/128"]))
        self.assertEqual((yield exchange(endpoint, b"hi")), b"Echo=>hi")


class ServicePoliciesTests(SynchronousTestCase):
    """
    The tap gives each service one policy, kept where a reload finds it.
    """

    def test_found(self) -> None:
        """
        The tap's listeners, stream and datagram, lead to their policies.
        """
        from twisted.internet.testing import MemoryReactorClock

        from netd.tap import Options, makeService

        options = Options()
        options.parseOptions(
            [
                "--services",
                "echo",
                "--echo",
                "tcp:0",
                "--echo",
                "udp:0",
                "--deny",
                "::1",
            ]
        )
        root = makeService(options, reactor=MemoryReactorClock())
        policies = {name: running.policy for name, running in root.served.items()}
        self.assertEqual(list(policies), ["echo"])
        self.assertEqual(policies["echo"].settings.deny, (parseNetwork("::1"),))
        self.assertEqual(
            {
                id(getattr(s, "factory", getattr(s, "protocol", None)).policy)
                for s in root
            },
            {id(policies["echo"])},
        )


class MappedRangeTests(SynchronousTestCase):
    """
    IPv4-mapped IPv6 ranges and peers match both ways.
    """

    def test_mappedRangeIsIPv4(self) -> None:
        """
        A range written in IPv4-mapped form is parsed as the IPv4 range it
        maps, once.
        """
        self.assertEqual(str(parseNetwork("::ffff:127.0.0.0/104")), "127.0.0.0/8")
        self.assertEqual(str(parseNetwork("::ffff:192.0.2.7")), "192.0.2.7/32")
        self.assertEqual(str(parseNetwork("::ffff:0:0/96")), "0.0.0.0/0")
        self.assertEqual(str(parseNetwork("2001:db8::/32")), "2001:db8::/32")

    def test_mappedRangeMatchesBoth(self) -> None:
        """
        A mapped deny range refuses the IPv4 client and the same client
        seen through a dual-stack socket.
        """
        rules = settings(deny=["::ffff:127.0.0.0/104"]).rules
        assert rules is not None
        self.assertEqual(rules.refusal("127.0.0.1"), "denied by 127.0.0.0/8")
        self.assertEqual(rules.refusal("::ffff:127.0.0.1"), "denied by 127.0.0.0/8")
        self.assertIsNone(rules.refusal("192.0.2.1"))
        self.assertIsNone(rules.refusal("::1"))

    def test_ipv4RangeMatchesMappedPeer(self) -> None:
        """
        An IPv4 range matches a v4-mapped peer, in any spelling.
        """
        rules = settings(allow=["192.0.2.0/24"]).rules
        assert rules is not None
        self.assertIsNone(rules.refusal("::ffff:192.0.2.9"))
        self.assertIsNone(rules.refusal("0:0:0:0:0:ffff:c000:209"))
        self.assertEqual(rules.refusal("2001:db8::1"), "not in any allowed range")

    def test_wideIPv6RangeHoldsIPv4(self) -> None:
        """
        An IPv6 range that holds every IPv4-mapped address holds every IPv4
        client too.
        """
        rules = settings(allow=["::/0"]).rules
        assert rules is not None
        self.assertIsNone(rules.refusal("192.0.2.1"))
        self.assertIsNone(rules.refusal("2001:db8::1"))

    def test_scopedPeer(self) -> None:
        """
        A link-local peer with a zone (C{fe80::1%eth0}) is judged by its
        address.
        """
        rules = settings(deny=["fe80::/10"]).rules
        assert rules is not None
        self.assertEqual(rules.refusal("fe80::1%eth0"), "denied by fe80::/10")

    def test_notIPHost(self) -> None:
        """
        A host string that is not an IP address is not judged by ranges.
        """
        rules = settings(allow=["10.0.0.0/8"]).rules
        assert rules is not None
        self.assertIsNone(rules.refusal("/run/netd.sock"))
        self.assertIsNone(rules.refusal("1.2.3"))


class RuleCacheTests(SynchronousTestCase):
    """
    Compiled rules remember verdicts per host, within a bound.
    """

    def test_noRulesNoWork(self) -> None:
        """
        Without ranges there are no rules to consult at all.
        """
        self.assertIsNone(PolicySettings().rules)
        self.assertIsNone(PolicySettings(maxPerSource=3).rules)

    def test_bounded(self) -> None:
        """
        A flood of distinct sources keeps at most C{cacheSize} verdicts,
        and every verdict stays right.
        """
        rules = AddressRules((parseNetwork("10.0.0.0/8"),), (), cacheSize=64)
        for i in range(5000):
            host = f"10.0.{i // 256}.{i % 256}" if i % 2 else f"192.0.{i // 256}.1"
            expected = None if i % 2 else "not in any allowed range"
            self.assertEqual(rules.refusal(host), expected)
        self.assertLessEqual(len(rules._verdicts), 64)

    def test_cachedVerdictPerSettings(self) -> None:
        """
        New settings judge with new rules: a cached verdict does not outlive
        a reload.
        """
        policy = Policy(settings(deny=["192.0.2.1"]))
        rules = policy.settings.rules
        assert rules is not None
        self.assertIsNotNone(rules.refusal("192.0.2.1"))
        policy.update(settings(deny=["192.0.2.2"]))
        rules = policy.settings.rules
        assert rules is not None
        self.assertIsNone(rules.refusal("192.0.2.1"))


class OneWrapperTests(SynchronousTestCase):
    """
    One wrapper per connection, its interfaces declared on its class.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.policy = Policy()

    def test_classDeclaresHalfClose(self) -> None:
        """
        The wrapper around a half-closeable protocol is of a class that
        declares it; around any other protocol, of one that does not;
        neither instance carries declarations of its own.
        """
        factory = PolicyFactory("test", RecorderFactory(), self.policy, self.clock)
        halfCloseable = factory.buildProtocol(peer("192.0.2.1"))
        halfCloseable.makeConnection(StringTransport())
        plain = PolicyFactory(
            "plain", Factory.forProtocol(Protocol), self.policy, self.clock
        ).buildProtocol(peer("192.0.2.1"))
        plain.makeConnection(StringTransport())
        self.assertTrue(IHalfCloseableProtocol.implementedBy(type(halfCloseable)))
        self.assertFalse(IHalfCloseableProtocol.implementedBy(type(plain)))
        self.assertFalse(IHalfCloseableProtocol.providedBy(plain))
        self.assertEqual(list(directlyProvidedBy(halfCloseable)), [])
        self.assertEqual(list(directlyProvidedBy(plain)), [])

    def test_serviceSeesTheWrapper(self) -> None:
        """
        The service's protocol has the one wrapper as its transport, and the
        wrapper has the real transport.
        """
        factory = PolicyFactory("test", RecorderFactory(), self.policy, self.clock)
        protocol = factory.buildProtocol(peer("192.0.2.1"))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertIs(protocol.wrappedProtocol.transport, protocol)
        self.assertIs(protocol.transport, transport)

    def test_manySourcesForgotten(self) -> None:
        """
        Thousands of sources that come and go leave no count behind.
        """
        self.policy.update(settings(maxPerSource=1, deny=["198.51.100.0/24"]))
        factory = PolicyFactory("test", RecorderFactory(), self.policy, self.clock)
        for i in range(3000):
            protocol = factory.buildProtocol(peer(f"10.{i // 65536}.{i // 256}.{i}"))
            protocol.makeConnection(StringTransport())
            protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(factory.perSource, {})
        self.assertEqual(factory.active, 0)

    def test_idleTimerRescheduled(self) -> None:
        """
        Activity does not pile up timers: one delayed call per connection.
        """
        self.policy.update(settings(idleTimeout=10))
        factory = PolicyFactory("test", RecorderFactory(), self.policy, self.clock)
        protocol = factory.buildProtocol(peer("192.0.2.1"))
        transport = StringTransport()
        protocol.makeConnection(transport)
        for _ in range(30):
            protocol.dataReceived(b"x")
            self.clock.advance(3)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)


class MappedLoopbackTests(TestCase):
    """
    A v4-mapped range, over real sockets.
    """

    @defer.inlineCallbacks
    def test_mappedDeny(self) -> defer.Generator:
        """
        C{--deny ::ffff:127.0.0.0/104} refuses a client from 127.0.0.1, on
        an IPv4 socket and on an IPv6 socket that sees it v4-mapped.
        """
        policy = Policy(settings(deny=["::ffff:127.0.0.0/104"]))
        factory = PolicyFactory("echo", EchoFactory(_reactor), policy, _reactor)
        for interface in ("127.0.0.1", "::ffff:127.0.0.1"):
            port = _reactor.listenTCP(0, factory, interface=interface)
            self.addCleanup(port.stopListening)
            endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", port.getHost().port)
            self.assertEqual((yield refusedExchange(endpoint, b"hi")), b"")
        policy.update(settings(deny=["::ffff:10.0.0.0/104"]))
        self.assertEqual((yield exchange(endpoint, b"hi")), b"Echo=>hi")


class DatagramBypassTests(TestCase):
    """
    Without ranges, a real UDP port hands datagrams straight to the
    service; ranges added by a reload bring the policy back in.
    """

    @defer.inlineCallbacks
    def test_reloadRoutes(self) -> defer.Generator:
        """
        The port's protocol is the service's while the policy has no
        ranges, the policy's while it has; a denied sender gets nothing.
        """
        from netd.datagram import PerSourceRateLimiter
        from netd.services.echo.server import EchoDatagramProtocol, EchoReplies

        echo = EchoDatagramProtocol(
            EchoReplies(_reactor), PerSourceRateLimiter(_reactor, rate=100)
        )
        policy = Policy()
        policed = PolicedDatagramProtocol("echo", echo, policy, _reactor)
        port = _reactor.listenUDP(0, policed, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.assertIs(port.protocol, echo)

        client = Remember()
        clientPort = _reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(clientPort.stopListening)
        server = ("127.0.0.1", port.getHost().port)

        policy.update(settings(deny=["127.0.0.0/8"]))
        self.assertIs(port.protocol, policed)
        clientPort.write(b"denied", server)
        while not policed.dropped:
            yield task.deferLater(_reactor, 0.001, lambda: None)
        policy.update(settings())
        self.assertIs(port.protocol, echo)
        clientPort.write(b"hi", server)
        while not client.received:
            yield task.deferLater(_reactor, 0.001, lambda: None)
        self.assertEqual([data for data, _ in client.received], [b"Echo=>hi"])
        self.assertEqual(policed.dropped, 1)


class PerSourceLoopbackTests(TestCase):
    """
    C{maxPerSource} over real sockets, with clients from several loopback
    addresses (all of 127.0.0.0/8 is local).
    """

    @defer.inlineCallbacks
    def test_perSource(self) -> defer.Generator:
        """
        A source at its limit is refused while other sources are served;
        once its connection closes, it is served again and nothing is left
        counted.
        """
        policy = Policy(settings(maxPerSource=1))
        factory = PolicyFactory("echo", EchoFactory(_reactor), policy, _reactor)
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        def endpoint(source: str) -> TCP4ClientEndpoint:
            return TCP4ClientEndpoint(
                _reactor, "127.0.0.1", port.getHost().port, bindAddress=(source, 0)
            )

        holder = CollectUntilClosed(halfClose=False)
        yield connectProtocol(endpoint("127.0.0.2"), holder)
        while factory.perSource.get("127.0.0.2") != 1:
            yield task.deferLater(_reactor, 0.001, lambda: None)
        self.assertEqual((yield refusedExchange(endpoint("127.0.0.2"), b"hi")), b"")
        for source in ("127.0.0.3", "127.0.0.4"):
            self.assertEqual((yield exchange(endpoint(source), b"hi")), b"Echo=>hi")
        holder.transport.loseConnection()
        yield holder.closed
        while factory.active:
            yield task.deferLater(_reactor, 0.001, lambda: None)
        self.assertEqual(factory.perSource, {})
        self.assertEqual((yield exchange(endpoint("127.0.0.2"), b"hi")), b"Echo=>hi")
