# -*- test-case-name: tests.test_reactor -*-
"""
netd's reactor: Twisted's epoll reactor, with a shorter way from a
readable connection to its protocol.

For every event, Twisted's epoll reactor calls the selectable's C{doRead}
inside C{log.callWithLogger}, which copies the legacy log context around
each call so that a legacy C{log.msg} made inside says which connection it
came from. That wrapping costs as much as the rest of a small echo's
dispatch: measured on echo ping-pong over 64 connections, it is ~40% of
netd's CPU per message. netd logs through C{twisted.logger}, whose events
never read that context, so here the commonest event (a connection
readable, and nothing else) calls C{doRead} directly; an error in it is
logged and handled inside the context exactly as Twisted does, and every
other event (listening ports, UDP, writes, hang-ups) takes Twisted's own
path unchanged.

C{twistd netd} runs on this reactor unless another is chosen
(C{twistd -r epoll netd}); C{trial --reactor=netd} tests on it.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import log
from twisted.python.failure import Failure


class NetdReactor(EPollReactor):
    """
    An L{EPollReactor} that dispatches a plain read event on a TCP
    connection without the legacy log context.
    """

    def doPoll(self, timeout: float | None) -> None:
        """
        Poll for events and dispatch them; see L{EPollReactor.doPoll}.
        """
        if timeout is None:
            timeout = -1  # Wait indefinitely.
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        readOnly = self._POLL_IN
        server = tcp.Server
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if event != readOnly or type(selectable) is not server:
                log.callWithLogger(
                    selectable, self._doReadOrWrite, selectable, fd, event
                )
                continue
            try:
                if selectable.fileno() == -1:
                    why: Any = _NO_FILEDESC
                else:
                    why = selectable.doRead()
            except BaseException:
                log.callWithLogger(selectable, self._readFailed, selectable, Failure())
                continue
            if why:
                log.callWithLogger(
                    selectable, self._disconnectSelectable, selectable, why, True
                )

    doIteration = doPoll

    def _readFailed(self, selectable: Any, failure: Failure) -> None:
        """
        What Twisted's own dispatch does when C{doRead} raises: log it, and
        disconnect the selectable with the error.
        """
        log.err(failure)
        self._disconnectSelectable(selectable, failure.value, True)


def install() -> None:
    """
    Install L{NetdReactor} as the global reactor.
    """
    from twisted.internet.main import installReactor

    installReactor(NetdReactor())


def installDefault() -> bool:
    """
    Install L{NetdReactor} unless a reactor is installed already (chosen
    with C{twistd -r NAME}, or imported).

    @return: whether it was installed.
    """
    if "twisted.internet.reactor" in sys.modules:
        return False
    install()
    return True
