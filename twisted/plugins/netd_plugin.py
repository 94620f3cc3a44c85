"""
netd's dropin: the C{twistd netd} service maker and netd's own services.

Nothing heavy is imported here: C{ServiceMaker} imports C{netd.tap} only
when netd runs, and each service imports its protocols only when built.
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

from netd.services.chargen.plugin import chargen
from netd.services.clock.plugin import daytime, sntp, time
from netd.services.discard.plugin import discard
from netd.services.echo.plugin import echo
from netd.services.getfile.plugin import getfile
from netd.services.objects.plugin import objects
from netd.tls import tlsServerParser

netd = ServiceMaker(
    "netd",
    "netd.tap",
    "Echo, getfile, clock and objects services on any endpoints",
    "netd",
)

#: C{twistd -r netd}, C{trial --reactor=netd}: see L{netd.reactor}.
netdReactor = Reactor(
    "netd", "netd.reactor", "epoll, with a shorter read dispatch (netd's default)"
)

__all__ = [
    "netd",
    "netdReactor",
    "echo",
    "getfile",
    "daytime",
    "time",
    "sntp",
    "objects",
    "discard",
    "chargen",
    "tlsServerParser",
]
