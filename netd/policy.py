# -*- test-case-name: tests.test_policy -*-
"""
The access policy every netd service is served behind: which client
addresses may connect (allow/deny ranges), how many connections at once
(in all, and from one address), and how long a connection may stay idle.

A L{Policy} is one service's; the tap wraps the service's factory in a
L{PolicyFactory} and each of its datagram protocols in a
L{PolicedDatagramProtocol}, which both consult the policy's current
L{PolicySettings} for every connection or datagram, so that
L{Policy.update} changes them at run time.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin, WrappingFactory
from twisted.python.failure import Failure

from netd.listeners import describeAddress
from netd.metrics import (
    NO_DATAGRAM_METRICS,
    NO_STREAM_METRICS,
    DatagramListenerMetrics,
    StreamListenerMetrics,
)
from netd.throttledlog import ThrottledLog
from netd.wrappers import PassThroughWrapper

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parseNetwork(text: str) -> Network:
    """
    Parse an address range: C{10.0.0.0/8}, C{2001:db8::/32}, or one
    address (C{192.0.2.7}, C{::1}). Host bits may be set (C{10.1.2.3/8}
    means C{10.0.0.0/8}).

    @raise ValueError: quoting C{text} when it is not a range.
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"expected an address range such as 10.0.0.0/8 or ::1, not {text!r}"
        ) from None


def clientAddress(host: str) -> Address | None:
    """
    The IP address of a client's host string, an IPv4-mapped IPv6 address
    (C{::ffff:192.0.2.7}, from a dual-stack socket) taken as the IPv4
    address it maps; L{None} for what is not an IP address.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


#: Who may send a PROXY header by default: this host only.
DEFAULT_TRUSTED_PROXIES: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass(frozen=True)
class PolicySettings:
    """
    One service's access policy, as plain values.

    @ivar allow: when not empty, only clients in these ranges may connect.
    @ivar deny: clients in these ranges may not connect, even if allowed.
    @ivar maxConnections: the most connections open at once (0: no limit).
    @ivar maxPerSource: the most connections open at once from one client
        address (0: no limit).
    @ivar idleTimeout: seconds without a byte either way after which a
        connection is closed (0: never).
    @ivar trustedProxies: the ranges a PROXY header is believed from, on
        C{haproxy:} endpoints (see L{netd.proxyheader}).
    """

    allow: tuple[Network, ...] = field(default=())
    deny: tuple[Network, ...] = field(default=())
    maxConnections: int = 0
    maxPerSource: int = 0
    idleTimeout: float = 0.0
    trustedProxies: tuple[Network, ...] = DEFAULT_TRUSTED_PROXIES

    def refusal(self, address: Address | None) -> str | None:
        """
        Why a client address is refused by the allow and deny ranges, or
        L{None} when it may connect. Deny wins over allow. Addresses that
        are not IP (UNIX sockets) are left to the file system's permissions.
        """
        if address is None:
            return None
        for network in self.deny:
            if address.version == network.version and address in network:
                return f"denied by {network}"
        if self.allow and not any(
            address.version == network.version and address in network
            for network in self.allow
        ):
            return "not in any allowed range"
        return None


class Policy:
    """
    One service's access policy, changeable at run time.

    @ivar settings: the current L{PolicySettings}; every new connection and
        datagram is judged by the settings of its moment.
    """

    def __init__(self, settings: PolicySettings | None = None) -> None:
        self.settings = settings if settings is not None else PolicySettings()

    def update(self, settings: PolicySettings) -> None:
        """
        Judge new clients by C{settings} from now on. Connections already
        open stay open (even beyond a lowered limit); each keeps the idle
        timeout it started with.
        """
        self.settings = settings


def _hostOf(address: Any) -> Address | None:
    if isinstance(address, IPv4Address | IPv6Address):
        return clientAddress(address.host)
    return None


class RefusedConnection(Protocol):
    """
    What a refused client gets instead of the service's protocol: its
    connection is aborted as soon as it is made.
    """

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        transport.abortConnection()


class PolicedConnection(PassThroughWrapper, TimeoutMixin):
    """
    One accepted connection: counted while open, and closed when idle.

    The idle timer restarts on every chunk received and every write; when
    it runs out the connection is closed, and aborted if it is still open
    after as long again (a peer that reads nothing).
    """

    factory: PolicyFactory
    source: Address | None = None
    idleTimeout = 0.0
    _closingIdle = False

    def callLater(self, period: float, func: Any) -> Any:
        return self.factory.clock.callLater(period, func)

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        if self.idleTimeout > 0 and self.connected:
            self.setTimeout(self.idleTimeout)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.wrappedProtocol.dataReceived(data)

    def write(self, data: bytes) -> None:
        self.resetTimeout()
        super().write(data)

    def timeoutConnection(self) -> None:
        if self._closingIdle:
            self.transport.abortConnection()
            return
        self._closingIdle = True
        self.factory.log.info(
            "{service} {peer} idle for {seconds}s: closing",
            service=self.factory.serviceName,
            peer=describeAddress(self.getPeer()),
            seconds=self.idleTimeout,
        )
        self.transport.loseConnection()
        self.setTimeout(self.idleTimeout)

    def connectionLost(self, reason: Failure) -> None:
        self.setTimeout(None)
        super().connectionLost(reason)


class PolicyFactory(WrappingFactory):
    """
    Wrap a service's factory in its access policy.

    A client the policy refuses gets a L{RefusedConnection}: no protocol of
    the service is built, and the refusal is logged with its reason.

    @ivar active: the connections open now.
    @ivar perSource: how many connections each client address has open.
    """

    protocol = PolicedConnection
    noisy = False
    log = Logger()
    #: The L{netd.budgets.DescriptorBudget} shared by every service, if any.
    budget: Any = None

    def __init__(
        self, serviceName: str, wrappedFactory: Any, policy: Policy, clock: Any
    ) -> None:
        """
        @param serviceName: the netd service, for logs.
        @param wrappedFactory: the factory to build accepted connections with.
        @param policy: the service's L{Policy}.
        @param clock: an L{IReactorTime}, for idle timeouts.
        """
        super().__init__(wrappedFactory)
        self.serviceName = serviceName
        self.policy = policy
        self.clock = clock
        self._refusalLog = ThrottledLog(clock, interval=1.0, lines=10)
        self.perSource: dict[Address, int] = {}

    @property
    def active(self) -> int:
        return len(self.protocols)

    def logPrefix(self) -> str:
        return self.serviceName

    def refusal(self, address: Any) -> str | None:
        """
        Why the policy refuses a new connection from C{address} now, or
        L{None} when it is accepted.
        """
        settings = self.policy.settings
        source = _hostOf(address)
        reason = settings.refusal(source)
        if reason is None and 0 < settings.maxConnections <= self.active:
            reason = f"already {self.active} connections"
        if (
            reason is None
            and source is not None
            and 0 < settings.maxPerSource <= self.perSource.get(source, 0)
        ):
            reason = f"already {self.perSource[source]} connections from there"
        if reason is None and self.budget is not None:
            reason = self.budget.refusal(self.serviceName)
        return reason

    def buildProtocol(
        self, addr: Any, metrics: StreamListenerMetrics = NO_STREAM_METRICS
    ) -> Any:
        """
        Accept or refuse a client, reporting to C{metrics}: its listener's
        (L{netd.metrics.ListenerFactory}).
        """
        reason = self.refusal(addr)
        if reason is not None:
            metrics.refused(reason)
            self._refusalLog.emit(
                self.log.info,
                "{service} refused {peer}: {reason}",
                service=self.serviceName,
                peer=describeAddress(addr),
                reason=reason,
            )
            return RefusedConnection()
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            # The service refused; returning None would break TLS wrappers.
            metrics.refused("service")
            return RefusedConnection()
        wrapped.metrics = metrics  # the connection log reports each connection
        connection = self.protocol(self, wrapped)  # type: ignore[arg-type]
        connection.source = _hostOf(addr)
        connection.idleTimeout = self.policy.settings.idleTimeout
        return connection

    def registerProtocol(self, p: Any) -> None:
        super().registerProtocol(p)
        if self.budget is not None:
            self.budget.opened(self.serviceName)
        if p.source is not None:
            self.perSource[p.source] = self.perSource.get(p.source, 0) + 1

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if self.budget is not None:
            self.budget.closed(self.serviceName)
        if p.source is not None:
            left = self.perSource.pop(p.source) - 1
            if left:
                self.perSource[p.source] = left


class PolicedDatagramProtocol(DatagramProtocol):
    """
    Pass a UDP service only the datagrams its policy's allow and deny
    ranges accept; the others are dropped (and counted), unanswered.

    The connection limits and the idle timeout have no meaning for
    datagrams; per-source reply rates are the service's own
    (L{netd.datagram.PerSourceRateLimiter}).

    @ivar dropped: how many datagrams were refused.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        serviceName: str,
        wrapped: Any,
        policy: Policy,
        clock: Any,
        metrics: DatagramListenerMetrics = NO_DATAGRAM_METRICS,
    ) -> None:
        """
        @param serviceName: the netd service, for logs.
        @param wrapped: the service's own datagram protocol.
        @param policy: the service's L{Policy}.
        @param clock: an L{IReactorTime}, to throttle the log of drops.
        @param metrics: the UDP endpoint's.
        """
        self.metrics = metrics
        self.serviceName = serviceName
        self.wrapped = wrapped
        self.policy = policy
        self.dropped = 0
        self._dropLog = ThrottledLog(clock)

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.wrapped.makeConnection(transport)

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def datagramReceived(self, data: bytes, address: Any) -> None:
        self.metrics.received()
        reason = self.policy.settings.refusal(clientAddress(address[0]))
        if reason is not None:
            self.dropped += 1
            self.metrics.dropped("policy")
            self._dropLog.emit(
                self.log.info,
                "{service} dropped a datagram from {host}: {reason}",
                service=self.serviceName,
                host=address[0],
                reason=reason,
            )
            return
        self.wrapped.datagramReceived(data, address)

    def connectionRefused(self) -> None:
        self.wrapped.connectionRefused()

    def logPrefix(self) -> str:
        return self.serviceName
