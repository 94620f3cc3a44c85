# -*- test-case-name: tests.test_datagram -*-
"""
What every netd UDP service needs before it answers a datagram: no replies
to the ports of other reflecting services (a reply to echo, chargen,
daytime, time or NTP could start an endless loop between two servers), and
a per-source limit on replies (UDP sources are easy to forge, and a server
that answers without limit amplifies floods towards the forged victim).
"""

from __future__ import annotations

import errno
from errno import ECONNREFUSED
from typing import Any

from twisted.internet import udp
from twisted.internet.error import MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from netd.metrics import NO_DATAGRAM_METRICS, DatagramListenerMetrics
from netd.throttledlog import ThrottledLog

#: Source ports of services that answer any datagram: echo, daytime,
#: chargen, time, NTP; and port 0, which no real sender uses.
REFLECTION_PORTS = frozenset({0, 7, 13, 19, 37, 123})


class PerSourceRateLimiter:
    """
    A token bucket per source address: each source may have C{burst}
    replies at once and C{rate} a second after that.

    At most C{maxSources} sources are remembered; when more send, the one
    heard from least recently is forgotten (and so starts with a full
    bucket again), which bounds memory whatever a flood of forged sources
    does.
    """

    def __init__(
        self, clock: Any, rate: float = 20.0, burst: int = 40, maxSources: int = 4096
    ) -> None:
        """
        @param clock: an L{IReactorTime}.
        @param rate: replies a second each source earns.
        @param burst: the most replies a source can have saved up.
        @param maxSources: the most sources remembered at once.
        """
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.maxSources = maxSources
        # Each source's [tokens, time of last reply], least recently heard
        # from first; lists, so that a known source costs no new bucket.
        self._buckets: dict[str, list[float]] = {}

    def setRate(self, rate: float) -> None:
        """
        Allow C{rate} replies a second from now on, in bursts of up to two
        seconds' worth.
        """
        self.rate = rate
        self.burst = max(1, int(rate * 2))

    def allow(self, source: str) -> bool:
        """
        Take one reply from C{source}'s bucket.

        @return: whether C{source} may have a reply now.
        """
        now = self.clock.seconds()
        buckets = self._buckets
        bucket = buckets.pop(source, None)
        if bucket is None:
            if len(buckets) >= self.maxSources:
                del buckets[next(iter(buckets))]
            tokens = float(self.burst)
            bucket = [tokens, now]
        else:
            tokens = bucket[0] + (now - bucket[1]) * self.rate
            if tokens > self.burst:
                tokens = float(self.burst)
            bucket[1] = now
        buckets[source] = bucket
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False


class GuardedDatagramProtocol(DatagramProtocol):
    """
    A datagram protocol that answers each acceptable datagram with what
    L{reply} returns, after dropping reflection ports and rate-limited
    sources.

    @ivar reflectionPorts: source ports never answered.
    @ivar metrics: the UDP endpoint's, which its plugin's
        C{makeDatagramProtocol} was given.
    """

    log = Logger()
    noisy = False
    reflectionPorts: frozenset[int] = REFLECTION_PORTS
    metrics: DatagramListenerMetrics = NO_DATAGRAM_METRICS
    _sendto: Any = None

    def __init__(self, serviceName: str, limiter: PerSourceRateLimiter) -> None:
        """
        @param serviceName: the netd service, for logs.
        @param limiter: the per-source reply limit.
        """
        self.serviceName = serviceName
        self.limiter = limiter
        self.dropped = 0
        self._dropLog = ThrottledLog(limiter.clock)
        self._replyLog = ThrottledLog(limiter.clock)

    def logPrefix(self) -> str:
        return self.serviceName

    def reply(self, data: bytes, address: tuple[str, int]) -> bytes | None:
        """
        The answer to one datagram, or L{None} for no answer.
        """
        raise NotImplementedError

    def _drop(self, host: str, port: int, reason: str) -> None:
        self.dropped += 1
        self.metrics.dropped(reason)
        self._dropLog.emit(
            self.log.info,
            "{service} dropped a datagram from {host}:{port}",
            service=self.serviceName,
            host=host,
            port=port,
        )

    def limitedReply(self, data: bytes, address: tuple[str, int]) -> bytes | None:
        """
        The answer to a datagram from a source over its reply limit, or
        L{None} (the default) for none; a protocol that sends one (SNTP's
        Kiss-o'-Death) limits it itself.
        """
        return None

    def makeConnection(self, transport: Any) -> None:
        """
        Listen on C{transport}; on a UDP port of the reactor's own, send
        replies straight to its socket.
        """
        self._sendto = None
        if type(transport) is udp.Port and not transport._connectedAddr:
            self._sendto = transport.socket.sendto
        super().makeConnection(transport)

    def datagramReceived(self, data: bytes, address: Any) -> None:
        self.metrics.received()
        host, port = address[:2]
        if port in self.reflectionPorts:
            self._drop(host, port, "loop-guard")
            return
        if self.limiter.allow(host):
            answer = self.reply(data, address)
        else:
            self._drop(host, port, "rate-limit")
            answer = self.limitedReply(data, address)
        if answer is None:
            return
        try:
            if self._sendto is not None:
                # The address came from recvfrom on this very socket: none of
                # the checks of the port's write() can fail.
                self._sendto(answer, address)
            else:
                self.transport.write(answer, address)
        except (OSError, MessageLengthError) as error:
            if isinstance(error, OSError) and error.errno == ECONNREFUSED:
                return  # an earlier reply's ICMP error; as the port's write()
            # Too big for one datagram (a prefix on a datagram of the
            # largest size), the send buffer is full, or the route went
            # away: the reply is dropped whole, never cut short.
            self.dropped += 1
            self.metrics.dropped(_dropReason(error))
            self._replyLog.emit(
                self.log.info,
                "{service} could not answer {host}:{port}: {error}",
                service=self.serviceName,
                host=address[0],
                port=port,
                error=error,
            )
        else:
            self.metrics.sent()


def _dropReason(error: Exception) -> str:
    """
    The metrics' reason for a reply that could not be sent.
    """
    if isinstance(error, MessageLengthError) or getattr(error, "errno", None) == (
        errno.EMSGSIZE
    ):
        return "too-big"
    return "send-error"
