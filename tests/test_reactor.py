"""
Tests for L{netd.reactor}: netd's epoll reactor dispatches reads without
the legacy log context, and everything else as Twisted does.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from netd.policy import Policy, PolicyFactory
from netd.reactor import NetdReactor, installDefault
from netd.services.echo.server import EchoFactory


class Boom(Protocol):
    """
    A protocol whose C{dataReceived} raises.
    """

    def dataReceived(self, data: bytes) -> None:
        raise ZeroDivisionError("boom")

    def connectionLost(self, reason: Failure) -> None:
        self.factory.lost.append(reason)  # type: ignore[attr-defined]


class NetdReactorTests(SynchronousTestCase):
    """
    A L{NetdReactor} of its own, driven one iteration at a time, serving a
    real loopback client.
    """

    def setUp(self) -> None:
        self.reactor = NetdReactor()
        self.addCleanup(self.closeReactor)

    def closeReactor(self) -> None:
        for selectable in self.reactor.removeAll():
            selectable.connectionLost(Failure(Exception("test over")))
        self.reactor._poller.close()

    def client(self, factory: Any) -> socket.socket:
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        client.setblocking(False)
        return client

    def receive(self, client: socket.socket) -> bytes:
        """
        Run the reactor until the client can read (bounded in iterations).
        """
        for _ in range(500):
            self.reactor.runUntilCurrent()
            self.reactor.doIteration(0.01)
            try:
                return client.recv(65536)
            except BlockingIOError:
                continue
        self.fail("nothing arrived")

    def test_echoAndHalfClose(self) -> None:
        """
        netd's echo, policy and log included, answers on this reactor; a
        half-close from the client gets the rest and then the server's close.
        """
        factory = PolicyFactory(
            "echo", EchoFactory(self.reactor), Policy(), self.reactor
        )
        client = self.client(factory)
        client.sendall(b"one")
        self.assertEqual(self.receive(client), b"Echo=>one")
        client.sendall(b"two")
        client.shutdown(socket.SHUT_WR)
        self.assertEqual(self.receive(client), b"Echo=>two")
        self.assertEqual(self.receive(client), b"")
        for _ in range(100):
            if not factory.protocols:
                break
            self.reactor.doIteration(0.01)
        self.assertEqual(factory.active, 0)

    def test_errorInRead(self) -> None:
        """
        An exception from a protocol is logged as Twisted logs it, inside
        the connection's log context, and the connection is closed with it.
        """
        from twisted.python import log

        logged: list[dict[str, Any]] = []
        log.addObserver(logged.append)
        self.addCleanup(log.removeObserver, logged.append)
        factory = Factory.forProtocol(Boom)
        factory.lost = []  # type: ignore[attr-defined]
        client = self.client(factory)
        client.sendall(b"x")
        self.assertEqual(self.receive(client), b"")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        (error,) = [event for event in logged if event.get("isError")]
        self.assertTrue(error["system"].startswith("Boom,"))
        [reason] = factory.lost  # type: ignore[attr-defined]
        self.assertIsInstance(reason.value, ZeroDivisionError)

    def test_noReplacement(self) -> None:
        """
        With a reactor installed already (as here, or by C{twistd -r}),
        L{installDefault} leaves it.
        """
        from twisted.internet import reactor

        self.assertFalse(installDefault())
        from twisted.internet import reactor as after

        self.assertIs(after, reactor)
