"""
End-to-end, for every installed stream service at once (whatever plugins
are installed, so new services are covered without a change here): each is
served over verified TLS, refuses denied clients before speaking, and
closes idle connections.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from netd.plugin import discoverServices
from tests.common import (
    CollectUntilClosed,
    exchange,
    makeCertificates,
    refusedExchange,
    runNetd,
    tlsClientEndpoint,
    waitForOutput,
)

#: Services that send for as long as their client reads (chargen): such a
#: connection is never idle, so the idle-timeout tests leave them out.
NEVER_IDLE = frozenset({"chargen"})


def streamServices(idling: bool = False) -> list[Any]:
    """
    Every installed service that speaks over streams; with C{idling}, only
    those whose connections fall idle when the client sends nothing.
    """
    return [
        service
        for service in discoverServices()
        if service.stream and not (idling and service.name in NEVER_IDLE)
    ]


def serveAll(*endpointAndOptions: str, idling: bool = False) -> list[str]:
    """
    Arguments for netd serving every stream service on one endpoint each.
    """
    names = [service.name for service in streamServices(idling)]
    arguments = ["--services", ",".join(names)]
    for name in names:
        arguments += [f"--{name}", endpointAndOptions[0]]
    return arguments + list(endpointAndOptions[1:])


class EveryServiceTests(TestCase):
    """
    The tap's TLS and policy hold for every stream service.
    """

    @defer.inlineCallbacks
    def test_tls(self) -> defer.Generator:
        """
        Every stream service on a mutual-TLS endpoint: a verifying client
        with a certificate completes the handshake, and netd logs the
        connection with the client's subject.
        """
        certs = makeCertificates(self)
        services = streamServices(idling=True)
        netd = yield runNetd(
            self,
            *serveAll(
                certs.endpoint(clientCA=True), "--idle-timeout", "1", idling=True
            ),
            listeners=len(services),
        )
        for service in services:
            client = CollectUntilClosed(halfClose=False)
            endpoint = tlsClientEndpoint(certs, netd.port(service.name), client=True)
            yield endpoint.connect(_Once(client))
            self.assertIsNotNone(client.transport.getPeerCertificate())
            yield client.closed
        log = yield waitForOutput(netd, "(CN=netd test client", len(services))
        for service in services:
            self.assertIn(f"{service.name} TCP 127.0.0.1:", log)

    @defer.inlineCallbacks
    def assertAllRefused(
        self, endpoint: str, option: str, cidr: str, host: str, why: str
    ) -> defer.Generator:
        """
        Serve every stream service on C{endpoint} with C{option cidr}, and
        check that a client from C{host} gets no byte from any of them, and
        that netd logs C{why} for each.
        """
        services = streamServices()
        netd = yield runNetd(
            self, *serveAll(endpoint, option, cidr), listeners=len(services)
        )
        for service in services:
            client = HostnameEndpoint(_reactor, host, netd.port(service.name))
            self.assertEqual((yield refusedExchange(client, b"x\n")), b"")
        yield waitForOutput(netd, why, len(services))

    def test_denied(self) -> defer.Deferred[None]:
        """
        Every stream service refuses a denied IPv4 client before sending it
        a byte, and logs why.
        """
        return self.assertAllRefused(
            "tcp:0:interface=127.0.0.1",
            "--deny",
            "127.0.0.1",
            "127.0.0.1",
            "denied by 127.0.0.1/32",
        )

    def test_notAllowedIPv6(self) -> defer.Deferred[None]:
        """
        Every stream service refuses ::1 when only an IPv4 range is allowed.
        """
        return self.assertAllRefused(
            "tcp6:0:interface=\\:\\:1",
            "--allow",
            "10.0.0.0/8",
            "::1",
            "not in any allowed range",
        )

    @defer.inlineCallbacks
    def test_idle(self) -> defer.Generator:
        """
        A client of any stream service that sends nothing and never
        half-closes is disconnected by the server.
        """
        services = streamServices(idling=True)
        netd = yield runNetd(
            self,
            *serveAll(
                "tcp:0:interface=127.0.0.1", "--idle-timeout", "0.5", idling=True
            ),
            listeners=len(services),
        )
        for service in services:
            endpoint = TCP4ClientEndpoint(
                _reactor, "127.0.0.1", netd.port(service.name)
            )
            yield exchange(endpoint, b"", until=1 << 30)


class _Once:
    """
    A factory that hands out one given protocol.
    """

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def buildProtocol(self, addr: Any) -> Any:
        return self.protocol


class Datagrams(DatagramProtocol):
    """
    Remember every datagram received; C{arrived} fires at the first.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.arrived: defer.Deferred[bytes] = defer.Deferred()

    def datagramReceived(self, data: bytes, address: Any) -> None:
        self.received.append(data)
        if not self.arrived.called:
            self.arrived.callback(data)


class DatagramPolicyTests(TestCase):
    """
    Allow and deny hold for UDP services.
    """

    def bound(self, host: str) -> Datagrams:
        protocol = Datagrams()
        port = _reactor.listenUDP(0, protocol, interface=host)
        self.addCleanup(port.stopListening)
        return protocol

    @defer.inlineCallbacks
    def test_udpDenied(self) -> defer.Generator:
        """
        A datagram from a denied source gets no answer, while one sent
        after it from an allowed source does.
        """
        netd = yield runNetd(
            self,
            "--services", "echo", "--echo", "udp:0:interface=127.0.0.1",
            "--deny", "127.0.0.2",
        )  # fmt: skip
        server = ("127.0.0.1", netd.port("echo", "UDP"))
        denied, allowed = self.bound("127.0.0.2"), self.bound("127.0.0.1")
        denied.transport.write(b"denied", server)
        allowed.transport.write(b"allowed", server)
        self.assertEqual((yield allowed.arrived), b"Echo=>allowed")
        # A reply to the earlier datagram would have been sent first.
        yield task.deferLater(_reactor, 0, lambda: None)
        self.assertEqual(denied.received, [])
