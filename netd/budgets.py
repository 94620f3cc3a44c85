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
