# -*- test-case-name: tests.test_workers -*-
"""
Every core: C{--workers N} runs N identical worker processes on the same
listening sockets, under one supervising parent.

The parent (L{Supervisor}) opens every listening socket itself: C{tcp:},
C{udp:}, C{unix:}, the TCP under C{tls:}/C{ssl:}/C{haproxy:}, and the
sockets systemd handed over. It never accepts on them; it hands them to
each worker as inherited descriptors and runs each worker as
C{twistd --nodaemon netd ARGUMENTS} again, with C{$NETD_WORKER} saying
which descriptor is which listener. A worker (L{netd.worker.Worker})
builds netd exactly as a single process would, but adopts each socket
instead of listening, and wraps it as its endpoint says (its own TLS
context, its own PROXY header reader).

The parent keeps one log, one pidfile and the service manager's view:

    - a worker's log events are tagged C{[worker N]} and written to the
      parent's stdout by the worker itself when the parent logs there, or
      sent to the parent as JSON, which logs them, when it logs elsewhere
      (L{netd.worker.WorkerLogObserver});
    - a worker tells the parent over a pipe (descriptor 3) what it would
      tell systemd (C{READY=1}...); the parent says C{READY=1} once every
      worker listens, and again once every worker has reloaded;
    - C{SIGHUP} and C{SIGTERM} are forwarded to every worker; the parent
      ends once every worker has ended (each finishing what it has in
      flight within its C{--grace});
    - a worker that ends by itself is restarted, after a delay that grows
      while it keeps failing soon after starting;
    - a worker whose parent is gone (its stdin pipe closes) stops.

Limits that hold for the whole daemon are shared out: each worker gets
C{--max-connections} and every service's C{udp-rate} divided by N, rounded
up; C{--max-per-source} is kept whole (L{netd.worker.shareLimits}).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from netd.config import configValue
from netd.listeners import (
    DatagramListener,
    StreamListener,
    describeAddress,
    isDatagramEndpoint,
)
from netd.systemd import Notifier
from netd.worker import FIRST_LISTENER_FD, STATUS_FD, WORKER_ENVIRONMENT
from netd.workerprocess import (
    HoldingDatagrams,
    HoldingFactory,
    WorkerProcess,
    holdSocket,
    logLevel,
    logsToStdout,
)

#: Seconds a worker must have run for its end to count as a crash rather
#: than a failure to start (which doubles the delay before the next try).
STABLE_SECONDS = 10.0
#: The first and the longest delay before restarting a failing worker.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: Seconds beyond the grace period that the parent waits for a stopping
#: worker before it kills it.
KILL_MARGIN = 10.0
_ENVIRONMENT_DROPPED = ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def resolveWorkers(value: int | None, fileConfig: Mapping[str, Any]) -> int:
    """
    The C{--workers} option: the command line, else the config file's
    C{workers}, else 1.

    @raise UsageError: when it is not a whole number from 1 up.
    """
    if value is None:
        value = (
            configValue("workers", fileConfig["workers"], int)
            if "workers" in fileConfig
            else 1
        )
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"--workers must be a whole number from 1 up, not {value!r}")
    return value


class Supervisor(MultiService):
    """
    The parent of C{--workers N}: it holds the listening sockets, runs and
    restarts the workers, and speaks for them to the service manager.

    @ivar workers: the running worker of each slot (from 1), or L{None}
        while a slot waits to be restarted.
    """

    log = Logger()

    def __init__(
        self,
        config: Any,
        reactor: Any,
        streamEndpoint: Callable[..., Any],
        notifier: Notifier | None = None,
        handleSignals: bool = True,
        command: list[str] | None = None,
    ) -> None:
        """
        @param config: the parsed L{netd.tap.Options}.
        @param streamEndpoint: builds a stream endpoint from its description.
        @param command: the worker's command line up to C{netd}; C{twistd}
            run by this Python by default.
        """
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.count = config["workers"]
        self.grace = config["grace"]
        self.notifier = notifier if notifier is not None else Notifier(None)
        self.handleSignals = handleSignals
        self.command = command if command is not None else self._twistd(config)
        self.relayLogs = not logsToStdout(getattr(config, "parent", None))
        self.workers: dict[int, WorkerProcess | None] = dict.fromkeys(
            range(1, self.count + 1)
        )
        self.status = "starting"
        self.stopping = False
        self._announced = False
        self._reloadFailed: str | None = None
        self._backoff: dict[int, float] = {}
        self._restarts: dict[int, Any] = {}
        self._previousHangUp: Any = None
        from netd.budgets import listenBacklog

        backlog = listenBacklog()
        for service in config["services"]:
            for description in config["endpoints"][service.name]:
                if isDatagramEndpoint(description):
                    listener: Any = DatagramListener(
                        service.name, description, reactor, HoldingDatagrams()
                    )
                else:
                    listener = StreamListener(
                        service.name,
                        description,
                        streamEndpoint(service.name, description, reactor, backlog),
                        HoldingFactory(service.name),
                    )
                listener.setServiceParent(self)

    def _twistd(self, config: Any) -> list[str]:
        """
        The worker's command line up to C{netd}: twistd, run by this
        Python, on the reactor the parent runs (C{--reactor}, or asyncio's
        on a uvloop loop, which no C{--reactor} name selects).
        """
        start = "from twisted.scripts.twistd import run; run()"
        loop = getattr(self.reactor, "_asyncioEventloop", None)
        uvloop = type(loop).__module__.split(".")[0] == "uvloop"
        if uvloop:
            start = (
                "import uvloop; from twisted.internet import asyncioreactor; "
                "asyncioreactor.install(uvloop.new_event_loop()); " + start
            )
        command = [sys.executable, "-c", start, "--nodaemon", "--pidfile="]
        command.append("--logger=netd.worker.workerLogObserver")
        twistdOptions = getattr(config, "parent", None)
        reactorName = twistdOptions.get("reactor") if twistdOptions else None
        if reactorName and not uvloop:
            command.append(f"--reactor={reactorName}")
        return [*command, "netd"]

    # Starting

    def privilegedStartService(self) -> None:
        """
        Open every listening socket (before twistd drops privileges), and
        leave accepting to the workers.
        """
        super().privilegedStartService()
        for listener in self:
            listener.whenListening().addCallback(holdSocket)

    def startService(self) -> None:
        """
        Start the workers once the reactor runs.
        """
        super().startService()
        if self.handleSignals:
            self._previousHangUp = signal.signal(signal.SIGHUP, self._hangUp)
        self.reactor.callWhenRunning(self._startAll)

    def _startAll(self) -> None:
        self.log.info(
            "starting {count} workers on {listeners} listeners",
            count=self.count,
            listeners=len(list(self)),
        )
        for index in self.workers:
            self._spawn(index)

    def _handover(self) -> tuple[list[dict[str, Any]], dict[int, Any]]:
        listeners, childFDs = [], {}
        for offset, listener in enumerate(self):
            fd = listener.port.fileno()
            with socket.socket(fileno=os.dup(fd)) as probe:
                family = probe.family
            childFD = FIRST_LISTENER_FD + offset
            childFDs[childFD] = fd
            listeners.append(
                {
                    "service": listener.serviceName,
                    "endpoint": listener.description,
                    "fd": childFD,
                    "family": int(family),
                }
            )
        return listeners, childFDs

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self.stopping:
            return
        listeners, childFDs = self._handover()
        environment = {
            key: value
            for key, value in os.environ.items()
            if key not in _ENVIRONMENT_DROPPED
        }
        environment[WORKER_ENVIRONMENT] = json.dumps(
            {
                "index": index,
                "workers": self.count,
                "relay": self.relayLogs,
                "listeners": listeners,
            }
        )
        worker = WorkerProcess(self, index)
        self.workers[index] = worker
        self.reactor.spawnProcess(
            worker,
            self.command[0],
            [*self.command, *self.config.argv],
            env=environment,
            childFDs={
                0: "w",
                1: "r" if self.relayLogs else 1,
                2: "r",
                STATUS_FD: "r",
                **childFDs,
            },
        )
        self.log.info("worker {index} started: pid {pid}", index=index, pid=worker.pid)

    # What workers say

    def relayEvent(self, worker: WorkerProcess, record: bytes) -> None:
        """
        Log an event a worker logged (see L{WorkerLogObserver}) as one of
        the parent's, tagged with the worker.
        """
        try:
            event = json.loads(record)
            text = event.pop("log_text")
        except (ValueError, KeyError, AttributeError, TypeError):
            self.relayLine(worker, record)
            return
        event["log_level"] = logLevel(event.get("log_level"))
        event["log_format"] = "{log_text}"
        event["log_text"] = text
        event["log_system"] = worker.system
        event["netd_worker"] = worker.index
        self.log.observer(event)

    def relayLine(self, worker: WorkerProcess, line: bytes) -> None:
        """
        Log a line a worker wrote to stderr (or that was not an event).
        """
        self.log.emit(
            LogLevel.warn,
            "{line}",
            line=line.decode("utf-8", "replace").rstrip(),
            log_system=worker.system,
            netd_worker=worker.index,
        )

    def workerSaid(self, worker: WorkerProcess, fields: Mapping[str, str]) -> None:
        """
        A worker's readiness message (what it would tell systemd).
        """
        if fields.get("READY") != "1":
            return
        worker.status = fields.get("STATUS", "")
        if not worker.ready and self._announced and not self.stopping:
            # A restarted worker: the service manager hears that all is well.
            self.notifier.notify(STATUS=self.status)
        worker.ready = True
        if worker.reloading:
            worker.reloading = False
            if worker.status.startswith("reload failed"):
                self._reloadFailed = worker.status
        self._checkReady()

    def _checkReady(self) -> None:
        workers = [worker for worker in self.workers.values() if worker is not None]
        if self.stopping or not workers:
            return
        if not self._announced:
            if len(workers) == self.count and all(w.ready for w in workers):
                self._announced = True
                self.status = "listening on " + ", ".join(
                    f"{listener.serviceName} {describeAddress(listener.port.getHost())}"
                    for listener in self
                    if listener.port is not None
                )
                self.status += f" with {self.count} workers"
                self.log.info("netd ready: {status}", status=self.status)
                self.notifier.ready(self.status)
            return
        if self._reloading and not any(w.reloading for w in workers):
            self._reloading = False
            if self._reloadFailed is not None:
                self.notifier.ready(f"{self._reloadFailed} (a worker)")
            else:
                self.notifier.ready(self.status)
            self.log.info("reload done in every worker")

    _reloading = False

    def workerEnded(self, worker: WorkerProcess, reason: Failure) -> None:
        """
        A worker ended: expected while stopping, else restart it.
        """
        if self.workers.get(worker.index) is worker:
            self.workers[worker.index] = None
        value = reason.value
        how = (
            "exited cleanly"
            if reason.check(ProcessDone)
            else f"ended by signal {value.signal}"
            if getattr(value, "signal", None)
            else f"exited with status {getattr(value, 'exitCode', '?')}"
        )
        if self.stopping:
            self.log.info("worker {index} {how}", index=worker.index, how=how)
            return
        lived = self.reactor.seconds() - worker.started
        if lived >= STABLE_SECONDS:
            delay = 0.0
        else:
            delay = min(
                MAX_BACKOFF, self._backoff.get(worker.index, 0.0) * 2 or FIRST_BACKOFF
            )
        self._backoff[worker.index] = delay
        self.log.warn(
            "worker {index} (pid {pid}) {how}; restarting it in {delay}s",
            index=worker.index,
            pid=worker.pid,
            how=how,
            delay=delay,
        )
        self._restarts[worker.index] = self.reactor.callLater(
            delay, self._spawn, worker.index
        )
        if self._announced:
            self.notifier.notify(
                STATUS=f"worker {worker.index} {how}, restarting; {self.status}"
            )
        self._checkReady()

    # Reload

    def _hangUp(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """
        Have every worker reload (each re-reads the configuration); say
        C{READY=1} again once they all have.
        """
        self.notifier.reloading()
        # One still starting reads the configuration anew anyway, and has
        # no handler for SIGHUP yet (which would end it).
        workers = [
            worker
            for worker in self.workers.values()
            if worker is not None and worker.ready
        ]
        self.log.info(
            "reloading the configuration in {count} workers", count=len(workers)
        )
        try:
            fresh = self.config.reread()
        except (UsageError, SystemExit):
            pass
        else:
            if fresh["workers"] != self.count:
                self.log.warn("reload: workers changed; it needs a restart")
            self.grace = fresh["grace"]
        self._reloading = True
        self._reloadFailed = None
        for worker in workers:
            worker.reloading = True
            worker.signal("HUP")
        self._checkReady()

    # Stopping

    def stopService(self) -> Deferred[None]:
        """
        Stop every worker gracefully and fire once they all ended (killing
        those still running past their grace period).
        """
        self.stopping = True
        if self._previousHangUp is not None:
            signal.signal(signal.SIGHUP, self._previousHangUp)
            self._previousHangUp = None
        for timer in self._restarts.values():
            if timer.active():
                timer.cancel()
        self._restarts.clear()
        running = [worker for worker in self.workers.values() if worker is not None]
        self.log.info(
            "stopping {count} workers, up to {grace}s for what is in flight",
            count=len(running),
            grace=self.grace,
        )
        for worker in running:
            worker.signal("TERM")
        killer = self.reactor.callLater(self.grace + KILL_MARGIN, self._kill, running)
        ended = DeferredList([worker.ended for worker in running])
        ended.addBoth(lambda result: killer.active() and killer.cancel())
        if self.handleSignals:
            self._forwardAgain(running)
        listening = super().stopService()
        self.notifier.stopping()
        return DeferredList([ended, listening]).addCallback(lambda _: None)

    def _forwardAgain(self, running: list[WorkerProcess]) -> None:
        """
        A second C{SIGTERM} or C{SIGINT} while the workers finish is passed
        on: each ends its grace period at once.
        """

        def hurry() -> None:
            self.log.info("stopping again: the workers stop waiting")
            for worker in running:
                worker.signal("TERM")

        def handler(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(hurry)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, handler)

    def _kill(self, running: list[WorkerProcess]) -> None:
        for worker in running:
            if not worker.ended.called:
                self.log.warn(
                    "worker {index} still runs past its grace period: killing it",
                    index=worker.index,
                )
                worker.signal("KILL")
