# -*- test-case-name: tests.test_echo -*-
"""
The echo service's plugin: C{--echo}, C{--echo-prefix}, C{--echo-stamp},
C{--echo-delay}, C{--echo-udp-rate}.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from twisted.python.usage import UsageError

from netd.plugin import ServicePlugin


class EchoService(ServicePlugin):
    """
    Echo over TCP (and any stream endpoint) and UDP.
    """

    name = "echo"
    description = "echo every chunk back behind a prefix (RFC 862 with '')"
    defaultEndpoints = (
        "tcp:50007:interface=127.0.0.1",
        "udp:50007:interface=127.0.0.1",
    )
    stream = True
    datagram = True
    optParameters = [
        [
            "prefix",
            None,
            "Echo=>",
            "Put this text before every reply ('' for RFC 862).",
        ],
        ["delay", None, 0.0, "Seconds each connection's first reply waits.", float],
        ["udp-rate", None, 20.0, "UDP replies a second to any one source.", float],
    ]
    optFlags = [["stamp", None, "End every reply with ' at ' and the server's ctime."]]

    def validate(self, options: Mapping[str, Any]) -> None:
        if options["delay"] < 0:
            raise UsageError(
                f"--echo-delay must not be negative, not {options['delay']!r}"
            )
        if options["udp-rate"] <= 0:
            raise UsageError(
                f"--echo-udp-rate must be positive, not {options['udp-rate']!r}"
            )

    def makeFactory(self, options: Mapping[str, Any], reactor: Any) -> Any:
        from netd.echo import EchoFactory

        return EchoFactory(
            reactor,
            prefix=options["prefix"].encode("utf-8"),
            stamp=options["stamp"],
            delay=options["delay"],
        )

    def makeDatagramProtocol(self, options: Mapping[str, Any], reactor: Any) -> Any:
        from netd.datagram import PerSourceRateLimiter
        from netd.echo import EchoDatagramProtocol, EchoReplies

        rate = options["udp-rate"]
        return EchoDatagramProtocol(
            EchoReplies(reactor, options["prefix"].encode("utf-8"), options["stamp"]),
            PerSourceRateLimiter(reactor, rate=rate, burst=_burstOf(rate)),
        )

    def reconfigure(
        self,
        options: Mapping[str, Any],
        changed: Collection[str],
        factory: Any,
        datagramProtocols: Sequence[Any],
    ) -> Collection[str]:
        """
        Every echo option applies live: the prefix and stamp to the next
        reply of every connection, open ones included; the delay to new
        connections; the UDP rate to the next datagram.
        """
        replies = [protocol.replies for protocol in datagramProtocols]
        if factory is not None:
            replies.append(factory.replies)
            factory.delay = options["delay"]
        for reply in replies:
            reply.prefix = options["prefix"].encode("utf-8")
            reply.stamp = options["stamp"]
        for protocol in datagramProtocols:
            protocol.limiter.rate = options["udp-rate"]
            protocol.limiter.burst = _burstOf(options["udp-rate"])
        return [name for name in changed if name in _LIVE_OPTIONS]


_LIVE_OPTIONS = frozenset({"prefix", "stamp", "delay", "udp-rate"})


def _burstOf(rate: float) -> int:
    """
    How many UDP replies a source may have at once: two seconds' worth.
    """
    return max(1, int(rate * 2))


echo = EchoService()
