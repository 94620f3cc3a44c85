# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's options and service: C{twistd -n netd [options]}.

Services come from plugins (L{netd.plugin.discoverServices}): each adds its
endpoint option C{--NAME} and its own options C{--NAME-OPTION}, and a table
C{[NAME]} to the config file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.python import usage

from netd.config import configFlag, configStrings, configValue, loadConfig
from netd.lifecycle import DEFAULT_GRACE, NetdService, RunningService
from netd.listeners import (
    DatagramListener,
    StartupError,
    StreamListener,
    checkDatagramEndpoint,
    isDatagramEndpoint,
)
from netd.plugin import INetdService, discoverServices
from netd.policy import (
    PolicedDatagramProtocol,
    Policy,
    PolicyFactory,
    PolicySettings,
    parseNetwork,
)
from netd.systemd import Notifier, familyMismatch, inheritedNames

#: The access policy's keys: global options, and keys of every service's
#: table in the config file (see L{netd.policy.PolicySettings}).
POLICY_KEYS = ("allow", "deny", "max-connections", "max-per-source", "idle-timeout")
_POLICY_DEFAULTS = {"max-connections": 1000, "max-per-source": 0, "idle-timeout": 300.0}
_GLOBAL_KEYS = frozenset({"services", "grace", *POLICY_KEYS})


def _repeatableOption(key: str, doc: str) -> Any:
    """
    Make the C{opt_NAME_OPTION} handler of a service's repeatable option.
    """

    def opt(self: Options, value: str) -> None:
        self[key].append(value)

    opt.__doc__ = f"{doc} (repeatable)"
    return opt


def _endpointOption(serviceName: str, defaults: Iterable[str]) -> Any:
    """
    Make the C{opt_NAME} handler that collects a service's endpoints.
    """

    def opt(self: Options, endpoint: str) -> None:
        self["endpoints"][serviceName].append(endpoint)

    opt.__doc__ = (
        f"Serve {serviceName} on this endpoint (repeatable; replaces the "
        f"defaults) [default: {' '.join(defaults)}]"
    )
    return opt


class Options(usage.Options):
    """
    Options for C{twistd netd}, built from the installed service plugins.

    After parsing, the mapping holds C{services} (the chosen
    L{INetdService} providers), C{endpoints} (service name to endpoint
    strings) and C{serviceOptions} (service name to its options by their
    short names).
    """

    synopsis = "[options]"
    longdesc = (
        "Serve echo, getfile, clock and objects (and any other installed netd "
        "service) on any number of endpoints. By default every service "
        "listens on 127.0.0.1 only. The command line wins over --config."
    )

    available: list[INetdService]

    optParameters = [
        ["config", "c", None, "Read options from this TOML file."],
        ["services", None, None, "Comma-separated services to run [default: all]."],
        [
            "max-connections",
            None,
            None,
            "Most connections open at once to each service, 0 for no limit "
            f"[default: {_POLICY_DEFAULTS['max-connections']}].",
            int,
        ],
        [
            "max-per-source",
            None,
            None,
            "Most connections open at once to each service from one client "
            "address, 0 for no limit [default: 0].",
            int,
        ],
        [
            "idle-timeout",
            None,
            None,
            "Close a connection after this many seconds without a byte either "
            f"way, 0 for never [default: {_POLICY_DEFAULTS['idle-timeout']}].",
            float,
        ],
        [
            "grace",
            None,
            None,
            "Seconds connections in flight get to finish when netd stops "
            f"[default: {DEFAULT_GRACE:g}].",
            float,
        ],
    ]

    argv: list[str] = []

    def __new__(cls, services: Iterable[INetdService] | None = None) -> Options:
        """
        Give this instance a class of its own that declares each service's
        options, since L{usage.Options} gathers options from the class.

        @param services: the services to offer; by default every installed one.
        """
        found = list(discoverServices() if services is None else services)
        attributes: dict[str, Any] = {"optParameters": [], "optFlags": []}
        for service in found:
            if service.name in _GLOBAL_KEYS | {"config", "endpoints", "help"}:
                raise ValueError(f"a netd service cannot be named {service.name!r}")
            attributes["opt_" + service.name.replace("-", "_")] = _endpointOption(
                service.name, service.defaultEndpoints
            )
            for name, _short, default, doc, *_ in _padded(service.optParameters, 5):
                shown = "" if default is None else f" [default: {default!r}]"
                attributes["optParameters"].append(
                    [f"{service.name}-{name}", None, None, f"{doc}{shown}"]
                    + [_coerceOf(service, name)]
                )
            for name, _short, doc in _padded(service.optFlags, 3):
                attributes["optFlags"].append([f"{service.name}-{name}", None, doc])
            for name, _short, doc in _repeatables(service):
                key = f"{service.name}-{name}"
                attributes["opt_" + key.replace("-", "_")] = _repeatableOption(key, doc)
        self: Options = super().__new__(type(cls.__name__, (cls,), attributes))
        self.available = found
        return self

    def __init__(self, services: Iterable[INetdService] | None = None) -> None:
        super().__init__()
        self["endpoints"] = {service.name: [] for service in self.available}
        self["allow"] = []
        self["deny"] = []
        for service in self.available:
            for name, *_ in _repeatables(service):
                self[f"{service.name}-{name}"] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse as L{usage.Options} does, and remember the command line so
        that L{reread} can parse it again; under twistd, a mistake ends
        start-up with one line rather than twistd's whole usage text first.
        """
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            if self.parent is None:
                raise
            raise SystemExit(
                f"twistd netd: {error} (twistd netd --help lists the options)"
            ) from None

    def opt_allow(self, cidr: str) -> None:
        """Only clients in this range may connect (repeatable; e.g. 10.0.0.0/8, ::1)"""
        self["allow"].append(cidr)

    def opt_deny(self, cidr: str) -> None:
        """Clients in this range may not connect, even if allowed (repeatable)"""
        self["deny"].append(cidr)

    def reread(self) -> Options:
        """
        Parse the same command line again, reading the config file anew
        (for a reload): the command line still wins.

        @raise usage.UsageError: when the configuration is now wrong.
        """
        fresh = Options(self.available)
        fresh.parseOptions(self.argv)
        return fresh

    def postOptions(self) -> None:
        """
        Merge the config file under the command line, fill in defaults, and
        check every value.
        """
        fileConfig = loadConfig(self["config"]) if self["config"] else {}
        byName = {service.name: service for service in self.available}
        for key, value in fileConfig.items():
            if key in byName and not isinstance(value, dict):
                raise usage.UsageError(
                    f"{key} must be a table ([{key}]) in the config file, not {value!r}"
                )
            if key not in _GLOBAL_KEYS and key not in byName:
                raise usage.UsageError(f"unknown key {key!r} in the config file")

        if self["grace"] is None:
            self["grace"] = (
                configValue("grace", fileConfig["grace"], float)
                if "grace" in fileConfig
                else DEFAULT_GRACE
            )
        if not 0 <= self["grace"] < float("inf"):
            raise usage.UsageError(
                f"--grace must be a number of seconds, not {self['grace']!r}"
            )

        chosen = self._chosenServices(fileConfig, byName)
        self["services"] = chosen
        self["serviceOptions"] = {}
        self["policies"] = {}
        for service in chosen:
            table = fileConfig.get(service.name, {})
            self["endpoints"][service.name] = self._endpoints(service, table)
            self["serviceOptions"][service.name] = self._serviceOptions(service, table)
            service.validate(self["serviceOptions"][service.name])
            validateEndpoints = getattr(service, "validateEndpoints", None)
            if validateEndpoints is not None:
                validateEndpoints(
                    self["serviceOptions"][service.name],
                    self["endpoints"][service.name],
                )
            self["policies"][service.name] = self._policySettings(
                service.name, table, fileConfig
            )

    def _policySettings(
        self, serviceName: str, table: dict[str, Any], fileConfig: dict[str, Any]
    ) -> PolicySettings:
        """
        A service's access policy. Deny ranges add up from the command line,
        the service's table and the file's top level; every other key takes
        the first of those that sets it.
        """
        policy = table.get("policy", {})
        if not isinstance(policy, dict):
            raise usage.UsageError(
                f"{serviceName}.policy must be a table, not {policy!r}"
            )
        for key in policy:
            if key not in POLICY_KEYS:
                raise usage.UsageError(
                    f"unknown key {serviceName}.policy.{key!r} in the config file"
                )
        levels = [("", fileConfig), (f"{serviceName}.policy.", policy)]
        values: dict[str, Any] = {}
        for key in ("max-connections", "max-per-source", "idle-timeout"):
            coerce = float if key == "idle-timeout" else int
            value = self[key]
            for prefix, level in reversed(levels):
                if value is None and key in level:
                    value = configValue(prefix + key, level[key], coerce)
            value = _POLICY_DEFAULTS[key] if value is None else value
            if value < 0:
                raise usage.UsageError(f"{key} must not be negative, not {value!r}")
            values[key] = value
        allow = self["allow"]
        for prefix, level in reversed(levels):
            if not allow and "allow" in level:
                allow = configStrings(prefix + "allow", level["allow"])
        deny = list(self["deny"])
        for prefix, level in levels:
            if "deny" in level:
                deny += configStrings(prefix + "deny", level["deny"])
        return PolicySettings(
            allow=tuple(_networks("allow", allow)),
            deny=tuple(_networks("deny", deny)),
            maxConnections=values["max-connections"],
            maxPerSource=values["max-per-source"],
            idleTimeout=values["idle-timeout"],
        )

    def _chosenServices(
        self, fileConfig: dict[str, Any], byName: dict[str, INetdService]
    ) -> list[INetdService]:
        if self["services"] is not None:
            names = [name.strip() for name in self["services"].split(",")]
        elif "services" in fileConfig:
            names = configStrings("services", fileConfig["services"])
        else:
            return list(self.available)
        for name in names:
            if name not in byName:
                raise usage.UsageError(
                    f"unknown service {name!r} (known: {', '.join(byName)})"
                )
        return [service for service in self.available if service.name in names]

    def _endpoints(self, service: INetdService, table: dict[str, Any]) -> list[str]:
        endpoints = self["endpoints"][service.name]
        if not endpoints and "endpoints" in table:
            endpoints = configStrings(f"{service.name}.endpoints", table["endpoints"])
        if not endpoints:
            endpoints = list(service.defaultEndpoints)
        for description in endpoints:
            if isDatagramEndpoint(description):
                if not service.datagram:
                    raise usage.UsageError(
                        f"{service.name} does not speak UDP, not {description!r}"
                    )
                checkDatagramEndpoint(description)
            elif not service.stream:
                raise usage.UsageError(
                    f"{service.name} speaks only UDP (udp:PORT), not {description!r}"
                )
        return endpoints

    def _serviceOptions(
        self, service: INetdService, table: dict[str, Any]
    ) -> dict[str, Any]:
        known = {"endpoints", "policy"}
        options: dict[str, Any] = {}
        for name, _short, default, _doc, coerce in _padded(service.optParameters, 5):
            known.add(name)
            value = self[f"{service.name}-{name}"]
            if value is None and name in table:
                value = configValue(f"{service.name}.{name}", table[name], coerce)
            options[name] = default if value is None else value
        for name, _short, _doc in _padded(service.optFlags, 3):
            known.add(name)
            value = bool(self[f"{service.name}-{name}"])
            if not value and name in table:
                value = configFlag(f"{service.name}.{name}", table[name])
            options[name] = value
        for name, *_ in _repeatables(service):
            known.add(name)
            values = list(self[f"{service.name}-{name}"])
            if not values and name in table:
                values = configStrings(f"{service.name}.{name}", table[name])
            options[name] = values
        for key in table:
            if key not in known:
                raise usage.UsageError(
                    f"unknown key {service.name}.{key!r} in the config file"
                )
        return options


def _networks(option: str, ranges: list[str]) -> list[Any]:
    try:
        return [parseNetwork(text) for text in ranges]
    except ValueError as error:
        raise usage.UsageError(f"--{option}: {error}") from None


def _padded(rows: Iterable[Iterable[Any]], width: int) -> list[list[Any]]:
    return [(list(row) + [None] * width)[:width] for row in rows]


def _repeatables(service: INetdService) -> list[list[Any]]:
    return _padded(getattr(service, "optRepeatable", ()), 3)


def _coerceOf(service: INetdService, name: str) -> Any:
    for row in _padded(service.optParameters, 5):
        if row[0] == name:
            return row[4]
    return None


def _reportStartupErrors(previous: Any) -> Any:
    """
    Make a C{sys.excepthook} that prints a L{StartupError} as one line.

    twistd lets exceptions from C{makeService} and from starting services
    escape as tracebacks; for netd's own start-up errors the operator gets
    the message alone.
    """

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if isinstance(value, StartupError):
            (sys.__stderr__ or sys.stderr).write(f"netd: {value}\n")
        else:
            previous(kind, value, tb)

    hook.reportsStartupErrors = True  # type: ignore[attr-defined]
    return hook


def makeService(config: Options, reactor: Any = None) -> NetdService:
    """
    Build netd: one listener service per endpoint of every chosen service,
    under a L{NetdService} that handles readiness, reload and graceful stop.

    @param config: parsed L{Options}.
    @param reactor: the reactor to listen with; the global one by default,
        and then start-up errors are reported to the operator as one line,
        C{SIGHUP} reloads and readiness goes to C{$NOTIFY_SOCKET}; when no
        reactor is installed yet (no C{twistd -r NAME}), netd's own
        (L{netd.reactor.NetdReactor}) is installed first.
    @raise StartupError: when an endpoint cannot be built.
    """
    handleSignals = reactor is None
    if reactor is None:
        from netd.reactor import installDefault

        installDefault()  # unless twistd -r chose another
        from twisted.internet import reactor as _reactor

        reactor = _reactor
        if not getattr(sys.excepthook, "reportsStartupErrors", False):
            sys.excepthook = _reportStartupErrors(sys.excepthook)

    netd = NetdService(
        reactor,
        {"grace": config["grace"]},
        reread=config.reread,
        notifier=Notifier.fromEnvironment() if handleSignals else None,
        handleSignals=handleSignals,
    )
    for service in config["services"]:
        options = config["serviceOptions"][service.name]
        running = RunningService(
            service,
            dict(options),
            list(config["endpoints"][service.name]),
            policy=Policy(config["policies"][service.name]),
        )
        netd.served[service.name] = running
        for description in running.endpoints:
            if isDatagramEndpoint(description):
                protocol = service.makeDatagramProtocol(options, reactor)
                running.datagramProtocols.append(protocol)
                protocol = PolicedDatagramProtocol(
                    service.name, protocol, running.policy, reactor
                )
                listener: Any = DatagramListener(
                    service.name, description, reactor, protocol
                )
            else:
                if running.factory is None:
                    running.factory = PolicyFactory(
                        service.name,
                        service.makeFactory(options, reactor),
                        running.policy,
                        reactor,
                    )
                listener = StreamListener(
                    service.name,
                    description,
                    _streamEndpoint(service.name, description, reactor),
                    running.factory,
                )
            listener.setServiceParent(netd)
    return netd


def _streamEndpoint(serviceName: str, description: str, reactor: Any) -> Any:
    """
    Build a stream endpoint; C{haproxy:ENDPOINT} gets netd's PROXY header
    reader (L{netd.proxyheader}), which hands the service the real client,
    and C{tls:} is always netd's (Twisted registers a C{tls:} of its own).
    """
    kind, _, inner = description.partition(":")
    kind = kind.lower()
    try:
        if kind == "haproxy":
            from netd.proxyheader import ProxiedEndpoint

            return ProxiedEndpoint(
                _streamEndpoint(serviceName, inner, reactor), reactor
            )
        if kind == "tls":
            from netd.tls import parseTLSEndpoint

            return parseTLSEndpoint(reactor, description)
        endpoint = serverFromString(reactor, description)
    except StartupError:
        raise
    except Exception as error:
        if kind == "systemd" and isinstance(error, KeyError | IndexError):
            raise StartupError(
                f"{serviceName}: no inherited socket for {description!r} "
                f"(inherited: {inheritedNames()})"
            ) from error
        raise StartupError(
            f"{serviceName}: bad endpoint {description!r}: {error}"
        ) from error
    if isinstance(endpoint, AdoptedStreamServerEndpoint):
        problem = familyMismatch(endpoint.fileno, endpoint.addressFamily)
        if problem is not None:
            raise StartupError(f"{serviceName}: {description!r}: {problem}")
    return endpoint
