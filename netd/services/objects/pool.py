# -*- test-case-name: tests.services.objects.test_pool -*-
"""
The objects service's worker processes: requests are unpickled, handled and
their replies pickled in child processes (L{netd.services.objects.worker}),
so that no request holds the reactor, whatever it costs.

Each worker handles one request at a time. A request gets C{timeout}
seconds (a watchdog here kills the worker when they are over) and its
worker at most C{memory} bytes of address space (C{RLIMIT_AS}). A request
over budget gets an error reply (C{TimeoutError}, C{MemoryError}); a dead
worker is replaced, and the request it was handling gets a
C{RuntimeError}. Requests wait in one queue per connection, served in turn,
so that one connection's backlog does not delay every other's.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from netd.services.objects.wire import encodeFrameHeader
from netd.services.objects.worker import decodeOutcome
from netd.throttledlog import ThrottledLog

DEFAULT_WORKERS = 2
DEFAULT_TIMEOUT = 5.0
DEFAULT_MEMORY = 512 * 1024 * 1024

_REQUESTS_FD = 3
_REPLIES_FD = 4
_RESPAWN_DELAY = 1.0


class _Job:
    __slots__ = ("frame", "owner", "deferred", "worker", "timer", "cancelled")

    def __init__(self, frame: bytes, owner: object) -> None:
        self.frame = frame
        self.owner = owner
        self.deferred: defer.Deferred[tuple[bytes, str | None]] = defer.Deferred(
            self._cancel
        )
        self.worker: _Worker | None = None
        self.timer: Any = None
        self.cancelled = False

    def _cancel(self, deferred: Any) -> None:
        self.cancelled = True
        self.frame = b""


class _Worker(ProcessProtocol):
    """
    The parent's side of one worker process.
    """

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.ready = False
        self.ending = False
        self.job: _Job | None = None
        self.handled = 0
        self.started = pool.reactor.seconds()
        self.killedBecause = ""
        self._buffer = bytearray()

    @property
    def pid(self) -> int | None:
        return getattr(self.transport, "pid", None)

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != _REPLIES_FD:
            self.pool._output(self, data)
            return
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            (length,) = struct.unpack_from("!i", buffer)
            header = 4
            if length == -1:
                if len(buffer) < 12:
                    return
                (length,) = struct.unpack_from("!Q", buffer, 4)
                header = 12
            elif length < 0:
                self.kill("a malformed reply")
                return
            if len(buffer) < header + length:
                return
            body = bytes(buffer[header : header + length])
            del buffer[: header + length]
            self.pool._message(self, body)

    def send(self, frame: bytes) -> None:
        self.transport.writeToChild(_REQUESTS_FD, encodeFrameHeader(len(frame)))
        self.transport.writeToChild(_REQUESTS_FD, frame)

    def close(self) -> None:
        """
        Let the worker end once it has read everything sent.
        """
        self.ending = True
        try:
            self.transport.closeChildFD(_REQUESTS_FD)
        except Exception:
            pass

    def kill(self, because: str) -> None:
        self.ending = True
        self.killedBecause = because
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    def processEnded(self, reason: Failure) -> None:
        self.pool._ended(self, reason)


class WorkerPool:
    """
    Worker processes for objects requests, supervised.

    @ivar restarted: called each time a worker is replaced (netd's
        metrics count it).
    @ivar stats: counters: C{requests} handled, C{timeouts}, C{exhausted}
        (out of memory), C{crashes} (a worker died with a request), C{spawned}.
    """

    log = Logger()

    restarted: Callable[[], None] = staticmethod(lambda: None)  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        handler: str,
        allowed: list[str] | tuple[str, ...] = (),
        size: int = DEFAULT_WORKERS,
        timeout: float = DEFAULT_TIMEOUT,
        memory: int = DEFAULT_MEMORY,
        maxBytes: int = 8 * 1024 * 1024,
        maxReplyBytes: int = 16 * 1024 * 1024,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """
        @param reactor: an L{IReactorProcess} and L{IReactorTime}.
        @param handler: the handler's name (C{echo}, C{add} or
            C{MODULE:CALLABLE}), which the workers import.
        @param allowed: the extra C{MODULE:QUALNAME}s requests may use.
        @param size: how many workers.
        @param timeout: seconds one request may take.
        @param memory: bytes of address space for each worker.
        @param environ: the workers' environment (netd's, and its
            C{sys.path} as C{PYTHONPATH}, by default).
        """
        self.reactor = reactor
        self.size = size
        self.timeout = timeout
        self.memory = memory
        self._config = json.dumps(
            {
                "handler": handler,
                "allow": list(allowed),
                "memory": memory,
                "timeout": timeout,
                "maxBytes": maxBytes,
                "maxReplyBytes": maxReplyBytes,
            }
        )
        if environ is None:
            path = os.pathsep.join(entry for entry in sys.path if entry)
            environ = dict(os.environ, PYTHONPATH=path)
        self._environ = dict(environ)
        # Large buffers go back to the system once freed (see netd.buffers).
        self._environ.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
        self.running = False
        self.stats = dict.fromkeys(
            ("requests", "timeouts", "exhausted", "crashes", "spawned"), 0
        )
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._queues: OrderedDict[object, deque[_Job]] = OrderedDict()
        self._stopped: list[defer.Deferred[None]] = []
        self._failedStarts = 0
        self._pendingSpawns: list[Any] = []
        self._eventLog = ThrottledLog(reactor, interval=1.0, lines=10)

    # Life

    def start(self) -> None:
        """
        Start the workers, once the reactor runs: under twistd, after it
        dropped its privileges (C{--uid}), since listeners start before.
        """
        if self.running:
            return
        self.running = True
        self.reactor.callWhenRunning(self._startWorkers)

    def _startWorkers(self) -> None:
        if not self.running:
            return
        live = [worker for worker in self._workers if not worker.ending]
        for _ in range(self.size - len(live)):
            self._spawn()

    def stop(self) -> defer.Deferred[None]:
        """
        Stop once the requests queued or in progress are answered: the
        workers end. Fires when they all have.
        """
        self.running = False
        for call in self._pendingSpawns:
            if call.active():
                call.cancel()
        self._pendingSpawns = []
        stopped: defer.Deferred[None] = defer.Deferred()
        self._stopped.append(stopped)
        self._retireIfDone()
        return stopped

    def _retireIfDone(self) -> None:
        if self.running:
            return
        if self._queues:
            if self._workers:
                return
            self._failQueued(RuntimeError("netd's objects workers are stopped"))
        if not any(worker.job is not None for worker in self._workers):
            self._idle = []
            for worker in self._workers:
                if not worker.ending:
                    worker.close()
        if not self._workers:
            stopped, self._stopped = self._stopped, []
            for observer in stopped:
                observer.callback(None)

    def _spawn(self) -> None:
        worker = _Worker(self)
        self._workers.append(worker)
        self.stats["spawned"] += 1
        executable = sys.executable
        try:
            self.reactor.spawnProcess(
                worker,
                executable,
                [executable, "-m", "netd.services.objects.worker", self._config],
                env=self._environ,
                childFDs={0: "w", 1: "r", 2: "r", _REQUESTS_FD: "w", _REPLIES_FD: "r"},
            )
        except Exception as error:
            self._workers.remove(worker)
            self._failedStarts += 1
            self._event(
                "objects: cannot start a worker ({executable}): {error}",
                executable=executable,
                error=error,
            )
            self._replace()

    # Requests

    def submit(
        self, frame: bytes, owner: object = None
    ) -> defer.Deferred[tuple[bytes, str | None]]:
        """
        Handle one request frame in a worker.

        @param owner: whose request (a connection): requests of different
            owners are served in turn.
        @return: a Deferred of the reply pickle and the unpickler's refusal
            reason (or L{None}); it fails with C{TimeoutError} when the
            request takes too long, C{RuntimeError} when its worker dies.
            Cancelling it drops the request (or its reply, once running).
        """
        job = _Job(frame, owner)
        if not self.running and all(worker.ending for worker in self._workers):
            job.deferred.errback(RuntimeError("netd's objects workers are stopped"))
            return job.deferred
        queue = self._queues.get(owner)
        if queue is None:
            queue = self._queues[owner] = deque()
        queue.append(job)
        self._dispatch()
        return job.deferred

    def _nextJob(self) -> _Job | None:
        queues = self._queues
        while queues:
            owner, queue = next(iter(queues.items()))
            job = queue.popleft()
            if queue:
                queues.move_to_end(owner)
            else:
                del queues[owner]
            if not job.cancelled:
                return job
        return None

    def _dispatch(self) -> None:
        while self._idle and self._queues:
            job = self._nextJob()
            if job is None:
                break
            worker = self._idle.pop()
            worker.job = job
            job.worker = worker
            job.timer = self.reactor.callLater(self.timeout, self._overtime, worker)
            worker.send(job.frame)
            job.frame = b""

    def _message(self, worker: _Worker, body: bytes) -> None:
        if not worker.ready:
            worker.ready = True
            self._failedStarts = 0
            if worker.ending:
                return
            self._idle.append(worker)
            self._dispatch()
            self._retireIfDone()
            return
        job = worker.job
        if job is None:
            worker.kill("a reply to no request")
            return
        worker.job = None
        worker.handled += 1
        job.timer.cancel()
        try:
            reply, refusal, exiting, failed = decodeOutcome(body)
        except ValueError as malformed:
            worker.kill(str(malformed))
            self._answer(job, RuntimeError("netd's objects worker failed"))
            return
        self.stats["requests"] += 1
        if exiting:
            self.stats["exhausted"] += 1
            worker.ending = True
            self._event(
                "objects: a request ran out of memory ({memory} bytes per "
                "worker); replacing worker {pid}",
                memory=self.memory,
                pid=worker.pid,
            )
        elif not worker.ending:
            self._idle.append(worker)
        self._answer(job, (reply, refusal, failed))
        self._dispatch()
        self._retireIfDone()

    def _answer(self, job: _Job, result: Any) -> None:
        if job.cancelled:
            return
        if isinstance(result, BaseException):
            job.deferred.errback(result)
        else:
            job.deferred.callback(result)

    def _overtime(self, worker: _Worker) -> None:
        job = worker.job
        worker.job = None
        self.stats["timeouts"] += 1
        self._event(
            "objects: a request ran over {timeout}s; killing worker {pid}",
            timeout=self.timeout,
            pid=worker.pid,
        )
        worker.kill("over time")
        if job is not None:
            self._answer(
                job,
                TimeoutError(
                    f"the request took over {self.timeout:g} s and was stopped"
                ),
            )

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        job = worker.job
        status = _describeEnd(reason)
        if job is not None:
            worker.job = None
            job.timer.cancel()
            self.stats["crashes"] += 1
            if "SIGXCPU" in status:
                self.stats["timeouts"] += 1
                failure: Exception = TimeoutError(
                    f"the request used over {self.timeout:g} s of CPU time"
                )
            else:
                failure = RuntimeError(
                    f"netd's objects worker died handling the request ({status})"
                )
            self._event(
                "objects: worker {pid} died handling a request: {status}",
                pid=worker.pid,
                status=status,
            )
            self._answer(job, failure)
        elif not worker.ending:
            self._event(
                "objects: worker {pid} ended: {status}", pid=worker.pid, status=status
            )
        if not worker.ready:
            self._failedStarts += 1
        if self.running:
            self._replace()
        self._retireIfDone()

    def _replace(self) -> None:
        self.restarted()
        if self._failedStarts == 0:
            self._spawn()
            return
        if self._failedStarts >= 3:
            self._failQueued(RuntimeError("netd's objects workers cannot start"))
        call = self.reactor.callLater(_RESPAWN_DELAY, self._delayedSpawn)
        self._pendingSpawns.append(call)

    def _delayedSpawn(self) -> None:
        self._pendingSpawns = [c for c in self._pendingSpawns if c.active()]
        if self.running:
            self._spawn()

    def _failQueued(self, failure: Exception) -> None:
        queues, self._queues = self._queues, OrderedDict()
        for queue in queues.values():
            for job in queue:
                self._answer(job, failure)

    # Logs

    def _output(self, worker: _Worker, data: bytes) -> None:
        text = data.decode("utf-8", "replace").rstrip()
        if text:
            self._event(
                "objects: worker {pid} said: {output}",
                pid=worker.pid,
                output=text[:500],
            )

    def _event(self, format: str, **fields: Any) -> None:
        self._eventLog.emit(self.log.warn, format, **fields)


def _describeEnd(reason: Failure) -> str:
    value = reason.value
    signalNumber = getattr(value, "signal", None)
    if signalNumber:
        try:
            return f"killed by {signal.Signals(signalNumber).name}"
        except ValueError:
            return f"killed by signal {signalNumber}"
    return f"exit status {getattr(value, 'exitCode', '?')}"
