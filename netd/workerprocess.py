# -*- test-case-name: tests.test_workers -*-
"""
The parent's pieces of C{--workers N} (L{netd.workers.Supervisor}): its end
of each worker process (L{WorkerProcess}), and the listening sockets it
holds for the workers without ever accepting on them (L{HoldingFactory},
L{HoldingDatagrams}, L{holdSocket}).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol, Factory, ProcessProtocol
from twisted.internet.protocol import Protocol as _Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from netd.worker import STATUS_FD


def logsToStdout(twistdOptions: Mapping[str, Any] | None) -> bool:
    """
    Whether twistd, run with C{twistdOptions}, logs to its stdout.
    """
    if twistdOptions is None:
        return False
    if twistdOptions.get("logger") or twistdOptions.get("syslog"):
        return False
    logfile = twistdOptions.get("logfile")
    return logfile == "-" or (bool(twistdOptions.get("nodaemon")) and not logfile)


def logLevel(name: Any) -> LogLevel:
    """
    The log level a worker's event names, info when it names none.
    """
    try:
        return LogLevel.levelWithName(str(name))
    except Exception:
        return LogLevel.info


class WorkerProcess(ProcessProtocol):
    """
    The parent's end of one worker process: its log, its state, its end,
    reported to its L{netd.workers.Supervisor}.
    """

    def __init__(self, supervisor: Any, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.system = f"worker {index}"
        self.started = supervisor.reactor.seconds()
        self.ready = False
        self.reloading = False
        self.status = ""
        self.ended: Deferred[None] = Deferred()
        self.pid: int | None = None
        self._reaper: LoopingCall | None = None
        self._buffers: dict[int, bytes] = {1: b"", 2: b"", STATUS_FD: b""}

    def makeConnection(self, transport: Any) -> None:
        self.pid = transport.pid
        super().makeConnection(transport)

    def signal(self, name: str) -> None:
        if self.transport is not None and self.transport.pid is not None:
            try:
                self.transport.signalProcess(name)
            except Exception:
                pass

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._buffers.get(childFD, b"") + data
        *complete, self._buffers[childFD] = buffered.split(b"\n")
        for record in complete:
            if record.strip():
                self._received(childFD, record)

    def _received(self, childFD: int, record: bytes) -> None:
        if childFD == 1:
            self.supervisor.relayEvent(self, record)
        elif childFD == STATUS_FD:
            try:
                fields = json.loads(record)
            except ValueError:
                return
            self.supervisor.workerSaid(self, fields)
        else:
            self.supervisor.relayLine(self, record)

    def childConnectionLost(self, childFD: int) -> None:
        """
        The worker closed its status pipe: it is ending. Look for its end
        until it is found, rather than trust the reactor to hear every
        C{SIGCHLD} (asyncio's reactor on uvloop misses some).
        """
        if childFD == STATUS_FD and not self.ended.called:
            from twisted.internet.process import reapAllProcesses

            self._reaper = LoopingCall(reapAllProcesses)
            self._reaper.clock = self.supervisor.reactor
            self._reaper.start(0.1, now=False)

    def processEnded(self, reason: Failure) -> None:
        if self._reaper is not None and self._reaper.running:
            self._reaper.stop()
        for childFD, rest in self._buffers.items():
            if rest.strip():
                self._received(childFD, rest)
        self._buffers.clear()
        self.supervisor.workerEnded(self, reason)
        self.ended.callback(None)


class _Idle(_Protocol):
    """
    Never built: the parent does not accept on the sockets it holds.
    """


class HoldingFactory(Factory):
    """
    The factory of a socket the parent holds for its workers.
    """

    noisy = False
    protocol = _Idle

    def __init__(self, serviceName: str) -> None:
        self.serviceName = serviceName

    def logPrefix(self) -> str:
        return f"{self.serviceName} (for the workers)"


class HoldingDatagrams(DatagramProtocol):
    """
    The protocol of a UDP socket the parent holds for its workers.
    """

    noisy = False


def holdSocket(port: Any) -> None:
    """
    Keep a listening socket for the workers: never accept on it, and when
    closing it, only close it (as Twisted does for adopted sockets): a
    C{shutdown()} would stop every worker's copy from accepting.
    """
    port.stopReading()
    if hasattr(port, "_shouldShutdown"):
        port._shouldShutdown = False
