# -*- test-case-name: tests.test_tap -*-
"""
Stream endpoints from their descriptions, as netd listens on them: Twisted's
C{serverFromString}, with netd's own C{tls:}, C{ssl:} and C{haproxy:}
handling, a burst-sized listen backlog, and one clear error for each way a
description can be wrong.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString

from netd.budgets import withBacklog
from netd.listeners import StartupError
from netd.systemd import familyMismatch, inheritedNames


def streamEndpoint(
    serviceName: str, description: str, reactor: Any, backlog: int = 0
) -> Any:
    """
    Build a stream endpoint; C{haproxy:ENDPOINT} gets netd's PROXY header
    reader (L{netd.proxyheader}), which hands the service the real client,
    C{tls:} is always netd's (Twisted registers a C{tls:} of its own), and
    C{ssl:} takes a client's C{close_notify} as a half-close
    (L{netd.tlshalfclose}), as C{tls:} does.

    @param backlog: the listen backlog for endpoints that do not set one
        (L{netd.budgets.withBacklog}); 0 leaves them Twisted's.
    """
    kind, _, inner = description.partition(":")
    kind = kind.lower()
    listening = withBacklog(description, backlog) if backlog else description
    try:
        if kind == "haproxy":
            from netd.proxyheader import ProxiedEndpoint

            return ProxiedEndpoint(
                streamEndpoint(serviceName, inner, reactor, backlog), reactor
            )
        if kind == "tls":
            from netd.tls import parseTLSEndpoint

            return parseTLSEndpoint(reactor, listening)
        if kind == "ssl":
            from netd.tlshalfclose import HalfCloseableTLSReactor

            endpoint = serverFromString(HalfCloseableTLSReactor(reactor), listening)
        else:
            endpoint = serverFromString(reactor, listening)
    except StartupError:
        raise
    except Exception as error:
        if kind == "systemd" and isinstance(error, KeyError | IndexError):
            raise StartupError(
                f"{serviceName}: no inherited socket for {description!r} "
                f"(inherited: {inheritedNames()})"
            ) from error
        raise StartupError(
            f"{serviceName}: bad endpoint {description!r}: {error}"
        ) from error
    if isinstance(endpoint, AdoptedStreamServerEndpoint):
        problem = familyMismatch(endpoint.fileno, endpoint.addressFamily)
        if problem is not None:
            raise StartupError(f"{serviceName}: {description!r}: {problem}")
    return endpoint
