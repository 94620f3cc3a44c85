# -*- test-case-name: tests.test_policy -*-
"""
The access policy every netd service is served behind: which client
addresses may connect (allow/deny ranges), how many connections at once
(in all, and from one address), and how long a connection may stay idle.

A L{Policy} is one service's; the tap wraps the service's factory in a
L{PolicyFactory} (whose one wrapper per connection also logs it, see
L{netd.connlog}) and each of its datagram protocols in a
L{PolicedDatagramProtocol}, which both consult the policy's current
L{PolicySettings} for every connection or datagram, so that
L{Policy.update} changes them at run time.

Allow and deny ranges are compiled once (L{AddressRules}) into integer
networks and masks, with a bounded cache of verdicts per client host;
without ranges nothing is checked at all.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import udp
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from netd.connlog import ConnectionLoggingFactory, RefusedConnection
from netd.metrics import NO_DATAGRAM_METRICS, DatagramListenerMetrics
from netd.throttledlog import ThrottledLog

__all__ = [
    "DEFAULT_TRUSTED_PROXIES",
    "AddressRules",
    "PolicedDatagramProtocol",
    "Policy",
    "PolicyFactory",
    "PolicySettings",
    "RefusedConnection",
    "clientAddress",
    "parseNetwork",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parseNetwork(text: str) -> Network:
    """
    Parse an address range: C{10.0.0.0/8}, C{2001:db8::/32}, or one
    address (C{192.0.2.7}, C{::1}). Host bits may be set (C{10.1.2.3/8}
    means C{10.0.0.0/8}). A range of IPv4-mapped IPv6 addresses
    (C{::ffff:127.0.0.0/104}) is the IPv4 range it maps (C{127.0.0.0/8}),
    since IPv4 clients are judged as IPv4 addresses however they arrive.

    @raise ValueError: quoting C{text} when it is not a range.
    """
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"expected an address range such as 10.0.0.0/8 or ::1, not {text!r}"
        ) from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


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


def _hostNumber(host: str) -> tuple[int, int] | None:
    """
    A host string as (IP version, address as an integer), an IPv4-mapped
    IPv6 address as the IPv4 address it maps; L{None} for what is not an
    IP address. No L{ipaddress} objects: C{inet_pton} does the parsing.
    """
    if ":" in host:
        address, _, _zone = host.partition("%")
        try:
            number = int.from_bytes(socket.inet_pton(socket.AF_INET6, address))
        except (OSError, ValueError):
            return None
        if number >> 32 == 0xFFFF:
            return 4, number & 0xFFFFFFFF
        return 6, number
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, host))
    except (OSError, ValueError):
        return None


#: A range, compiled: (IP version, network as an integer, mask, its text).
_Compiled = tuple[int, int, int, str]


def _compile(network: Network) -> list[_Compiled]:
    compiled: list[_Compiled] = [
        (
            network.version,
            int(network.network_address),
            int(network.netmask),
            str(network),
        )
    ]
    if isinstance(network, ipaddress.IPv6Network) and _MAPPED.subnet_of(network):
        # An IPv6 range holding every IPv4-mapped address (::/0, ::/64...)
        # holds every IPv4 client too.
        compiled.append((4, 0, 0, str(network)))
    return compiled


class AddressRules:
    """
    Allow and deny ranges compiled for speed: each range an integer
    network and mask, and the verdict for each client host remembered (up
    to C{cacheSize} hosts, the oldest forgotten first), so that a client
    seen before costs one dictionary look-up.

    @ivar cacheSize: the most hosts whose verdict is remembered.
    """

    def __init__(
        self,
        allow: tuple[Network, ...],
        deny: tuple[Network, ...],
        cacheSize: int = 4096,
    ) -> None:
        """
        @param allow: when not empty, only hosts in these ranges pass.
        @param deny: hosts in these ranges do not pass, even if allowed.
        @param cacheSize: the most verdicts remembered.
        """
        self._allow = [rule for network in allow for rule in _compile(network)]
        self._deny = [rule for network in deny for rule in _compile(network)]
        self.cacheSize = cacheSize
        self._verdicts: dict[str, str | None] = {}

    def refusal(self, host: str) -> str | None:
        """
        Why the ranges refuse a client host (its address as text), or
        L{None} when they let it in, or when it is not an IP address (a
        UNIX socket's peer is left to the file system's permissions).
        """
        verdicts = self._verdicts
        try:
            return verdicts[host]
        except KeyError:
            pass
        number = _hostNumber(host)
        verdict = None if number is None else self.refusalOf(*number)
        if len(verdicts) >= self.cacheSize:
            del verdicts[next(iter(verdicts))]
        verdicts[host] = verdict
        return verdict

    def refusalOf(self, version: int, number: int) -> str | None:
        """
        Why the ranges refuse an address (IP version, address as an
        integer), or L{None}. Deny wins over allow.
        """
        for ruleVersion, network, mask, text in self._deny:
            if ruleVersion == version and number & mask == network:
                return f"denied by {text}"
        if self._allow and not any(
            ruleVersion == version and number & mask == network
            for ruleVersion, network, mask, _text in self._allow
        ):
            return "not in any allowed range"
        return None


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
    @ivar rules: C{allow} and C{deny} compiled (L{AddressRules}), or
        L{None} when there are none, and so nothing to check.
    """

    allow: tuple[Network, ...] = field(default=())
    deny: tuple[Network, ...] = field(default=())
    maxConnections: int = 0
    maxPerSource: int = 0
    idleTimeout: float = 0.0
    trustedProxies: tuple[Network, ...] = DEFAULT_TRUSTED_PROXIES
    rules: AddressRules | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.allow or self.deny:
            object.__setattr__(self, "rules", AddressRules(self.allow, self.deny))

    def refusal(self, address: Address | None) -> str | None:
        """
        Why a client address is refused by the allow and deny ranges, or
        L{None} when it may connect. Deny wins over allow. Addresses that
        are not IP (UNIX sockets) are left to the file system's permissions.
        """
        if address is None or self.rules is None:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return self.rules.refusalOf(address.version, int(address))


class Policy:
    """
    One service's access policy, changeable at run time.

    @ivar settings: the current L{PolicySettings}; every new connection and
        datagram is judged by the settings of its moment.
    """

    def __init__(self, settings: PolicySettings | None = None) -> None:
        self.settings = settings if settings is not None else PolicySettings()
        self._watchers: list[Callable[[PolicySettings], None]] = []

    def update(self, settings: PolicySettings) -> None:
        """
        Judge new clients by C{settings} from now on. Connections already
        open stay open (even beyond a lowered limit); each keeps the idle
        timeout it started with.
        """
        self.settings = settings
        for watcher in self._watchers:
            watcher(settings)

    def watch(self, watcher: Callable[[PolicySettings], None]) -> None:
        """
        Call C{watcher} with the new settings on every L{update}.
        """
        self._watchers.append(watcher)


class PolicyFactory(ConnectionLoggingFactory):
    """
    Wrap a service's factory in its access policy, and log its
    connections (a L{ConnectionLoggingFactory} with a policy: one wrapper
    does both).

    A client the policy refuses gets a L{RefusedConnection}: no protocol of
    the service is built, and the refusal is logged with its reason.
    """

    def __init__(
        self, serviceName: str, wrappedFactory: Any, policy: Policy, clock: Any
    ) -> None:
        """
        @param serviceName: the netd service, for logs.
        @param wrappedFactory: the factory to build accepted connections with.
        @param policy: the service's L{Policy}.
        @param clock: an L{IReactorTime}, for idle timeouts and durations.
        """
        super().__init__(serviceName, wrappedFactory, clock, policy)


class PolicedDatagramProtocol(DatagramProtocol):
    """
    Pass a UDP service only the datagrams its policy's allow and deny
    ranges accept; the others are dropped (and counted), unanswered.

    The connection limits and the idle timeout have no meaning for
    datagrams; per-source reply rates are the service's own
    (L{netd.datagram.PerSourceRateLimiter}).

    While the policy has no ranges, a UDP port of the reactor's own hands
    datagrams straight to the service's protocol: this layer steps aside
    (and back in when a reload adds ranges), so that it costs nothing.

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
        @param metrics: the UDP endpoint's: a datagram dropped here is
            counted as received and dropped (the service counts the others).
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
        if type(transport) is udp.Port:
            self.policy.watch(self._route)
            self._route(self.policy.settings)

    def _route(self, settings: PolicySettings) -> None:
        """
        Have the port deliver datagrams to this layer only while there are
        ranges to check.
        """
        self.transport.protocol = self if settings.rules is not None else self.wrapped

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def datagramReceived(self, data: bytes, address: Any) -> None:
        rules = self.policy.settings.rules
        if rules is not None and (reason := rules.refusal(address[0])) is not None:
            self.dropped += 1
            self.metrics.received()
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
