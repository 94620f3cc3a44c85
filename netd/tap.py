# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's options and service: C{twistd -n netd [options]}.

Services come from plugins (L{netd.plugin.discoverServices}): each adds its
endpoint option C{--NAME} and its own options C{--NAME-OPTION}, and a table
C{[NAME]} to the config file.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterable
from typing import Any

from twisted.python import usage

from netd.budgets import (
    MIN_PER_SOURCE,
    listenBacklog,
    perSourceShare,
    planDescriptors,
)
from netd.buffers import DAEMON, DEFAULT_MAX_BUFFERED, returnFreedBuffers
from netd.config import configStrings, configValue, loadConfig
from netd.endpoints import streamEndpoint
from netd.lifecycle import DEFAULT_GRACE, NetdService, RunningService
from netd.listeners import (
    DatagramListener,
    StartupError,
    StreamListener,
    isDatagramEndpoint,
)
from netd.metrics import NO_METRICS
from netd.plugin import INetdService, discoverServices
from netd.policy import (
    DEFAULT_TRUSTED_PROXIES,
    PolicedDatagramProtocol,
    Policy,
    PolicyFactory,
    PolicySettings,
    parseNetwork,
)
from netd.prometheus import ListenerFactory, PrometheusMetrics
from netd.serviceoptions import (
    chooseServices,
    declareServiceOptions,
    namedCoerce,
    repeatableKeys,
    resolveEndpoints,
    resolveServiceOptions,
)
from netd.systemd import Notifier
from netd.worker import Worker
from netd.workers import Supervisor, resolveWorkers

#: The access policy's keys: global options, and keys of every service's
#: table in the config file (see L{netd.policy.PolicySettings}).
POLICY_KEYS = (
    "allow",
    "deny",
    "max-connections",
    "max-per-source",
    "idle-timeout",
    "trusted-proxy",
)
#: max-per-source: None is a share of max-connections (L{perSourceShare}).
_POLICY_DEFAULTS = {
    "max-connections": 1000,
    "max-per-source": None,
    "idle-timeout": 300.0,
}
_GLOBAL_KEYS = frozenset(
    {"services", "grace", "metrics", "workers", "max-buffered", *POLICY_KEYS}
)


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
        [
            "services",
            None,
            None,
            "Comma-separated services to run [default: every installed "
            "service but those off by default].",
        ],
        [
            "max-connections",
            None,
            None,
            "Most connections open at once to each service, 0 for no limit "
            f"[default: {_POLICY_DEFAULTS['max-connections']}].",
            namedCoerce("max-connections", int),
        ],
        [
            "max-per-source",
            None,
            None,
            "Most connections open at once to each service from one client "
            "address, 0 for no limit [default: a tenth of --max-connections, "
            f"at least {MIN_PER_SOURCE}].",
            namedCoerce("max-per-source", int),
        ],
        [
            "idle-timeout",
            None,
            None,
            "Close a connection after this many seconds without a byte either "
            f"way, 0 for never [default: {_POLICY_DEFAULTS['idle-timeout']}].",
            namedCoerce("idle-timeout", float),
        ],
        [
            "grace",
            None,
            None,
            "Seconds connections in flight get to finish when netd stops "
            f"[default: {DEFAULT_GRACE:g}].",
            namedCoerce("grace", float),
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics at /metrics on this stream endpoint, "
            "e.g. tcp:9109:interface=127.0.0.1 [default: off].",
        ],
        [
            "workers",
            None,
            None,
            "Worker processes serving the same listeners under one supervising "
            "parent [default: 1: no parent, one process].",
            namedCoerce("workers", int),
        ],
        [
            "max-buffered",
            None,
            None,
            "Bytes of client data all services together may hold in memory "
            f"(large requests, unread replies) [default: {DEFAULT_MAX_BUFFERED}].",
            namedCoerce("max-buffered", int),
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
        attributes = declareServiceOptions(found, reserved=_GLOBAL_KEYS)
        self: Options = super().__new__(type(cls.__name__, (cls,), attributes))
        self.available = found
        return self

    def __init__(self, services: Iterable[INetdService] | None = None) -> None:
        super().__init__()
        self["endpoints"] = {service.name: [] for service in self.available}
        self["allow"] = []
        self["deny"] = []
        self["trusted-proxy"] = []
        for service in self.available:
            for key in repeatableKeys(service):
                self[key] = []

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
                raise usage.UsageError(describeUsageError(error)) from None
            raise SystemExit(
                f"netd: {describeUsageError(error)} "
                "(twistd netd --help lists the options)"
            ) from None

    def opt_allow(self, cidr: str) -> None:
        """Only clients in this range may connect (repeatable; e.g. 10.0.0.0/8, ::1)"""
        self["allow"].append(cidr)

    def opt_deny(self, cidr: str) -> None:
        """Clients in this range may not connect, even if allowed (repeatable)"""
        self["deny"].append(cidr)

    def opt_trusted_proxy(self, cidr: str) -> None:
        """Believe PROXY headers only from here (repeatable) [default: loopback]"""
        self["trusted-proxy"].append(cidr)

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

        if self["metrics"] is None and "metrics" in fileConfig:
            self["metrics"] = configValue("metrics", fileConfig["metrics"], None)
        if self["metrics"] is not None and isDatagramEndpoint(self["metrics"]):
            raise usage.UsageError(
                f"--metrics needs a stream endpoint, not {self['metrics']!r}"
            )

        self["workers"] = resolveWorkers(self["workers"], fileConfig)
        if self["metrics"] is not None and self["workers"] > 1:
            raise usage.UsageError(
                "--metrics cannot be combined with --workers above 1 yet: each "
                f"worker would count alone (--workers {self['workers']}, "
                f"--metrics {self['metrics']!r})"
            )
        if self["max-buffered"] is None:
            self["max-buffered"] = configValue(
                "max-buffered",
                fileConfig.get("max-buffered", DEFAULT_MAX_BUFFERED),
                int,
            )
        if self["max-buffered"] < 1024 * 1024:
            raise usage.UsageError(
                f"--max-buffered must be at least 1 MiB, not {self['max-buffered']!r}"
            )

        chosen = chooseServices(self["services"], fileConfig, self.available)
        self["services"] = chosen
        self["serviceOptions"] = {}
        self["policies"] = {}
        for service in chosen:
            table = fileConfig.get(service.name, {})
            self["endpoints"][service.name] = resolveEndpoints(
                service, self["endpoints"][service.name], table
            )
            self["serviceOptions"][service.name] = resolveServiceOptions(
                service, self, table
            )
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
            if value is not None and value < 0:
                raise usage.UsageError(f"{key} must not be negative, not {value!r}")
            values[key] = value
        if values["max-per-source"] is None:
            values["max-per-source"] = perSourceShare(values["max-connections"])
        allow = self["allow"]
        for prefix, level in reversed(levels):
            if not allow and "allow" in level:
                allow = configStrings(prefix + "allow", level["allow"])
        trusted = self["trusted-proxy"]
        for prefix, level in reversed(levels):
            if not trusted and "trusted-proxy" in level:
                trusted = configStrings(
                    prefix + "trusted-proxy", level["trusted-proxy"]
                )
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
            trustedProxies=(
                tuple(_networks("trusted-proxy", trusted))
                if trusted
                else DEFAULT_TRUSTED_PROXIES
            ),
        )


def _networks(option: str, ranges: list[str]) -> list[Any]:
    try:
        return [parseNetwork(text) for text in ranges]
    except ValueError as error:
        raise usage.UsageError(f"--{option}: {error}") from None


def describeUsageError(error: usage.UsageError) -> str:
    """
    A usage error as one line for the operator: Twisted's own words for a
    value its coerce function refused are dropped, since netd's coerce
    functions name the option and the value themselves.
    """
    text = str(error)
    prefix = "Parameter type enforcement failed: "
    return text[len(prefix) :] if text.startswith(prefix) else text


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


def makeService(config: Options, reactor: Any = None) -> NetdService | Supervisor:
    """
    Build netd: one listener service per endpoint of every chosen service,
    under a L{NetdService} that handles readiness, reload and graceful stop;
    with C{--workers} above 1, the L{Supervisor} of that many workers, each
    of which builds netd again (L{netd.workers}).

    @param config: parsed L{Options}.
    @param reactor: the reactor to listen with; the global one by default,
        and then start-up errors are reported to the operator as one line,
        C{SIGHUP} reloads, readiness goes to C{$NOTIFY_SOCKET}, and
        C{--workers} runs workers (with another reactor, one process); when
        no reactor is installed yet (no C{twistd -r NAME}), netd's own
        (L{netd.reactor.NetdReactor}) is installed first.
    @raise StartupError: when an endpoint cannot be built.
    """
    handleSignals = reactor is None
    if reactor is None:
        from netd.reactor import installDefault

        installDefault()  # unless twistd -r chose another
        from twisted.internet import reactor as _reactor

        reactor = _reactor
        returnFreedBuffers()
        if not getattr(sys.excepthook, "reportsStartupErrors", False):
            sys.excepthook = _reportStartupErrors(sys.excepthook)

    worker, notifier = None, None
    if handleSignals:
        worker = Worker.fromEnvironment(reactor, streamEndpoint)
        notifier = Notifier.fromEnvironment() if worker is None else worker.notifier
        if worker is None and config["workers"] > 1:
            return Supervisor(config, reactor, streamEndpoint, notifier)
    metrics = PrometheusMetrics(reactor) if config["metrics"] else NO_METRICS
    netd = NetdService(
        reactor,
        {
            "grace": config["grace"],
            "metrics": config["metrics"],
            "max-buffered": config["max-buffered"],
        },
        reread=config.reread if worker is None else worker.reread(config.reread),
        notifier=notifier,
        handleSignals=handleSignals,
        metrics=metrics,
    )
    if worker is not None:
        worker.start(config)
    budget = planDescriptors(config, raiseLimit=handleSignals)
    backlog = listenBacklog()
    DAEMON.limit = config["max-buffered"]
    netd.liveSettings["max-buffered"] = DAEMON.setLimit
    for service in config["services"]:
        options = config["serviceOptions"][service.name]
        serviceMetrics = metrics.service(service.name)
        running = RunningService(
            service,
            dict(options),
            list(config["endpoints"][service.name]),
            policy=Policy(config["policies"][service.name]),
        )
        netd.served[service.name] = running
        for description in running.endpoints:
            if isDatagramEndpoint(description):
                datagramMetrics = serviceMetrics.datagramListener(description)
                protocol = _make(
                    service.makeDatagramProtocol, options, reactor, datagramMetrics
                )
                running.datagramProtocols.append(protocol)
                protocol = PolicedDatagramProtocol(
                    service.name, protocol, running.policy, reactor, datagramMetrics
                )
                listener: Any = (
                    DatagramListener if worker is None else worker.datagramListener
                )(service.name, description, reactor, protocol)
            else:
                if running.factory is None:
                    running.factory = policed = PolicyFactory(
                        service.name,
                        _make(service.makeFactory, options, reactor, serviceMetrics),
                        running.policy,
                        reactor,
                    )
                    policed.budget = budget
                listener = StreamListener(
                    service.name,
                    description,
                    streamEndpoint(service.name, description, reactor, backlog)
                    if worker is None
                    else worker.streamEndpoint(service.name, description),
                    policed
                    if metrics is NO_METRICS
                    else ListenerFactory(
                        policed, serviceMetrics.streamListener(description)
                    ),
                )
                listeningNote = getattr(service, "listeningNote", None)
                if listeningNote is not None:
                    listener.note = listeningNote(options) or ""
            listener.setServiceParent(netd)
    if isinstance(metrics, PrometheusMetrics):
        StreamListener(
            "metrics",
            config["metrics"],
            streamEndpoint("metrics", config["metrics"], reactor),
            metrics.site(),
        ).setServiceParent(netd)
    return netd


def _make(build: Any, options: Any, reactor: Any, metrics: Any) -> Any:
    """
    Call a plugin's C{makeFactory} or C{makeDatagramProtocol}, with
    C{metrics} when it takes them (see L{INetdService}).
    """
    if "metrics" in inspect.signature(build).parameters:
        return build(options, reactor, metrics=metrics)
    return build(options, reactor)
