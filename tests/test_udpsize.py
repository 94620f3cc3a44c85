"""
Full-size datagrams: every UDP listener (C{udp:} and C{systemd-udp:}, IPv4
and IPv6) reads datagrams of any size whole, and a reply too big for one
datagram is dropped and logged (throttled), never cut short.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import _SystemdParser
from twisted.internet.error import MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.systemd import ListenFDs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.datagram import GuardedDatagramProtocol, PerSourceRateLimiter
from netd.listeners import MAX_DATAGRAM_SIZE, DatagramListener
from netd.tap import Options, makeService
from tests.common import MemoryReactorUDP

#: The largest UDP payload over IPv4 and over IPv6 (without jumbograms).
LARGEST = {socket.AF_INET: 65507, socket.AF_INET6: 65527}
LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
DEFAULT_PREFIX = b"Echo=>"


def hasIPv6Loopback() -> bool:
    """
    Whether this machine can bind a UDP socket on C{::1}.
    """
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


class Replies(DatagramProtocol):
    """
    A client that collects the replies it gets, reading datagrams whole.
    """

    def __init__(self) -> None:
        self.replies: defer.DeferredQueue[bytes] = defer.DeferredQueue()

    def datagramReceived(self, data: bytes, address: Any) -> None:
        self.replies.put(data)


class FullSizeEchoTests(TestCase):
    """
    UDP echo, built by the tap, with the RFC 862 prefix C{''} and with the
    default C{Echo=>}, at 0, 1, 8,192, 8,193 bytes and the largest size.
    """

    def setUp(self) -> None:
        self.reactor = _reactor

    def startEcho(self, prefix: str, endpoint: str) -> int:
        options = Options()
        options.parseOptions(
            ["--services", "echo", "--echo-prefix", prefix, "--echo", endpoint]
        )
        netd = makeService(options, reactor=_reactor)
        netd.startService()
        self.addCleanup(netd.stopService)
        [listener] = list(netd)
        number: int = listener.port.getHost().port
        return number

    def inherit(self, family: int) -> str:
        """
        Hand over a UDP socket bound on loopback as systemd would, named
        C{echo-udp}; return the C{systemd-udp:} endpoint naming it.
        """
        sock = socket.socket(family, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind((LOOPBACK[family], 0))
        descriptor = os.dup(sock.fileno())
        self.patch(_SystemdParser, "_sddaemon", ListenFDs([descriptor], ("echo-udp",)))
        domain = "INET" if family == socket.AF_INET else "INET6"
        return f"systemd-udp:domain={domain}:name=echo-udp"

    @defer.inlineCallbacks
    def checkSizes(self, family: int, endpoint: Any) -> defer.Generator:
        """
        Echo each size through a listener built from C{endpoint()} (a fresh
        description for each netd), with both prefixes.
        """
        if family == socket.AF_INET6 and not hasIPv6Loopback():
            raise self.skipTest("no IPv6 loopback on this machine")
        host = LOOPBACK[family]
        client = Replies()
        clientPort = _reactor.listenUDP(0, client, interface=host, maxPacketSize=65535)
        self.addCleanup(clientPort.stopListening)
        sizes = [0, 1, 8192, 8193, LARGEST[family]]
        for prefix in (b"", DEFAULT_PREFIX):
            port = self.startEcho(prefix.decode(), endpoint())
            with capturedLogs() as events:
                for size in sizes:
                    data = os.urandom(size)
                    clientPort.write(data, (host, port))
                    if len(prefix) + size > LARGEST[family]:
                        # Dropped: the next reply is the next datagram's.
                        clientPort.write(b"next", (host, port))
                        reply = yield client.replies.get()
                        self.assertEqual(reply, prefix + b"next", size)
                        continue
                    reply = yield client.replies.get()
                    self.assertEqual(len(reply), len(prefix) + size)
                    self.assertEqual(reply, prefix + data)
            unanswered = [
                event
                for event in events
                if "could not answer" in event.get("log_format", "")
            ]
            self.assertEqual(len(unanswered), 1 if prefix else 0)

    def test_udpIPv4(self) -> defer.Generator:
        """
        C{udp:} on 127.0.0.1.
        """
        return self.checkSizes(socket.AF_INET, lambda: "udp:0:interface=127.0.0.1")

    def test_udpIPv6(self) -> defer.Generator:
        """
        C{udp:} on ::1.
        """
        return self.checkSizes(socket.AF_INET6, lambda: "udp:0:interface=\\:\\:1")

    def test_adoptedIPv4(self) -> defer.Generator:
        """
        A C{systemd-udp:} socket bound on 127.0.0.1.
        """
        return self.checkSizes(socket.AF_INET, lambda: self.inherit(socket.AF_INET))

    def test_adoptedIPv6(self) -> defer.Generator:
        """
        A C{systemd-udp:} socket bound on ::1.
        """
        return self.checkSizes(socket.AF_INET6, lambda: self.inherit(socket.AF_INET6))


class ListenerTests(SynchronousTestCase):
    """
    L{DatagramListener} asks the reactor for whole datagrams.
    """

    def test_maxPacketSize(self) -> None:
        """
        C{udp:} listens with room for the largest datagram, over IPv4 and
        IPv6 alike.
        """
        reactor = MemoryReactorUDP()
        DatagramListener(
            "echo", "udp:7:interface=\\:\\:1", reactor, DatagramProtocol()
        ).startService()
        [(_port, _protocol, interface, size)] = reactor.udpServers
        self.assertEqual((interface, size), ("::1", MAX_DATAGRAM_SIZE))
        self.assertGreaterEqual(MAX_DATAGRAM_SIZE, max(LARGEST.values()))


class TooBig(DatagramProtocol):
    """
    A transport whose every datagram is too big to send.
    """

    def write(self, data: bytes, address: Any) -> None:
        raise MessageLengthError("message too long")


class Reply(GuardedDatagramProtocol):
    def reply(self, data: bytes, address: tuple[str, int]) -> bytes:
        return data


class UnsendableReplyTests(SynchronousTestCase):
    """
    A reply too big for one datagram is dropped, counted and logged, the
    log throttled: a client can cause it at will.
    """

    def test_droppedAndThrottled(self) -> None:
        """
        Three unsendable replies within a minute are counted and logged
        once; the next minute's first line says how many were held back.
        """
        clock = Clock()
        protocol = Reply("echo", PerSourceRateLimiter(clock))
        protocol.transport = TooBig()
        with capturedLogs() as events:
            for _ in range(3):
                protocol.datagramReceived(b"x", ("127.0.0.1", 5000))
            clock.advance(60)
            protocol.datagramReceived(b"x", ("127.0.0.1", 5000))
        self.assertEqual(protocol.dropped, 4)
        self.assertEqual(len(events), 2)
        self.assertEqual(events[0]["error"].args, ("message too long",))
        self.assertEqual(events[1]["heldBack"], 2)
