# -*- test-case-name: tests.test_twistedprivate -*-
"""
Every private name of Twisted that netd uses, each in one place.

netd keeps to Twisted's public API except where that API has no way to do
what netd needs; each such use is wrapped here, with the reason, and
C{tests/test_twistedprivate.py} checks each one against the installed
Twisted (that the name is still there, of the expected kind, and behaves as
netd relies on), so that a Twisted release that changes one fails the suite
by name instead of breaking netd at run time. The versions CI tested are in
C{constraints.txt}; C{setup.cfg} bounds the range.

Two hot paths read private names inline, the tests named checking each: a
UDP port's C{_connectedAddr} in L{netd.datagram}
(C{tests/test_twistedprivate.py}), and the epoll reactor's dispatch
internals in L{netd.reactor} (C{tests/test_reactor.py} runs netd's reactor
over real connections). The eager writer (L{netd.wrappers.writeEagerly})
calls L{hasQueuedWrites}, at about 16 ns a write.

Nothing here is imported eagerly by netd's dropin: each accessor imports
what it wraps when called, except the PROXY header parsers, which are
re-exported for L{netd.proxyheader}.
"""

from __future__ import annotations

from typing import Any

# The PROXY protocol parsers. Twisted's public haproxy API is the
# haproxy: endpoint alone, whose wrapper connects the service's protocol
# before the header has said who the client is (see netd.proxyheader); the
# parsers are the part netd reuses rather than re-implementing them.
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

__all__ = [
    "InvalidProxyHeader",
    "V1Parser",
    "V2Parser",
    "hasQueuedWrites",
    "systemdListenFDs",
    "twistedTLSParser",
]


def hasQueuedWrites(transport: Any) -> bool:
    """
    Whether a file-descriptor transport (a C{tcp.Server} or C{tcp.Client})
    still holds bytes it has not written to its socket.

    Twisted's transports expose no such query; netd's eager writer
    (L{netd.wrappers}) must not send past bytes already queued. The queue is
    L{twisted.internet.abstract.FileDescriptor}'s C{_tempDataBuffer} (writes
    since the last C{doWrite}), and C{dataBuffer} from C{offset} on (what a
    C{doWrite} could not send yet).

    @param transport: a L{twisted.internet.abstract.FileDescriptor}.
    """
    return bool(transport._tempDataBuffer) or len(transport.dataBuffer) > (
        transport.offset
    )


def systemdListenFDs() -> Any:
    """
    The record of sockets handed over by systemd (C{LISTEN_FDS},
    C{LISTEN_FDNAMES}) that Twisted's C{systemd:} endpoint parser uses.

    Twisted reads the environment once, when C{twisted.internet.endpoints}
    is imported, into C{_SystemdParser._sddaemon}, and removes the variables
    from the environment (as C{sd_listen_fds(3)} does): a second
    L{ListenFDs.fromEnvironment <twisted.python.systemd.ListenFDs>} would
    find nothing. netd's C{systemd-udp:} endpoints and its messages about
    inherited names must read the very same record.

    @return: a L{twisted.python.systemd.ListenFDs}.
    """
    from twisted.internet.endpoints import _SystemdParser

    return _SystemdParser._sddaemon


def twistedTLSParser() -> Any:
    """
    The class of Twisted's own C{tls:} server endpoint parser
    (C{tls:DIRECTORY:port=N}, Twisted 24.10 and later), or L{None} on older
    Twisted.

    Twisted registers it as a plugin under the same prefix as netd's
    C{tls:}; netd's parser hands Twisted's form to it, so that either
    parser serves either form, whichever one Twisted picks.
    """
    from twisted.internet import endpoints

    return getattr(endpoints, "_TLSServerEndpointParser", None)
