# -*- test-case-name: tests.test_lifecycle -*-
"""
netd's top-level service: it owns the listeners the tap built and the
running services behind them, and handles netd's life as a daemon:

    - readiness: C{READY=1} to the service manager once every listener is up;
    - reload on C{SIGHUP}: re-read the configuration, apply what can change
      without a restart, log what changed and what needs a restart;
    - graceful stop on C{SIGTERM} (through twistd's own handler, which stops
      the reactor and so this service): stop accepting, let connections in
      flight finish within a grace period, then abort the rest.
"""

from __future__ import annotations

import platform
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, FirstError, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

import twisted
from netd import __version__
from netd.connlog import ConnectionLoggingFactory
from netd.listeners import describeAddress
from netd.metrics import NO_METRICS, Metrics
from netd.plugin import IGracefulProtocol, INetdService
from netd.policy import Policy
from netd.reload import Reload
from netd.systemd import Notifier

#: Seconds connections in flight get to finish when netd stops.
DEFAULT_GRACE = 10.0


@dataclass
class RunningService:
    """
    What the tap built for one netd service, kept so that a reload can
    reach it and a stop can drain it.

    @ivar plugin: the service's L{INetdService}.
    @ivar options: its options as currently applied, by their short names.
    @ivar endpoints: the endpoint descriptions it listens on.
    @ivar factory: the L{ConnectionLoggingFactory} around its stream
        factory, or L{None} when it has no stream endpoint.
    @ivar datagramProtocols: one per UDP endpoint (inside the policy).
    @ivar policy: its access L{Policy}, changeable at run time.
    """

    plugin: INetdService
    options: dict[str, Any]
    endpoints: list[str]
    factory: ConnectionLoggingFactory | None = None
    datagramProtocols: list[Any] = field(default_factory=list)
    policy: Policy = field(default_factory=Policy)


class NetdService(MultiService):
    """
    The parent of every listener: readiness, reload and graceful stop.

    @ivar served: the L{RunningService}s by service name.
    @ivar settings: the global options that a reload may change (C{grace},
        ...), as currently applied.
    @ivar liveSettings: for each global option that a reload applies
        without a restart, what applies a new value (the tap adds its own,
        such as an access policy's); a changed option not in here needs a
        restart.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: Mapping[str, Any],
        reread: Callable[[], Mapping[str, Any]] | None = None,
        notifier: Notifier | None = None,
        handleSignals: bool = False,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        """
        @param reactor: an L{IReactorTime}, for the grace period.
        @param settings: the global options, C{grace} among them.
        @param reread: parse the command line and the config file again,
            for a reload: returns parsed options, or raises L{UsageError}.
            L{None} when netd cannot reload.
        @param notifier: where readiness goes; nowhere by default.
        @param handleSignals: whether to reload on C{SIGHUP} (only for the
            real reactor in the main thread).
        @param metrics: where reloads are counted.
        """
        super().__init__()
        self.metrics = metrics
        self.reactor = reactor
        self.settings = dict(settings)
        self.reread = reread
        self.notifier = notifier if notifier is not None else Notifier(None)
        self.handleSignals = handleSignals
        self.served: dict[str, RunningService] = {}
        # grace needs no applying: stopService reads it from settings.
        self.liveSettings: dict[str, Callable[[Any], None]] = {"grace": _nothing}
        self.status = "starting"
        self._previousHangUp: Any = None

    # Readiness

    def privilegedStartService(self) -> None:
        """
        Say which netd this is, then open every listener.
        """
        self.log.info(
            "netd {version} starting (Python {python}, Twisted {twisted}, {reactor})",
            version=__version__,
            python=platform.python_version(),
            twisted=twisted.__version__,
            reactor=type(self.reactor).__name__,
        )
        super().privilegedStartService()

    def startService(self) -> None:
        """
        Start every listener, then tell the service manager that netd is
        ready once they all listen.
        """
        super().startService()
        if self.handleSignals:
            self._previousHangUp = signal.signal(signal.SIGHUP, self._hangUp)
        listening = [listener.whenListening() for listener in self]

        def announce() -> None:
            gatherResults(listening, consumeErrors=True).addCallbacks(
                self._ready, self._notReady
            )

        if self.handleSignals:
            # twistd starts services before the reactor runs, and the
            # reactor installs its SIGINT/SIGTERM handlers only when it
            # runs: say ready no earlier, so that a stop asked for right
            # after READY is not lost.
            self.reactor.callWhenRunning(announce)
        else:
            announce()

    def _ready(self, ports: list[Any]) -> None:
        listeners = list(self)
        self.status = "listening on " + ", ".join(
            f"{listener.serviceName} {describeAddress(port.getHost())}"
            for listener, port in zip(listeners, ports, strict=True)
        )
        self.log.info("netd ready: {status}", status=self.status)
        self.notifier.ready(self.status)

    def _notReady(self, failure: Failure) -> None:
        if failure.check(FirstError):
            failure = failure.value.subFailure
        self.status = "a listener failed: " + failure.getErrorMessage()
        self.log.error("netd is not ready: {status}", status=self.status)
        self.notifier.notify(STATUS=self.status)

    # Graceful stop

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting, ask every open connection to finish, and fire once
        they all ended or the grace period is over, when the rest are aborted.
        """
        if self._previousHangUp is not None:
            signal.signal(signal.SIGHUP, self._previousHangUp)
            self._previousHangUp = None
        listening = super().stopService()
        factories = [
            running.factory
            for running in self.served.values()
            if running.factory is not None
        ]
        openCount = sum(len(factory.protocols) for factory in factories)
        if openCount:
            self.log.info(
                "stopping: {count} connections open, up to {grace}s to finish",
                count=openCount,
                grace=self.settings["grace"],
            )
        for factory in factories:
            for connection in list(factory.protocols):
                self._stopGracefully(connection)
        stopped: Deferred[None] = Deferred()

        def drained(result: object) -> None:
            if not stopped.called:
                stopped.callback(None)

        gatherResults([factory.whenEmpty() for factory in factories]).addBoth(drained)
        if not stopped.called:
            timer = self.reactor.callLater(
                self.settings["grace"], self._graceOver, factories, stopped
            )
            stopped.addBoth(lambda result: timer.active() and timer.cancel())
            if self.handleSignals:
                self._hurryOnSignal(timer)
        # Last, so that a signal sent on seeing it finds the stop under way.
        self.notifier.stopping()
        # Then what services run beside their connections (objects' worker
        # processes) ends too, once listeners and connections are gone.
        return (
            DeferredList([listening, stopped])
            .addCallback(lambda _: self._servicesStopped(factories))
            .addCallback(lambda _: None)
        )

    def _servicesStopped(self, factories: list[Any]) -> Deferred[Any]:
        """
        Fire once every service factory with a C{whenStopped()} (such as
        objects', whose worker pool ends after its last request) has stopped.
        """
        waiting = []
        for factory in factories:
            whenStopped = getattr(factory.wrappedFactory, "whenStopped", None)
            if whenStopped is not None:
                waiting.append(whenStopped())
        return DeferredList(waiting)

    def _hurryOnSignal(self, timer: Any) -> None:
        """
        While the grace period runs, a second C{SIGTERM} or C{SIGINT} ends
        it at once (twistd's own handlers would only complain that the
        reactor is already stopping).
        """

        def hurry() -> None:
            if timer.active():
                self.log.info("stopping again: not waiting for the grace period")
                timer.reset(0)

        def handler(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(hurry)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, handler)

    def _stopGracefully(self, connection: Any) -> None:
        protocol = getattr(connection, "wrappedProtocol", connection)
        if not IGracefulProtocol.providedBy(protocol):
            return
        try:
            protocol.stopGracefully()
        except Exception:
            self.log.failure(
                "stopping {protocol!r} gracefully failed", protocol=protocol
            )

    def _graceOver(
        self, factories: Sequence[ConnectionLoggingFactory], stopped: Deferred[None]
    ) -> None:
        remaining = [
            connection for factory in factories for connection in factory.protocols
        ]
        self.log.warn(
            "grace period of {grace}s over: aborting {count} connections",
            grace=self.settings["grace"],
            count=len(remaining),
        )
        for connection in remaining:
            transport = connection.transport
            abort = getattr(transport, "abortConnection", transport.loseConnection)
            abort()
        stopped.callback(None)

    # Reload

    def _hangUp(self, signum: int, frame: Any) -> None:
        """
        The C{SIGHUP} handler: reload from the reactor, not inside the
        signal handler.
        """
        self.reactor.callFromThread(self.reload)

    def reload(self) -> bool:
        """
        Re-read the configuration (the command line still wins over the
        file) and apply what can change without a restart. Open
        connections are never dropped.

        @return: whether the new configuration could be read (even if some
            of it needs a restart to take effect).
        """
        self.notifier.reloading()
        self.log.info("reloading the configuration")
        try:
            if self.reread is None:
                raise UsageError("netd was not started from a command line")
            fresh = self.reread()
        except UsageError as error:
            self.log.error("reload failed, nothing changed: {error}", error=str(error))
            self.notifier.ready(f"reload failed: {error}; {self.status}")
            self.metrics.reloaded("failed")
            return False
        needsRestart = Reload(self, self.log).apply(fresh)
        for key in needsRestart:
            self.log.warn("reload: {key} changed; it needs a restart", key=key)
        self.log.info(
            "reload done: {count} changes need a restart", count=len(needsRestart)
        )
        self.notifier.ready(self.status)
        self.metrics.reloaded("needs-restart" if needsRestart else "applied")
        return True


def _nothing(value: object) -> None:
    """
    Apply a setting that is only ever read where it is used.
    """
