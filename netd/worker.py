# -*- test-case-name: tests.test_workers -*-
"""
One worker of C{--workers N} (see L{netd.workers}): a C{twistd netd} that
builds netd as a single process would, but serves the listening sockets
its parent opened and handed over, tells its parent (not systemd) when it
is ready, takes its share of the daemon's limits, logs tagged with its
number, and stops when its parent is gone.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet import fdesc
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.error import ConnectionDone, ReactorNotRunning
from twisted.logger import (
    ILogObserver,
    Logger,
    eventAsText,
    formatEventAsClassicLogText,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.listeners import MAX_DATAGRAM_SIZE, DatagramListener, StartupError
from netd.systemd import Notifier, adoptDatagramSocket

#: The environment variable that makes a C{twistd netd} a worker.
WORKER_ENVIRONMENT = "NETD_WORKER"
#: A worker's descriptor for telling the parent its state.
STATUS_FD = 3
#: A worker's first inherited listening socket.
FIRST_LISTENER_FD = 4
#: Log formats of a worker's own events that would read as the parent's:
#: the parent logs each listener and netd's readiness once, itself.
_WORKER_FORMATS = {
    "{service} listening on {address}": "{service} serving {address}",
    "{service} listening on {address}{note}": "{service} serving {address}{note}",
    "netd ready: {status}": "worker ready: {status}",
}
_NOT_RELAYED = frozenset({"log_format", "log_text", "log_system", "log_flattened"})


def perWorker(total: float, workers: int) -> Any:
    """
    One worker's share of a limit on the whole daemon: C{total / workers}
    rounded up (for whole numbers), and 0 (no limit) stays 0.
    """
    if not total:
        return total
    if isinstance(total, int):
        return math.ceil(total / workers)
    return total / workers


def shareLimits(config: Any, workers: int) -> Any:
    """
    Give one worker of C{workers} its share of the daemon's limits, in
    parsed options: each service's C{max-connections}, and its
    C{udp-rate} (replies a second to one source, which any worker may
    receive datagrams from).

    C{max-per-source} is left whole in each worker: the kernel hands a
    source's connections to whichever worker accepts first, so a share of
    it would refuse an honest client whose connections happen to gather in
    one worker (64 connections from one load tester, under a default of
    100 split in two, did). A source may then hold up to N times it across
    the workers, within the service's C{max-connections}.

    @return: C{config}, changed.
    """
    for name, settings in list(config["policies"].items()):
        config["policies"][name] = replace(
            settings,
            maxConnections=perWorker(settings.maxConnections, workers),
        )
    for options in config["serviceOptions"].values():
        if options.get("udp-rate"):
            options["udp-rate"] = perWorker(float(options["udp-rate"]), workers)
    return config


@implementer(ILogObserver)
class WorkerLogObserver:
    """
    A worker's log, tagged C{[worker N]}.

    When the parent logs to its stdout (C{twistd -n}, as under systemd),
    the worker writes to the very same stdout, each event one line in the
    parent's own format, one C{write} each (so lines never mix), and the
    parent does nothing per event. Otherwise (C{--logfile}, C{--syslog}),
    each event goes to the parent as one line of JSON, for the
    parent to log as its own (L{netd.workers.Supervisor.relayEvent}): the text is
    formatted here, where every field is still at hand, and the fields that
    are plain values go along, for observers that read them.
    """

    def __init__(self, index: int, relay: bool, fd: int = 1) -> None:
        """
        @param index: the worker's number.
        @param relay: whether to write JSON for the parent, rather than
            text for the log itself.
        @param fd: where to write.
        """
        self.system = f"worker {index}"
        self.relay = relay
        self.fd = fd

    def __call__(self, event: Mapping[str, Any]) -> None:
        event = dict(event)
        format = event.get("log_format")
        if format in _WORKER_FORMATS:
            event["log_format"] = _WORKER_FORMATS[format]
        if self.relay:
            line = self._record(event)
        else:
            event["log_system"] = self.system
            line = (formatEventAsClassicLogText(event) or "").encode("utf-8")
        try:
            while line:
                line = line[os.write(self.fd, line) :]
        except OSError:
            pass

    def _record(self, event: dict[str, Any]) -> bytes:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        record = {
            key: value
            for key, value in event.items()
            if isinstance(value, str | int | float | bool | type(None))
            and key not in _NOT_RELAYED
        }
        level = event.get("log_level")
        record["log_level"] = getattr(level, "name", "info")
        record["log_text"] = text
        return json.dumps(record, default=repr).encode("utf-8") + b"\n"


def workerLogObserver() -> ILogObserver:
    """
    The log observer of a worker process, as C{$NETD_WORKER} describes it
    (C{twistd --logger=netd.workers.workerLogObserver}).
    """
    handover = json.loads(os.environ.get(WORKER_ENVIRONMENT) or "{}")
    return WorkerLogObserver(handover.get("index", 0), handover.get("relay", True))


@dataclass(frozen=True)
class HandedOver:
    """
    One listening socket the parent handed to a worker.
    """

    service: str
    endpoint: str
    fd: int
    family: int


class PipeNotifier(Notifier):
    """
    What a worker would tell the service manager, told to its parent: one
    JSON object a line on a pipe.
    """

    def __init__(self, fd: int) -> None:
        super().__init__(None)
        self.fd = fd

    def notify(self, **fields: str) -> bool:
        """
        Send C{fields} to the parent; a parent that is gone is logged.
        """
        line = json.dumps(fields).encode("utf-8") + b"\n"
        try:
            os.write(self.fd, line)
        except OSError as error:
            self.log.warn(
                "cannot tell netd's parent {fields}: {error}",
                fields=fields,
                error=error,
            )
            return False
        return True


class _ParentWatch(FileDescriptor):
    """
    Read the worker's stdin, a pipe from the parent, until it closes: then
    the parent is gone and the worker stops.
    """

    def __init__(self, reactor: Any, fd: int, gone: Callable[[], None]) -> None:
        super().__init__(reactor)
        self.fd = fd
        self.gone = gone
        fdesc.setNonBlocking(fd)

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Any:
        return fdesc.readFromFD(self.fd, lambda data: None)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        # The end of the pipe, not the reactor letting go of it as it stops.
        if reason.check(ConnectionDone):
            self.gone()


class _AdoptingReactor:
    """
    A reactor for one endpoint of a worker: its one C{listen*} call adopts
    the socket the parent handed over instead, wrapped as that call would
    wrap it (C{listenSSL} in TLS); everything else is the real reactor's.
    """

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def adoptStreamPort(self, fileno: int, addressFamily: int, factory: Any) -> Any:
        return self._reactor.adoptStreamPort(self._fd, self._family, factory)

    def listenTCP(self, port: int, factory: Any, *args: Any, **kwargs: Any) -> Any:
        return self.adoptStreamPort(self._fd, self._family, factory)

    def listenUNIX(self, address: Any, factory: Any, *args: Any, **kwargs: Any) -> Any:
        return self.adoptStreamPort(self._fd, self._family, factory)

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, *args: Any, **kwargs: Any
    ) -> Any:
        from netd.tlshalfclose import HalfCloseableTLSFactory

        return self.adoptStreamPort(
            self._fd,
            self._family,
            HalfCloseableTLSFactory(contextFactory, False, factory, self._reactor),
        )


class _AdoptedDatagramListener(DatagramListener):
    """
    A worker's UDP listener: it serves the socket the parent handed over.
    """

    def __init__(self, handedOver: HandedOver, *args: Any) -> None:
        super().__init__(*args)
        self.handedOver = handedOver

    def _listen(self) -> Any:
        return adoptDatagramSocket(
            self.reactor,
            self.handedOver.fd,
            self.handedOver.family,
            self.protocol,
            MAX_DATAGRAM_SIZE,
        )


class Worker:
    """
    What makes a C{twistd netd} one of the workers of a L{Supervisor}: the
    sockets it was handed, its pipe to the parent, its share of the limits.

    @ivar index: this worker's number, from 1.
    @ivar workers: how many workers there are.
    @ivar notifier: where readiness goes (the parent).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        index: int,
        workers: int,
        listeners: list[HandedOver],
        streamEndpoint: Callable[[str, str, Any], Any],
        statusFD: int = STATUS_FD,
    ) -> None:
        """
        @param streamEndpoint: builds a stream endpoint from its description
            (L{netd.endpoints.streamEndpoint}), here given a reactor that adopts.
        """
        self.reactor = reactor
        self.index = index
        self.workers = workers
        self._unused = list(listeners)
        self._streamEndpoint = streamEndpoint
        self.notifier: Notifier = PipeNotifier(statusFD)

    @classmethod
    def fromEnvironment(
        cls,
        reactor: Any,
        streamEndpoint: Callable[[str, str, Any], Any],
        environ: Mapping[str, str] | None = None,
    ) -> Worker | None:
        """
        The worker this process is, per C{$NETD_WORKER}; L{None} when it
        is not a worker.
        """
        environ = os.environ if environ is None else environ
        text = environ.get(WORKER_ENVIRONMENT)
        if not text:
            return None
        handover = json.loads(text)
        return cls(
            reactor,
            handover["index"],
            handover["workers"],
            [HandedOver(**listener) for listener in handover["listeners"]],
            streamEndpoint,
        )

    def start(self, config: Any) -> Any:
        """
        Take this worker's share of the limits in C{config}, leave the
        terminal's process group (a Ctrl-C is for the parent, which stops
        the workers gracefully), and stop when the parent is gone.

        @return: C{config}.
        """
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        self.reactor.addReader(_ParentWatch(self.reactor, 0, self._parentGone))
        return shareLimits(config, self.workers)

    def reread(self, reread: Callable[[], Any]) -> Callable[[], Any]:
        """
        Wrap C{Options.reread} so that a reload keeps to the shares.
        """
        return lambda: shareLimits(reread(), self.workers)

    def _parentGone(self) -> None:
        self.log.warn("netd's parent process is gone: stopping")
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass

    def _take(self, serviceName: str, description: str) -> HandedOver:
        for handedOver in self._unused:
            if (handedOver.service, handedOver.endpoint) == (serviceName, description):
                self._unused.remove(handedOver)
                return handedOver
        raise StartupError(
            f"{serviceName}: {description!r} is not among the sockets netd's "
            "parent opened (the configuration changed since netd started: "
            "restart netd)"
        )

    def streamEndpoint(self, serviceName: str, description: str) -> Any:
        """
        The endpoint of a stream listener: the socket handed over, served
        as C{description} says (TLS, PROXY header...).
        """
        handedOver = self._take(serviceName, description)
        return self._adopted(serviceName, description, handedOver)

    def _adopted(
        self, serviceName: str, description: str, handedOver: HandedOver
    ) -> Any:
        kind, _, inner = description.partition(":")
        kind = kind.lower()
        if kind == "haproxy":
            from netd.proxyheader import ProxiedEndpoint

            return ProxiedEndpoint(
                self._adopted(serviceName, inner, handedOver), self.reactor
            )
        if kind == "systemd":
            return AdoptedStreamServerEndpoint(
                self.reactor, handedOver.fd, handedOver.family
            )
        adopting = _AdoptingReactor(self.reactor, handedOver.fd, handedOver.family)
        return self._streamEndpoint(serviceName, description, adopting)

    def datagramListener(
        self, serviceName: str, description: str, reactor: Any, protocol: Any
    ) -> DatagramListener:
        """
        A UDP listener on the socket handed over.
        """
        handedOver = self._take(serviceName, description)
        return _AdoptedDatagramListener(
            handedOver, serviceName, description, reactor, protocol
        )
