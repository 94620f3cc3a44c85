"""
End-to-end: C{twistd -n netd --services chargen} side by side with
xinetd's own chargen (C{make sysdeps} installs xinetd).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from netd.services.chargen.server import LINE_LENGTH
from tests.common import CollectUntilClosed, freePort, runNetd, runXinetd
from tests.services.chargen.test_chargen import stream

#: Lines where xinetd's pattern and RFC 864's agree: xinetd's ring leaves
#: out the space and C{~}, so its line 22 (C{8...}) wraps round to C{!}
#: where RFC 864's reaches C{~}.
COMMON_LINES = 22


class UDPClient(DatagramProtocol):
    def __init__(self) -> None:
        self.answers: defer.DeferredQueue[bytes] = defer.DeferredQueue()

    def datagramReceived(self, data: bytes, address: Any) -> None:
        self.answers.put(data)


class XinetdChargenTests(TestCase):
    """
    netd's chargen and xinetd's, over TCP and UDP.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.xinetdPort = freePort()
        self.xinetdUDPPort = freePort(socket.SOCK_DGRAM)
        yield runXinetd(
            self,
            {"chargen-stream": self.xinetdPort, "chargen-dgram": self.xinetdUDPPort},
        )
        self.netd = yield runNetd(
            self,
            "--services=chargen",
            "--chargen=tcp:0:interface=127.0.0.1",
            "--chargen=udp:0:interface=127.0.0.1",
            listeners=2,
        )

    @defer.inlineCallbacks
    def read(self, port: int, count: int) -> Any:
        client = CollectUntilClosed(halfClose=False, until=count)
        yield connectProtocol(TCP4ClientEndpoint(_reactor, "127.0.0.1", port), client)
        received = yield client.closed
        return received[:count]

    @defer.inlineCallbacks
    def test_tcpPattern(self) -> Any:
        """
        Both stream 72-character lines and CR LF, each starting one
        character further on, from RFC 864's first line: byte for byte the
        same for the first 22 lines. Past them, xinetd's ring of 93
        characters (no space, no C{~}) departs from RFC 864's 95, which
        netd keeps to for its whole 1 MiB.
        """
        size = 1 << 20
        ours = yield self.read(self.netd.port("chargen"), size)
        theirs = yield self.read(self.xinetdPort, size)
        self.assertEqual(len(ours), size)
        common = COMMON_LINES * (LINE_LENGTH + 2)
        self.assertEqual(ours[:common], theirs[:common])
        self.assertNotEqual(
            ours[: common + LINE_LENGTH], theirs[: common + LINE_LENGTH]
        )
        self.assertEqual(ours, stream(size))
        self.assertEqual(set(theirs) - set(ours), set())
        self.assertEqual(set(ours) - set(theirs), set(b" ~"))
        theirLines = theirs.split(b"\r\n")[:-1]
        self.assertEqual({len(line) for line in theirLines}, {LINE_LENGTH})

    @defer.inlineCallbacks
    def test_udpNoAmplification(self) -> Any:
        """
        To a 1-byte datagram, xinetd answers with a whole kilobyte (the
        classic amplifier); netd with 1 byte, and with 512 for 65,507.
        """
        client = UDPClient()
        port = _reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client.transport.write(b"x", ("127.0.0.1", self.xinetdUDPPort))
        theirs = yield client.answers.get()
        self.assertGreater(len(theirs), 1)
        netdPort = self.netd.port("chargen", "UDP")
        for size, expected in [(1, 1), (74, 74), (65507, 512)]:
            client.transport.write(b"x" * size, ("127.0.0.1", netdPort))
            ours = yield client.answers.get()
            self.assertEqual(len(ours), expected)
        self.assertEqual(ours, stream(512 + 2 * (LINE_LENGTH + 2))[148:660])
