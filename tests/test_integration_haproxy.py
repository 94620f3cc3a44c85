"""
End-to-end: a real HAProxy on loopback in front of C{twistd -n netd}
serving a C{haproxy:} endpoint, with PROXY protocol v1 and v2; netd's
access policy and connection log see the real client.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from tests.common import exchange, refusedExchange, runNetd, waitForOutput

HAPROXY_CONFIG = """\
defaults
    mode tcp
    timeout connect 5s
    timeout client 20s
    timeout server 20s

frontend v1
    bind fd@3
    default_backend netd_v1

frontend v2
    bind fd@4
    default_backend netd_v2

backend netd_v1
    server netd 127.0.0.1:{port} send-proxy

backend netd_v2
    server netd 127.0.0.1:{port} send-proxy-v2
"""


class HAProxyProcess(protocol.ProcessProtocol):
    """
    C{haproxy -db}: its output, and when it ended.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class HAProxyTests(TestCase):
    """
    netd behind HAProxy.
    """

    def listeningSocket(self) -> socket.socket:
        """
        A listening socket on 127.0.0.1 for HAProxy to inherit: clients
        can connect to it at once, and no port number is guessed.
        """
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        self.addCleanup(sock.close)
        return sock

    def startHAProxy(self, netdPort: int, v1: socket.socket, v2: socket.socket) -> None:
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as stream:
            stream.write(HAPROXY_CONFIG.format(port=netdPort))
        haproxy = HAProxyProcess()
        _reactor.spawnProcess(
            haproxy,
            "haproxy",
            ["haproxy", "-db", "-f", config],
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin")},
            childFDs={0: "w", 1: "r", 2: "r", 3: v1.fileno(), 4: v2.fileno()},
        )

        def stop() -> defer.Deferred[None] | None:
            if haproxy.ended.called:
                return None
            haproxy.transport.signalProcess("KILL")
            return haproxy.ended

        self.addCleanup(stop)

    @defer.inlineCallbacks
    def test_realClient(self) -> defer.Generator:
        """
        Through HAProxy (PROXY v1 and v2), a client from 127.0.0.1 is
        served and logged with its own address and port, and a client from
        the denied 127.0.0.2 is refused and logged as such.
        """
        netd = yield runNetd(
            self,
            "--services",
            "echo",
            "--echo",
            "haproxy:tcp:0:interface=127.0.0.1",
            "--deny",
            "127.0.0.2",
        )
        v1, v2 = self.listeningSocket(), self.listeningSocket()
        self.startHAProxy(netd.port("echo"), v1, v2)
        for sock in (v1, v2):
            port = sock.getsockname()[1]
            allowed = TCP4ClientEndpoint(
                _reactor, "127.0.0.1", port, bindAddress=("127.0.0.1", 0)
            )
            received = yield exchange(allowed, b"hello", until=len(b"Echo=>hello"))
            self.assertEqual(received, b"Echo=>hello")
            denied = TCP4ClientEndpoint(
                _reactor, "127.0.0.1", port, bindAddress=("127.0.0.2", 0)
            )
            received = yield exchange(denied, b"hello")
            self.assertEqual(received, b"")
        yield waitForOutput(netd, "bytes in", 2)
        # One refusal per denied client at least: HAProxy may retry a
        # connection the server closed at once, each retry refused alike.
        log = yield waitForOutput(netd, "denied by 127.0.0.2/32", 2)
        self.assertGreaterEqual(log.count("echo refused TCP 127.0.0.2:"), 2, log)
        served = [
            line
            for line in log.splitlines()
            if "] echo TCP 127.0.0.1:" in line and "bytes in" in line
        ]
        self.assertEqual(len(served), 2, log)


FORGED_V1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 13\r\n"
FORGED_V2 = (
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"
    + socket.inet_aton("203.0.113.9")
    + socket.inet_aton("127.0.0.1")
    + b"\x9c\x40\x00\x0d"
)


class Holder(protocol.Protocol):
    """
    A client that connects and sends nothing: fires C{lost} when netd
    closes it.
    """

    def __init__(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


class TrustedProxyTests(TestCase):
    """
    Forged PROXY headers sent straight to a C{haproxy:} endpoint of a real
    C{twistd -n netd}, and connections that never send one.
    """

    def endpoint(self, netd: Any, source: str = "127.0.0.1") -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(
            _reactor, "127.0.0.1", netd.port("daytime"), bindAddress=(source, 0)
        )

    @defer.inlineCallbacks
    def test_forgedFromUntrusted(self) -> defer.Generator:
        """
        With C{--trusted-proxy} a range that excludes 127.0.0.1, forged v1
        and v2 headers from 127.0.0.1 are refused without a byte of reply
        and logged; from a trusted address the same headers are believed.
        """
        netd = yield runNetd(
            self,
            "--services", "daytime",
            "--daytime", "haproxy:tcp:0:interface=127.0.0.1",
            "--trusted-proxy", "127.0.0.2",
            "--allow", "203.0.113.0/24",
            "--allow", "127.0.0.0/8",
        )  # fmt: skip
        for header in (FORGED_V1, FORGED_V2):
            received = yield refusedExchange(self.endpoint(netd), header)
            self.assertEqual(received, b"")
        log = yield waitForOutput(netd, "not a trusted proxy", 2)
        self.assertEqual(log.count("daytime refused TCP 127.0.0.1:"), 2, log)
        self.assertNotIn("203.0.113.9", log)
        for header in (FORGED_V1, FORGED_V2):
            received = yield exchange(self.endpoint(netd, "127.0.0.2"), header)
            self.assertTrue(received.endswith(b"\r\n"), received)
        log = yield waitForOutput(netd, "daytime TCP 203.0.113.9:40000", 2)

    @defer.inlineCallbacks
    def test_headerlessCounted(self) -> defer.Generator:
        """
        Connections that have not sent their header count toward
        C{--max-connections}: with two held, a third is refused even with
        a good header; once they are gone, it is served.
        """
        netd = yield runNetd(
            self,
            "--services", "daytime",
            "--daytime", "haproxy:tcp:0:interface=127.0.0.1",
            "--max-connections", "2",
        )  # fmt: skip
        holders = [Holder(), Holder()]
        for holder in holders:
            yield connectProtocol(self.endpoint(netd), holder)
        received = yield refusedExchange(self.endpoint(netd), FORGED_V1)
        self.assertEqual(received, b"")
        yield waitForOutput(netd, "already 2 connections")
        for holder in holders:
            holder.transport.loseConnection()
            yield holder.lost
        # netd may see the close a moment after this side did: try again
        # (a bounded number of times) until it has.
        for _attempt in range(20):
            received = yield refusedExchange(self.endpoint(netd), FORGED_V1)
            if received:
                break
        self.assertTrue(received.endswith(b"\r\n"), received)
