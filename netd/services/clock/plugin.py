# -*- test-case-name: tests.services.clock.test_clock -*-
"""
The clock services' plugins: C{daytime} (C{--daytime},
C{--daytime-format}), C{time} (C{--time}) and C{sntp} (C{--sntp},
C{--sntp-stratum}, C{--sntp-refid}), each with C{--NAME-udp-rate}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.python.usage import UsageError

from netd.metrics import NO_DATAGRAM_METRICS, DatagramListenerMetrics
from netd.plugin import UDP_RATE_OPTION, DatagramServicePlugin


class _AnnouncingService(DatagramServicePlugin):
    """
    A service that sends one message per connection or datagram.
    """

    def announcer(self, options: Mapping[str, Any], reactor: Any) -> Any:
        """
        The L{netd.services.clock.server.Announcer} that says what to send.
        """
        raise NotImplementedError

    def makeFactory(self, options: Mapping[str, Any], reactor: Any) -> Any:
        from netd.services.clock.server import AnnouncingFactory

        return AnnouncingFactory(self.announcer(options, reactor))

    def makeDatagramProtocol(
        self,
        options: Mapping[str, Any],
        reactor: Any,
        metrics: DatagramListenerMetrics = NO_DATAGRAM_METRICS,
    ) -> Any:
        from netd.services.clock.server import AnnouncingDatagramProtocol

        protocol = AnnouncingDatagramProtocol(
            self.name,
            self.announcer(options, reactor),
            self.limiter(options, reactor),
        )
        protocol.metrics = metrics
        return protocol


class DaytimeService(_AnnouncingService):
    """
    Daytime (RFC 867) over streams and UDP.
    """

    name = "daytime"
    description = "the time as a line of text (RFC 867)"
    clientCommands = [
        ("daytime", "netd.services.clock.client.DaytimeCommand", "Daytime.")
    ]
    defaultEndpoints = (
        "tcp:50013:interface=127.0.0.1",
        "udp:50013:interface=127.0.0.1",
    )
    optParameters = [
        [
            "format",
            None,
            "ctime",
            "ctime: the server's local time as time.ctime() gives it (TZ "
            "honoured); iso: RFC 3339 UTC.",
        ],
        UDP_RATE_OPTION,
    ]

    def validate(self, options: Mapping[str, Any]) -> None:
        super().validate(options)
        from netd.services.clock.server import DAYTIME_FORMATS

        if options["format"] not in DAYTIME_FORMATS:
            raise UsageError(
                f"--daytime-format must be {' or '.join(DAYTIME_FORMATS)}, "
                f"not {options['format']!r}"
            )

    def announcer(self, options: Mapping[str, Any], reactor: Any) -> Any:
        from netd.services.clock.server import DaytimeAnnouncer

        return DaytimeAnnouncer(reactor, options["format"])


class TimeService(_AnnouncingService):
    """
    Time (RFC 868) over streams and UDP.
    """

    name = "time"
    description = "seconds since 1900 as 4 bytes (RFC 868, rdate's protocol)"
    clientCommands = [
        ("time", "netd.services.clock.client.TimeCommand", "RFC 868 time.")
    ]
    defaultEndpoints = (
        "tcp:50037:interface=127.0.0.1",
        "udp:50037:interface=127.0.0.1",
    )

    def announcer(self, options: Mapping[str, Any], reactor: Any) -> Any:
        from netd.services.clock.server import TimeAnnouncer

        return TimeAnnouncer(reactor)


class SNTPService(DatagramServicePlugin):
    """
    An SNTPv4 server (RFC 4330) of the system clock, over UDP only.
    """

    name = "sntp"
    description = "an SNTPv4 server of the system clock (RFC 4330; rdate -n, ntplib)"
    clientCommands = [
        ("sntp", "netd.services.clock.client.SNTPCommand", "An SNTP exchange.")
    ]
    defaultEndpoints = ("udp:50123:interface=127.0.0.1",)
    stream = False
    optParameters = [
        [
            "stratum",
            None,
            10,
            "Stratum announced, 1-15 (10: an undisciplined local clock; "
            "the host's NTP stratum + 1 when it is synchronised).",
            int,
        ],
        [
            "refid",
            None,
            "LOCL",
            "Reference id announced: 1-4 letters (stratum 1, LOCL) or the "
            "IPv4 address of the host's own time server.",
        ],
        UDP_RATE_OPTION,
    ]

    def validate(self, options: Mapping[str, Any]) -> None:
        super().validate(options)
        from netd.services.clock.server import parseReferenceId

        if not 1 <= options["stratum"] <= 15:
            raise UsageError(f"--sntp-stratum must be 1-15, not {options['stratum']!r}")
        try:
            parseReferenceId(options["refid"])
        except ValueError as error:
            raise UsageError(f"--sntp-refid: {error}") from None

    def makeDatagramProtocol(
        self,
        options: Mapping[str, Any],
        reactor: Any,
        metrics: DatagramListenerMetrics = NO_DATAGRAM_METRICS,
    ) -> Any:
        from netd.services.clock.server import SNTPServerProtocol, parseReferenceId

        protocol = SNTPServerProtocol(
            reactor,
            self.limiter(options, reactor),
            stratum=options["stratum"],
            referenceId=parseReferenceId(options["refid"]),
        )
        protocol.metrics = metrics
        return protocol


daytime = DaytimeService()
time = TimeService()
sntp = SNTPService()
