# -*- test-case-name: tests.services.chargen.test_chargen -*-
"""
The chargen service's plugin: C{--chargen}, C{--chargen-udp-rate}. Off
unless named in C{--services}.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from netd.plugin import DatagramServicePlugin


class ChargenService(DatagramServicePlugin):
    """
    The character generator (RFC 864) over streams and UDP.
    """

    name = "chargen"
    description = (
        "the RFC 864 character pattern (UDP replies no longer than the request); "
        "off unless named in --services"
    )
    enabledByDefault = False
    defaultEndpoints = (
        "tcp:50019:interface=127.0.0.1",
        "udp:50019:interface=127.0.0.1",
    )
    stream = True

    def makeFactory(self, options: Mapping[str, Any], reactor: Any) -> Any:
        from netd.services.chargen.server import ChargenFactory

        return ChargenFactory()

    def makeDatagramProtocol(self, options: Mapping[str, Any], reactor: Any) -> Any:
        from netd.services.chargen.server import ChargenDatagramProtocol

        return ChargenDatagramProtocol(self.limiter(options, reactor))

    def reconfigure(
        self,
        options: Mapping[str, Any],
        changed: Collection[str],
        factory: Any,
        datagramProtocols: Sequence[Any],
    ) -> Collection[str]:
        """
        The UDP rate applies live, from the next datagram.
        """
        for protocol in datagramProtocols:
            protocol.limiter.setRate(options["udp-rate"])
        return [name for name in changed if name == "udp-rate"]


chargen = ChargenService()
