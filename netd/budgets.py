# -*- test-case-name: tests.test_budgets -*-
"""
Budgets no one client may exceed, whatever service it floods: the share of
a service's connection slots one client address may hold, the descriptors
netd may use (L{raiseDescriptorLimit}, L{DescriptorBudget}), and the listen
backlog of stream listeners (L{withBacklog}).

The descriptor budget is what keeps a flood on one service from locking
out the others. Every connection costs a descriptor, and the soft
C{RLIMIT_NOFILE} caps them for the whole process; once it is reached,
C{accept} fails for every listener alike. So netd sets aside a reserve
(L{RESERVE} plus one per listener plus what services declare they need
beyond their connections, such as getfile's open files), and splits the
rest between the stream services: each is guaranteed an equal part of half
of it, and the other half is shared, first come first served. A service may
take a connection beyond its guaranteed part only while the shared half
has room; so however many connections one service holds, every other
still has its guaranteed part.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger

from netd.listeners import StartupError, isDatagramEndpoint

#: Descriptors set aside for netd itself: standard streams, the log file,
#: the reactor's own (epoll, waker pipe), the thread pool, a TLS
#: certificate read on reload, a config file read on reload...
RESERVE = 64

#: The fewest connections each stream service must be guaranteed, or netd
#: will not start.
MIN_GUARANTEED = 8

#: The smallest share of a service's slots one client address may hold by
#: default (see L{perSourceShare}).
MIN_PER_SOURCE = 16

#: The listen backlog used when the kernel's C{somaxconn} cannot be read.
FALLBACK_BACKLOG = 4096


def perSourceShare(maxConnections: int) -> int:
    """
    The connections one client address may hold at once to a service by
    default (C{--max-per-source} not given): a tenth of the service's
    C{--max-connections}, and at least L{MIN_PER_SOURCE} (but never more
    than the service's limit); no limit when the service has none.
    """
    if maxConnections <= 0:
        return 0
    return min(maxConnections, max(MIN_PER_SOURCE, maxConnections // 10))


#: Where each stream endpoint type takes its listen backlog among its
#: positional arguments (counting from 1, after the type):
#: C{tcp:PORT:INTERFACE:BACKLOG}, C{tcp6:PORT:BACKLOG:INTERFACE},
#: C{ssl:PORT:KEY:CERT:METHOD:INTERFACE:BACKLOG}, C{unix:PATH:MODE:BACKLOG};
#: netd's C{tls:} takes it by keyword only.
_BACKLOG_POSITION = {"tcp": 3, "tcp6": 2, "ssl": 6, "unix": 3, "tls": 99}


def listenBacklog() -> int:
    """
    The listen backlog netd asks for: the kernel's C{somaxconn} (the most
    Linux grants; it silently cuts a larger one down to it), or
    L{FALLBACK_BACKLOG} where that cannot be read.
    """
    try:
        with open("/proc/sys/net/core/somaxconn") as stream:
            value = int(stream.read().strip())
    except (OSError, ValueError):
        return FALLBACK_BACKLOG
    return value if value > 0 else FALLBACK_BACKLOG


def withBacklog(description: str, backlog: int) -> str:
    """
    An endpoint description that listens with C{backlog}, unless it sets a
    backlog of its own (C{backlog=N}, or in its place among the positional
    arguments) or is not a type that listens itself (C{systemd:} sockets
    come listening, with the unit's C{Backlog=}).

    Twisted's default backlog is 50: a burst of connections beyond it leaves
    clients that believe they are connected while netd never accepted them.
    """
    from netd.listeners import _splitEndpoint

    kind, *arguments = _splitEndpoint(description)
    position = _BACKLOG_POSITION.get(kind.lower())
    if position is None:
        return description
    keywords = [argument.split("=", 1)[0] for argument in arguments if "=" in argument]
    positional = [argument for argument in arguments if "=" not in argument]
    if "backlog" in keywords or len(positional) >= position:
        return description
    if kind.lower() == "tls" and "privateKey" not in keywords:
        return description  # Twisted's own tls:DIRECTORY form
    return f"{description}:backlog={backlog}"


def raiseDescriptorLimit() -> tuple[int, int, str | None]:
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard limit, as any process may.

    @return: the soft limit before and after, and why it could not be
        raised (L{None} when it was, or needed not be).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, soft, None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as error:
        return soft, soft, str(error)
    return soft, target, None


class DescriptorBudget:
    """
    The descriptors netd may spend on connections, split between its
    stream services so that a flood on one never locks out the others.

    Of the C{limit}, C{reserve} are set aside; the rest are for
    connections. Each service is guaranteed an equal part of half of them
    (or its own C{--max-connections}, when lower); a service may open a
    connection beyond its guaranteed part only while the connections in
    use and the guaranteed parts still unused together leave room. So
    one service may hold at most the whole less the others' guaranteed
    parts (L{most}).

    @ivar limit: the soft C{RLIMIT_NOFILE}.
    @ivar reserve: descriptors kept for netd itself, its listeners and
        what services open beyond their connections.
    @ivar available: C{limit - reserve}: for connections.
    @ivar guaranteed: each service's guaranteed part.
    @ivar active: each service's connections open now.
    """

    def __init__(self, limit: int, reserve: int, services: Mapping[str, int]) -> None:
        """
        @param services: each stream service's C{--max-connections} (0 for
            no limit).
        """
        self.limit = limit
        self.reserve = reserve
        self.available = max(0, limit - reserve)
        self.maxConnections = dict(services)
        part = self.available // (2 * len(services)) if services else 0
        self.guaranteed = {
            name: min(part, most) if most > 0 else part
            for name, most in services.items()
        }
        self.active = dict.fromkeys(services, 0)
        self._committed = sum(self.guaranteed.values())

    def most(self, name: str) -> int:
        """
        The most connections service C{name} may hold while the others hold
        none beyond their guaranteed parts.
        """
        others = sum(g for other, g in self.guaranteed.items() if other != name)
        return self.available - others

    def fits(self) -> bool:
        """
        Whether every service may reach its C{--max-connections} at once
        within the budget (then the budget never refuses anyone).
        """
        limits = self.maxConnections.values()
        return all(most > 0 for most in limits) and sum(limits) <= self.available

    def check(self, minimum: int = MIN_GUARANTEED) -> str | None:
        """
        What is wrong with the budget: L{None}, or a line saying why the
        services cannot each be guaranteed C{minimum} connections.
        """
        wanted = minimum * len(self.guaranteed)
        if self.available >= 2 * wanted:
            return None
        return (
            f"the descriptor limit (RLIMIT_NOFILE) is {self.limit}: with "
            f"{self.reserve} set aside for netd and its listeners, "
            f"{len(self.guaranteed)} services cannot each be guaranteed "
            f"{minimum} connections (that needs {self.reserve + 2 * wanted}); "
            "raise it (ulimit -n, LimitNOFILE=)"
        )

    def describe(self) -> str:
        """
        One line: the figures, and whether the connection limits fit.
        """
        line = (
            f"{self.available} of {self.limit} descriptors for connections "
            f"({self.reserve} set aside)"
        )
        if self.fits():
            return line + "; every service's --max-connections fits"
        parts = ", ".join(
            f"{name} {self.guaranteed[name]}-{self.most(name)}"
            for name in self.guaranteed
        )
        return (
            line + "; --max-connections do not all fit, so each service is "
            f"guaranteed and may hold (others idle): {parts}"
        )

    def refusal(self, name: str) -> str | None:
        """
        Why service C{name} may not open one more connection now, or
        L{None} when it may.
        """
        active = self.active.get(name)
        if active is None or active < self.guaranteed[name]:
            return None
        if self._committed < self.available:
            return None
        return (
            f"descriptor budget spent ({self.available} connections across "
            "services; the rest are kept for the other services)"
        )

    def opened(self, name: str) -> None:
        """
        Service C{name} opened a connection.
        """
        active = self.active.get(name)
        if active is None:
            return
        if active >= self.guaranteed[name]:
            self._committed += 1
        self.active[name] = active + 1

    def closed(self, name: str) -> None:
        """
        One of service C{name}'s connections ended.
        """
        active = self.active.get(name)
        if not active:
            return
        active -= 1
        self.active[name] = active
        if active >= self.guaranteed[name]:
            self._committed -= 1


def descriptorBudget(
    limit: int,
    listeners: int,
    extra: int,
    services: Mapping[str, int],
) -> DescriptorBudget:
    """
    The budget for a netd with C{listeners} listeners whose services open
    up to C{extra} descriptors beyond their connections (getfile's files).
    """
    return DescriptorBudget(limit, RESERVE + listeners + extra, services)


def planDescriptors(config: Any, raiseLimit: bool) -> DescriptorBudget:
    """
    Raise the descriptor limit (when C{raiseLimit}) and split it between
    the stream services (L{netd.budgets.DescriptorBudget}); log the figures
    in one line, a warning when the connection limits do not all fit.

    @param config: the parsed L{netd.tap.Options}.
    @raise StartupError: when the limit is too low for every service to be
        guaranteed a few connections.
    """
    if raiseLimit:
        before, limit, problem = raiseDescriptorLimit()
    else:
        limit = before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        problem = None
    services = config["services"]
    streams = {
        service.name: config["policies"][service.name].maxConnections
        for service in services
        if not all(map(isDatagramEndpoint, config["endpoints"][service.name]))
    }
    extra = 0
    for service in services:
        extraDescriptors = getattr(service, "extraDescriptors", None)
        if extraDescriptors is not None:
            extra += extraDescriptors(config["serviceOptions"][service.name])
    listeners = sum(len(config["endpoints"][service.name]) for service in services)
    budget = descriptorBudget(limit, listeners, extra, streams)
    error = budget.check()
    if error is not None:
        raise StartupError(error)
    if problem is not None:
        raised = f"soft limit {limit} (not raised: {problem})"
    elif before != limit:
        raised = f"soft limit raised from {before} to {limit}"
    else:
        raised = f"limit {limit}"
    emit = _log.info if budget.fits() else _log.warn
    emit("descriptors: {raised}; {budget}", raised=raised, budget=budget.describe())
    return budget


_log = Logger()
