"""
Tests for L{netd.datagram}: the per-source reply limit.
"""

from __future__ import annotations

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from netd.datagram import PerSourceRateLimiter


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
