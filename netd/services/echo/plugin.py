# -*- test-case-name: tests.services.echo.test_echo -*-
"""
The echo service's plugin: C{--echo}, C{--echo-prefix}, C{--echo-stamp},
C{--echo-delay}, C{--echo-udp-rate}.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from twisted.python.usage import UsageError

from netd.metrics import NO_DATAGRAM_METRICS, DatagramListenerMetrics
from netd.plugin import UDP_RATE_OPTION, DatagramServicePlugin


class EchoService(DatagramServicePlugin):
    """
    Echo over TCP (and any stream endpoint) and UDP.
    """

    name = "echo"
    description = "echo every chunk back behind a prefix (RFC 862 with '')"
    clientCommands = [
        ("echo", "netd.services.echo.client.EchoCommand", "Echo words, lock-step."),
        ("load", "netd.services.echo.client.LoadCommand", "Drive many clients."),
    ]
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
        UDP_RATE_OPTION,
    ]
    optFlags = [["stamp", None, "End every reply with ' at ' and the server's ctime."]]

    def validate(self, options: Mapping[str, Any]) -> None:
        if options["delay"] < 0:
            raise UsageError(
                f"--echo-delay must not be negative, not {options['delay']!r}"
            )
        super().validate(options)

    def makeFactory(self, options: Mapping[str, Any], reactor: Any) -> Any:
        from netd.services.echo.server import EchoFactory

        return EchoFactory(
            reactor,
            prefix=options["prefix"].encode("utf-8"),
            stamp=options["stamp"],
            delay=options["delay"],
        )

    def makeDatagramProtocol(
        self,
        options: Mapping[str, Any],
        reactor: Any,
        metrics: DatagramListenerMetrics = NO_DATAGRAM_METRICS,
    ) -> Any:
        from netd.services.echo.server import EchoDatagramProtocol, EchoReplies

        protocol = EchoDatagramProtocol(
            EchoReplies(reactor, options["prefix"].encode("utf-8"), options["stamp"]),
            self.limiter(options, reactor),
        )
        protocol.metrics = metrics
        return protocol

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
            protocol.limiter.setRate(options["udp-rate"])
        return [name for name in changed if name in _LIVE_OPTIONS]


_LIVE_OPTIONS = frozenset({"prefix", "stamp", "delay", "udp-rate"})


echo = EchoService()
