# -*- test-case-name: tests.services.discard.test_discard -*-
"""
The discard service's plugin: C{--discard}, C{--discard-read-rate}. Off
unless named in C{--services}.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from twisted.python.usage import UsageError

from netd.plugin import ServicePlugin


class DiscardService(ServicePlugin):
    """
    Discard (RFC 863) over streams and UDP.
    """

    name = "discard"
    description = "read and drop everything (RFC 863); off unless named in --services"
    enabledByDefault = False
    defaultEndpoints = (
        "tcp:50009:interface=127.0.0.1",
        "udp:50009:interface=127.0.0.1",
    )
    stream = True
    datagram = True
    optParameters = [
        [
            "read-rate",
            None,
            1 << 20,
            "Bytes a second read from any one connection; a faster sender "
            "is not read from until it is back under.",
            int,
        ],
    ]

    def validate(self, options: Mapping[str, Any]) -> None:
        if options["read-rate"] <= 0:
            raise UsageError(
                f"--discard-read-rate must be positive, not {options['read-rate']!r}"
            )

    def makeFactory(self, options: Mapping[str, Any], reactor: Any) -> Any:
        from netd.services.discard.server import DiscardFactory

        return DiscardFactory(reactor, options["read-rate"])

    def makeDatagramProtocol(self, options: Mapping[str, Any], reactor: Any) -> Any:
        from netd.services.discard.server import DiscardDatagramProtocol

        return DiscardDatagramProtocol()

    def reconfigure(
        self,
        options: Mapping[str, Any],
        changed: Collection[str],
        factory: Any,
        datagramProtocols: Sequence[Any],
    ) -> Collection[str]:
        """
        The read rate applies live, to open connections too.
        """
        if factory is not None:
            factory.readRate = options["read-rate"]
        return [name for name in changed if name == "read-rate"]


discard = DiscardService()
