"""
The qotd service's plugin: what netd needs to offer and build it.

Everything netd knows of qotd is here: its name, where it listens by
default, its options (C{--qotd-file}, and C{--qotd-udp-rate} from
L{DatagramServicePlugin}), and how they build its protocols. The protocol
module is imported only when netd builds the service, so that loading the
dropin stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.python.usage import UsageError

from netd.plugin import UDP_RATE_OPTION, DatagramServicePlugin


class QotdService(DatagramServicePlugin):
    """
    Quote of the Day (RFC 865) over TCP and UDP.
    """

    name = "qotd"
    description = "a quote of the day (RFC 865), from netd-qotd"
    defaultEndpoints = (
        "tcp:50017:interface=127.0.0.1",
        "udp:50017:interface=127.0.0.1",
    )
    enabledByDefault = False
    optParameters = [
        ["file", None, None, "Serve the quotes of this file (fortune format)."],
        UDP_RATE_OPTION,
    ]

    def validate(self, options: Mapping[str, Any]) -> None:
        """
        Read the quotes file now, so that a bad one stops start-up with
        one line.
        """
        super().validate(options)
        self._quotes(options)

    def _quotes(self, options: Mapping[str, Any]) -> Any:
        from netd_qotd.server import BUILTIN_QUOTES, Quotes, parseQuotes

        if options["file"] is None:
            return Quotes(BUILTIN_QUOTES)
        try:
            with open(options["file"], encoding="utf-8") as quotes:
                return Quotes(parseQuotes(quotes.read()))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            reason = getattr(error, "strerror", None) or error
            raise UsageError(f"--qotd-file {options['file']!r}: {reason}") from None

    def makeFactory(self, options: Mapping[str, Any], reactor: Any) -> Any:
        from netd_qotd.server import QuoteFactory

        return QuoteFactory(self._quotes(options))

    def makeDatagramProtocol(self, options: Mapping[str, Any], reactor: Any) -> Any:
        from netd_qotd.server import QuoteDatagramProtocol

        return QuoteDatagramProtocol(
            self._quotes(options), self.limiter(options, reactor)
        )


qotd = QotdService()
