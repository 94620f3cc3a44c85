"""
Tests for L{netd.datagram}: the per-source reply limit.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.datagram import GuardedDatagramProtocol, PerSourceRateLimiter


class RateLimiterTests(SynchronousTestCase):
    """
    L{PerSourceRateLimiter}: a token bucket per source.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()

    def test_burstThenRate(self) -> None:
        """
        A source gets its burst at once, then C{rate} a second.
        """
        limiter = PerSourceRateLimiter(self.clock, rate=2, burst=3)
        self.assertEqual([limiter.allow("a") for _ in range(4)], [True] * 3 + [False])
        self.clock.advance(0.5)
        self.assertEqual([limiter.allow("a") for _ in range(2)], [True, False])

    def test_refillCapped(self) -> None:
        """
        A long silence refills the bucket only up to the burst.
        """
        limiter = PerSourceRateLimiter(self.clock, rate=100, burst=2)
        limiter.allow("a")
        self.clock.advance(3600)
        self.assertEqual([limiter.allow("a") for _ in range(3)], [True, True, False])

    def test_boundedMemory(self) -> None:
        """
        However many sources send, at most C{maxSources} are remembered; the
        least recently heard is forgotten first.
        """
        limiter = PerSourceRateLimiter(self.clock, rate=1, burst=1, maxSources=100)
        for n in range(10_000):
            limiter.allow(f"10.0.{n // 256}.{n % 256}")
        self.assertEqual(len(limiter._buckets), 100)
        self.assertIn("10.0.39.15", limiter._buckets)  # the last one
        self.assertNotIn("10.0.0.0", limiter._buckets)


class BucketReuseTests(SynchronousTestCase):
    """
    A known source costs no new bucket.
    """

    def test_reused(self) -> None:
        """
        The bucket of a source heard from before is the same object, and
        moves to the most recently heard end.
        """
        limiter = PerSourceRateLimiter(task.Clock(), rate=2, burst=3)
        limiter.allow("a")
        limiter.allow("b")
        bucket = limiter._buckets["a"]
        limiter.allow("a")
        self.assertIs(limiter._buckets["a"], bucket)
        self.assertEqual(list(limiter._buckets), ["b", "a"])


class Reflector(GuardedDatagramProtocol):
    """
    Answer every datagram with C{size} bytes.
    """

    size = 3

    def reply(self, data: bytes, address: tuple[str, int]) -> bytes:
        return b"r" * self.size


class DirectSendTests(TestCase):
    """
    On a real UDP port, replies go straight to the port's socket.
    """

    def listen(self, protocol: DatagramProtocol) -> int:
        port = _reactor.listenUDP(0, protocol, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_answered(self) -> defer.Generator:
        """
        A datagram is answered to its sender.
        """
        server = Reflector("test", PerSourceRateLimiter(_reactor, rate=100, burst=100))
        port = self.listen(server)
        self.assertIsNotNone(server._sendto)
        client = Collector()
        self.listen(client)
        client.transport.write(b"ping", ("127.0.0.1", port))
        self.assertEqual((yield client.received), b"rrr")

    @defer.inlineCallbacks
    def test_tooBigLoggedThrottled(self) -> defer.Generator:
        """
        Replies too big for a datagram are not sent; their log is
        throttled, nothing is raised, and the next datagram is answered.
        """
        limiter = PerSourceRateLimiter(_reactor, rate=1000, burst=1000)
        server = Reflector("test", limiter)
        port = self.listen(server)
        client = Collector()
        self.listen(client)
        server.size = 70000
        with capturedLogs() as events:
            for _ in range(40):
                server.datagramReceived(b"x", ("127.0.0.1", client.port))
        self.assertTrue(0 < len(events) < 40)
        self.assertTrue(all("could not answer" in formatEvent(e) for e in events))
        server.size = 3
        client.transport.write(b"ping", ("127.0.0.1", port))
        self.assertEqual((yield client.received), b"rrr")


class Collector(DatagramProtocol):
    """
    Fire C{received} with the first datagram.
    """

    def __init__(self) -> None:
        self.received: defer.Deferred[bytes] = defer.Deferred()

    def startProtocol(self) -> None:
        self.port = self.transport.getHost().port

    def datagramReceived(self, data: bytes, address: object) -> None:
        if not self.received.called:
            self.received.callback(data)
