"""
End-to-end: C{twistd -n netd} as a subprocess, talked to over loopback.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from tests.common import runNetd


class Collect(Protocol):
    """
    Collect everything received until the server closes.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object) -> None:
        self.closed.callback(self.received)


class TwistdEchoTests(TestCase):
    """
    netd run by twistd serves echo on the port it logs.
    """

    @defer.inlineCallbacks
    def test_echoOnLoggedPort(self) -> defer.Generator:
        """
        With C{--echo tcp:0}, netd logs the port it got, and a client that
        sends and half-closes there gets its bytes back behind C{Echo=>}.
        """
        netd = yield runNetd(
            self, "--services", "echo", "--echo", "tcp:0:interface=127.0.0.1"
        )
        client = Collect()
        yield connectProtocol(
            TCP4ClientEndpoint(_reactor, "127.0.0.1", netd.port("echo")), client
        )
        client.transport.write(b"hello")
        client.transport.loseWriteConnection()
        received = yield client.closed
        self.assertEqual(received, b"Echo=>hello")
