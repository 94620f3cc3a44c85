# -*- test-case-name: tests.test_metrics -*-
"""
The live side of netd's metrics: L{PrometheusMetrics} and the subclasses
of L{netd.metrics}' classes it hands out, whose labelled children are bound
once, when a service or a listener is built, so that a connection costs no
label lookup; the collectors that turn plain counts into metrics at scrape
time; and L{ListenerFactory}, which tells each listener's connections their
metrics.

Every metric lives in the L{CollectorRegistry} of one L{PrometheusMetrics}
(never prometheus_client's global one), so that any number of netds can
live in one process.
"""

from __future__ import annotations

import os
import resource
from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ILoggingContext, IProtocolFactory
from zope.interface import implementer

import netd
from netd.metrics import (
    CONNECTION_BUCKETS,
    DROPS,
    REFUSALS,
    REQUEST_BUCKETS,
    DatagramListenerMetrics,
    GetFileMetrics,
    Metrics,
    ObjectsMetrics,
    ServiceMetrics,
    StreamListenerMetrics,
    refusalReason,
)


class _StreamCounts(StreamListenerMetrics):
    """
    One stream listener's counts, as plain numbers: a connection costs a
    few additions, not a lock per metric (L{ListenerCollector} turns them
    into metrics at each scrape). Refusals, rarer, go straight to their
    labelled counters.
    """

    __slots__ = (
        "labels",
        "accepted",
        "active",
        "bytesIn",
        "bytesOut",
        "durations",
        "durationSum",
        "_refused",
        "_refusedFamily",
    )

    def __init__(self, families: PrometheusMetrics, labels: tuple[str, str]) -> None:
        self.labels = labels
        self.accepted = 0
        self.active = 0
        self.bytesIn = 0
        self.bytesOut = 0
        #: Connections by duration bucket (not cumulative), +Inf last.
        self.durations = [0] * (len(CONNECTION_BUCKETS) + 1)
        self.durationSum = 0.0
        self._refusedFamily = families.refused
        self._refused = {
            reason: families.refused.labels(*labels, reason) for reason in REFUSALS
        }

    def opened(self) -> None:
        self.accepted += 1
        self.active += 1

    def closed(self, bytesIn: int, bytesOut: int, seconds: float) -> None:
        self.active -= 1
        self.bytesIn += bytesIn
        self.bytesOut += bytesOut
        self.durationSum += seconds
        self.durations[bisect_left(CONNECTION_BUCKETS, seconds)] += 1

    def refused(self, reason: str) -> None:
        label = refusalReason(reason)
        child = self._refused.get(label)
        if child is None:
            child = self._refusedFamily.labels(*self.labels, label)
        child.inc()


class _DatagramCounts(DatagramListenerMetrics):
    """
    One UDP endpoint's counts: datagrams in and out as plain numbers (see
    L{_StreamCounts}), drops in their labelled counters.
    """

    __slots__ = ("labels", "receivedCount", "sentCount", "_dropped", "_droppedFamily")

    def __init__(self, families: PrometheusMetrics, labels: tuple[str, str]) -> None:
        self.labels = labels
        self.receivedCount = 0
        self.sentCount = 0
        self._droppedFamily = families.datagramsDropped
        self._dropped = {
            reason: families.datagramsDropped.labels(*labels, reason)
            for reason in DROPS
        }

    def received(self) -> None:
        self.receivedCount += 1

    def sent(self) -> None:
        self.sentCount += 1

    def dropped(self, reason: str) -> None:
        child = self._dropped.get(reason)
        if child is None:
            child = self._droppedFamily.labels(*self.labels, reason)
        child.inc()


class ListenerCollector:
    """
    The metrics of every listener's plain counts, made at each scrape.

    The scrape runs in a thread while the reactor counts on: each number is
    read whole, but a connection ending during a scrape may show in one
    metric and not yet in another, until the next scrape.
    """

    def __init__(self) -> None:
        self.streams: list[_StreamCounts] = []
        self.datagrams: list[_DatagramCounts] = []

    def _families(self) -> list[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        labels = ["service", "listener"]
        return [
            CounterMetricFamily(
                "netd_connections_accepted", "Connections accepted.", labels=labels
            ),
            GaugeMetricFamily(
                "netd_connections_active", "Connections open now.", labels=labels
            ),
            CounterMetricFamily(
                "netd_received_bytes",
                "Bytes received on connections that ended.",
                labels=labels,
            ),
            CounterMetricFamily(
                "netd_sent_bytes",
                "Bytes sent on connections that ended.",
                labels=labels,
            ),
            HistogramMetricFamily(
                "netd_connection_duration_seconds",
                "How long connections lasted.",
                labels=labels,
            ),
            CounterMetricFamily(
                "netd_datagrams_received", "Datagrams received.", labels=labels
            ),
            CounterMetricFamily(
                "netd_datagrams_sent", "Reply datagrams sent.", labels=labels
            ),
        ]

    def describe(self) -> list[Any]:
        return self._families()

    def collect(self) -> list[Any]:
        from prometheus_client.utils import floatToGoString

        families = self._families()
        accepted, active, bytesIn, bytesOut, durations, received, sent = families
        bounds = [*map(floatToGoString, CONNECTION_BUCKETS), "+Inf"]
        for counts in self.streams:
            labels = list(counts.labels)
            accepted.add_metric(labels, counts.accepted)
            active.add_metric(labels, counts.active)
            bytesIn.add_metric(labels, counts.bytesIn)
            bytesOut.add_metric(labels, counts.bytesOut)
            cumulative = list(accumulate(list(counts.durations)))
            durations.add_metric(
                labels, list(zip(bounds, cumulative, strict=True)), counts.durationSum
            )
        for datagrams in self.datagrams:
            labels = list(datagrams.labels)
            received.add_metric(labels, datagrams.receivedCount)
            sent.add_metric(labels, datagrams.sentCount)
        return families


class _PrometheusGetFile(GetFileMetrics):
    __slots__ = ("_complete", "_incomplete", "_errors", "_service")

    def __init__(self, families: PrometheusMetrics, service: str) -> None:
        self._service = service
        self._complete = families.transfers.labels(service, "complete")
        self._incomplete = families.transfers.labels(service, "incomplete")
        self._errors = families.getfileErrors

    def transferEnded(self, complete: bool) -> None:
        (self._complete if complete else self._incomplete).inc()

    def refused(self, code: int) -> None:
        self._errors.labels(self._service, str(code)).inc()


class _PrometheusObjects(ObjectsMetrics):
    __slots__ = ("_clock", "_requests", "_errors", "_auth", "_restarts", "_time")

    def __init__(self, families: PrometheusMetrics, service: str) -> None:
        self._clock = families.clock
        self._requests = families.requests.labels(service)
        self._errors = families.requestErrors.labels(service)
        self._auth = families.authFailures.labels(service)
        self._restarts = families.workerRestarts.labels(service)
        self._time = families.requestTime.labels(service)

    def timed(self, process: Callable[..., Any], *args: Any) -> Any:
        self._requests.inc()
        started = self._clock.seconds()
        result = process(*args)
        if isinstance(result, Deferred):
            return result.addBoth(self._done, started)
        self._time.observe(self._clock.seconds() - started)
        return result

    def _done(self, result: object, started: float) -> object:
        self._time.observe(self._clock.seconds() - started)
        return result

    def failed(self) -> None:
        self._errors.inc()

    def authenticationFailed(self) -> None:
        self._auth.inc()

    def workerRestarted(self) -> None:
        self._restarts.inc()


class _PrometheusService(ServiceMetrics):
    __slots__ = ("_families", "_name")

    def __init__(self, families: PrometheusMetrics, name: str) -> None:
        self._families = families
        self._name = name

    def streamListener(self, description: str) -> StreamListenerMetrics:
        counts = _StreamCounts(self._families, (self._name, description))
        self._families.listeners.streams.append(counts)
        return counts

    def datagramListener(self, description: str) -> DatagramListenerMetrics:
        counts = _DatagramCounts(self._families, (self._name, description))
        self._families.listeners.datagrams.append(counts)
        return counts

    def getfile(self) -> GetFileMetrics:
        return _PrometheusGetFile(self._families, self._name)

    def objects(self) -> ObjectsMetrics:
        return _PrometheusObjects(self._families, self._name)


class DescriptorCollector:
    """
    File descriptors netd has open (C{netd_descriptors_open}, from
    C{/proc/self/fd} where there is one) and may have
    (C{netd_descriptors_limit}, the soft C{RLIMIT_NOFILE}), read at each
    scrape.
    """

    def __init__(self, fdDirectory: str = "/proc/self/fd") -> None:
        self.fdDirectory = fdDirectory

    def describe(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        return [
            GaugeMetricFamily("netd_descriptors_open", _OPEN_HELP),
            GaugeMetricFamily("netd_descriptors_limit", _LIMIT_HELP),
        ]

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            count = len(os.listdir(self.fdDirectory))
        except OSError:
            pass
        else:
            # listdir's own descriptor is in the count while it reads.
            yield GaugeMetricFamily("netd_descriptors_open", _OPEN_HELP, count - 1)
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            yield GaugeMetricFamily("netd_descriptors_limit", _LIMIT_HELP, soft)


_OPEN_HELP = "File descriptors netd has open."
_LIMIT_HELP = "The most file descriptors netd may open (RLIMIT_NOFILE)."


class PrometheusMetrics(Metrics):
    """
    netd's metrics, live, in a registry of their own.

    @ivar clock: an L{IReactorTime}, for objects' request times.
    """

    def __init__(self, clock: Any) -> None:
        """
        @param clock: an L{IReactorTime}.
        """
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Histogram,
            Info,
            ProcessCollector,
        )

        self.clock = clock
        self.registry = registry = CollectorRegistry()
        self.listeners = ListenerCollector()
        registry.register(self.listeners)
        listener = ("service", "listener")
        self.refused = Counter(
            "netd_connections_refused",
            "Connections refused, by reason.",
            (*listener, "reason"),
            registry=registry,
        )
        self.datagramsDropped = Counter(
            "netd_datagrams_dropped",
            "Datagrams left unanswered, by reason.",
            (*listener, "reason"),
            registry=registry,
        )
        self.transfers = Counter(
            "netd_getfile_transfers",
            "getfile transfers that ended, complete or not.",
            ("service", "outcome"),
            registry=registry,
        )
        self.getfileErrors = Counter(
            "netd_getfile_errors",
            "getfile requests refused, by error code.",
            ("service", "code"),
            registry=registry,
        )
        self.requests = Counter(
            "netd_objects_requests",
            "objects requests received.",
            ("service",),
            registry=registry,
        )
        self.requestErrors = Counter(
            "netd_objects_errors",
            "objects replies that carry an exception.",
            ("service",),
            registry=registry,
        )
        self.authFailures = Counter(
            "netd_objects_auth_failures",
            "objects clients that failed the authkey handshake.",
            ("service",),
            registry=registry,
        )
        self.workerRestarts = Counter(
            "netd_objects_worker_restarts",
            "objects worker processes replaced.",
            ("service",),
            registry=registry,
        )
        self.requestTime = Histogram(
            "netd_objects_request_duration_seconds",
            "Time from an objects request to its reply.",
            ("service",),
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.reloads = Counter(
            "netd_reloads",
            "Reloads (SIGHUP), by outcome.",
            ("outcome",),
            registry=registry,
        )
        for outcome in ("applied", "needs-restart", "failed"):
            self.reloads.labels(outcome)
        Info("netd_build", "netd's version.", registry=registry).info(
            {"version": netd.__version__}
        )
        registry.register(DescriptorCollector())
        ProcessCollector(registry=registry)

    def service(self, name: str) -> ServiceMetrics:
        return _PrometheusService(self, name)

    def reloaded(self, outcome: str) -> None:
        self.reloads.labels(outcome).inc()

    def site(self) -> Any:
        """
        The web site that serves C{/metrics}, with prometheus_client's
        Twisted resource (which renders in the reactor's thread pool). It
        logs no request, and closes a connection idle for 30 seconds.
        """
        from prometheus_client.twisted import MetricsResource
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        class MetricsSite(Site):
            noisy = False

            def log(self, request: Any) -> None:
                """
                Log nothing: one line per scrape would drown netd's log.
                """

            def logPrefix(self) -> str:
                return "metrics"

        root = Resource()
        root.putChild(b"metrics", MetricsResource(self.registry))
        return MetricsSite(root, timeout=30)


@implementer(IProtocolFactory, ILoggingContext)
class ListenerFactory:
    """
    What one stream listener listens with: its service's shared factory
    (a L{netd.policy.PolicyFactory}), told which listener's metrics each of
    its connections reports to.
    """

    noisy = False

    def __init__(self, factory: Any, metrics: StreamListenerMetrics) -> None:
        """
        @param factory: the service's factory; its C{buildProtocol} takes
            the metrics as a second argument.
        @param metrics: this listener's.
        """
        self.factory = factory
        self.metrics = metrics

    def buildProtocol(self, addr: Any) -> Any:
        return self.factory.buildProtocol(addr, self.metrics)

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()

    def logPrefix(self) -> str:
        return str(self.factory.logPrefix())
