# -*- test-case-name: tests.test_metrics -*-
"""
netd's Prometheus metrics (C{--metrics ENDPOINT}), served at C{/metrics}
by C{prometheus_client}'s own Twisted resource.

The rest of netd reports through a few small objects, one per thing that
reports: L{Metrics} for netd itself (reloads), L{ServiceMetrics} for one
service, L{StreamListenerMetrics} and L{DatagramListenerMetrics} for one
endpoint, L{GetFileMetrics} and L{ObjectsMetrics} for those services. Each
base class does nothing, so that with metrics off every hook costs one
empty method call; L{netd.prometheus.PrometheusMetrics} hands out the live
subclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Refusal reasons of a stream listener (label C{reason}).
REFUSALS = (
    "denied",
    "not-allowed",
    "max-connections",
    "max-per-source",
    "descriptors",
    "untrusted-proxy",
    "service",
)

#: Why a datagram is dropped (label C{reason}): the access policy, a reply
#: towards a reflecting service's port, the per-source rate, a reply too
#: big for a datagram, any other error sending it.
DROPS = ("policy", "loop-guard", "rate-limit", "too-big", "send-error")

#: Connection duration buckets, in seconds: from a lock-step exchange to a
#: long download.
CONNECTION_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 3600.0)

#: Objects request time buckets, in seconds.
REQUEST_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


def refusalReason(reason: str) -> str:
    """
    The C{reason} label of a refusal, from the access policy's words
    (L{netd.policy.PolicySettings.refusal}, L{netd.policy.PolicyFactory}):
    one of L{REFUSALS}, or C{other}.
    """
    if reason.startswith("denied"):
        return "denied"
    if reason.startswith("not in"):
        return "not-allowed"
    if reason.startswith("already"):
        return "max-per-source" if reason.endswith("from there") else "max-connections"
    if reason.startswith("descriptor budget"):
        return "descriptors"
    if reason.startswith("not a trusted proxy"):
        return "untrusted-proxy"
    return reason if reason in REFUSALS else "other"


class StreamListenerMetrics:
    """
    What one stream listener of a service reports: connections accepted,
    refused and open, and, as each ends, its bytes and duration. This base
    reports nothing.
    """

    __slots__ = ()

    def opened(self) -> None:
        """
        A connection was accepted and is now open.
        """

    def closed(self, bytesIn: int, bytesOut: int, seconds: float) -> None:
        """
        A connection ended, after C{bytesIn} bytes received and C{bytesOut}
        sent in C{seconds}.
        """

    def refused(self, reason: str) -> None:
        """
        A connection was refused, for C{reason} (see L{refusalReason}).
        """


class DatagramListenerMetrics:
    """
    What one UDP endpoint of a service reports. This base reports nothing.
    """

    __slots__ = ()

    def received(self) -> None:
        """
        A datagram arrived.
        """

    def sent(self) -> None:
        """
        A reply datagram went out.
        """

    def dropped(self, reason: str) -> None:
        """
        A datagram went unanswered, for C{reason}: one of L{DROPS}.
        """


class GetFileMetrics:
    """
    What getfile reports. This base reports nothing.
    """

    __slots__ = ()

    def transferEnded(self, complete: bool) -> None:
        """
        A transfer ended, whole or not.
        """

    def refused(self, code: int) -> None:
        """
        A request was refused with an error C{code} (404, 503...).
        """


class ObjectsMetrics:
    """
    What objects reports. This base reports nothing.
    """

    __slots__ = ()

    def timed(self, process: Callable[..., Any], *args: Any) -> Any:
        """
        Call C{process(*args)} for one request, counting it and timing it
        until its result (a Deferred's, when it returns one).

        @return: what C{process} returned.
        """
        return process(*args)

    def failed(self) -> None:
        """
        A reply carries an exception (the handler's, or a refused pickle).
        """

    def authenticationFailed(self) -> None:
        """
        A client failed the authkey handshake.
        """

    def workerRestarted(self) -> None:
        """
        A worker process ended and was replaced.
        """


class ServiceMetrics:
    """
    What one service reports, and the metrics of its listeners. This base
    hands out the do-nothing ones.
    """

    __slots__ = ()

    def streamListener(self, description: str) -> StreamListenerMetrics:
        """
        The metrics of the stream endpoint C{description}.
        """
        return NO_STREAM_METRICS

    def datagramListener(self, description: str) -> DatagramListenerMetrics:
        """
        The metrics of the UDP endpoint C{description}.
        """
        return NO_DATAGRAM_METRICS

    def getfile(self) -> GetFileMetrics:
        """
        getfile's own metrics, for this service.
        """
        return NO_GETFILE_METRICS

    def objects(self) -> ObjectsMetrics:
        """
        objects' own metrics, for this service.
        """
        return NO_OBJECTS_METRICS


class Metrics:
    """
    What netd reports as a whole. This base reports nothing: it is netd's
    when C{--metrics} is not given.

    @ivar registry: the L{CollectorRegistry} holding every metric, or
        L{None} when metrics are off.
    """

    registry: Any = None

    def service(self, name: str) -> ServiceMetrics:
        """
        The metrics of the service C{name}.
        """
        return NO_SERVICE_METRICS

    def reloaded(self, outcome: str) -> None:
        """
        A reload ended: C{applied}, C{needs-restart} (some changes wait for
        a restart) or C{failed} (the configuration could not be read).
        """


NO_STREAM_METRICS = StreamListenerMetrics()
NO_DATAGRAM_METRICS = DatagramListenerMetrics()
NO_GETFILE_METRICS = GetFileMetrics()
NO_OBJECTS_METRICS = ObjectsMetrics()
NO_SERVICE_METRICS = ServiceMetrics()
NO_METRICS = Metrics()
