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
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import TestCase

from tests.common import exchange, runNetd, waitForOutput

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
        log = yield waitForOutput(netd, "bytes in", 2)
        self.assertEqual(log.count("echo refused TCP 127.0.0.2:"), 2, log)
        self.assertEqual(log.count("denied by 127.0.0.2/32"), 2, log)
        served = [
            line
            for line in log.splitlines()
            if "] echo TCP 127.0.0.1:" in line and "bytes in" in line
        ]
        self.assertEqual(len(served), 2, log)
