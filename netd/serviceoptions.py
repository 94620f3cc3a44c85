# -*- test-case-name: tests.test_tap -*-
"""
The options that services contribute to C{twistd netd}: each service's
endpoint option C{--NAME}, its own C{--NAME-OPTION}s, and how their values
are found on the command line, in the service's table of the config file,
or in the service's defaults (in that order).

L{netd.tap.Options} declares these with L{declareServiceOptions} and
resolves them with L{chooseServices}, L{resolveEndpoints} and
L{resolveServiceOptions}.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from twisted.python import usage

from netd.config import configFlag, configStrings, configValue
from netd.listeners import checkDatagramEndpoint, isDatagramEndpoint
from netd.plugin import INetdService

#: Names no service may take: netd's own options and keys.
RESERVED_NAMES = frozenset({"config", "endpoints", "help"})


def _repeatableOption(key: str, doc: str) -> Any:
    """
    Make the C{opt_NAME_OPTION} handler of a service's repeatable option.
    """

    def opt(self: usage.Options, value: str) -> None:
        self[key].append(value)

    opt.__doc__ = f"{doc} (repeatable)"
    return opt


def _endpointOption(
    serviceName: str, defaults: Iterable[str], enabledByDefault: bool = True
) -> Any:
    """
    Make the C{opt_NAME} handler that collects a service's endpoints.
    """

    def opt(self: usage.Options, endpoint: str) -> None:
        self["endpoints"][serviceName].append(endpoint)

    off = "" if enabledByDefault else f"; off unless --services names {serviceName}"
    opt.__doc__ = (
        f"Serve {serviceName} on this endpoint (repeatable; replaces the "
        f"defaults{off}) [default: {' '.join(defaults)}]"
    )
    return opt


_KINDS = {int: "a whole number", float: "a number"}


def namedCoerce(option: str, coerce: Any) -> Any:
    """
    Wrap an option's coerce function so that a bad value's error names the
    option and quotes the value (C{--echo-udp-rate must be a number, not
    'abc'}), where Twisted would only say that a conversion failed.
    """
    if coerce is None:
        return None

    def coerceNamed(value: str) -> Any:
        try:
            return coerce(value)
        except (TypeError, ValueError) as error:
            kind = _KINDS.get(coerce)
            if kind is not None:
                raise ValueError(f"--{option} must be {kind}, not {value!r}") from None
            raise ValueError(f"--{option}: {error}") from None

    coerceNamed.coerceDoc = getattr(coerce, "coerceDoc", "")  # type: ignore[attr-defined]
    return coerceNamed


def declareServiceOptions(
    services: Iterable[INetdService], reserved: Collection[str] = ()
) -> dict[str, Any]:
    """
    The class attributes that declare every service's options to
    L{usage.Options}: C{optParameters}, C{optFlags}, and an C{opt_} method
    for each endpoint option and repeatable option.

    Values are declared with no default, so that a value missing from the
    command line can be looked for in the config file first.

    @param reserved: global option names no service may be named.
    @raise ValueError: when a service takes a reserved name.
    """
    attributes: dict[str, Any] = {"optParameters": [], "optFlags": []}
    for service in services:
        if service.name in RESERVED_NAMES or service.name in reserved:
            raise ValueError(f"a netd service cannot be named {service.name!r}")
        attributes["opt_" + service.name.replace("-", "_")] = _endpointOption(
            service.name,
            service.defaultEndpoints,
            getattr(service, "enabledByDefault", True),
        )
        for name, _short, default, doc, coerce in _padded(service.optParameters, 5):
            shown = "" if default is None else f" [default: {default!r}]"
            key = f"{service.name}-{name}"
            attributes["optParameters"].append(
                [key, None, None, f"{doc}{shown}", namedCoerce(key, coerce)]
            )
        for name, _short, doc in _padded(service.optFlags, 3):
            attributes["optFlags"].append([f"{service.name}-{name}", None, doc])
        for name, _short, doc in _repeatables(service):
            key = f"{service.name}-{name}"
            attributes["opt_" + key.replace("-", "_")] = _repeatableOption(key, doc)
    return attributes


def repeatableKeys(service: INetdService) -> list[str]:
    """
    The keys of a service's repeatable options (C{echo-foo}), each holding
    a list.
    """
    return [f"{service.name}-{name}" for name, *_ in _repeatables(service)]


def chooseServices(
    chosen: str | None, fileConfig: Mapping[str, Any], available: list[INetdService]
) -> list[INetdService]:
    """
    The services to run: C{--services} (comma-separated), else the config
    file's C{services}, else every available one that is enabled by default
    (L{netd.plugin.INetdService.enabledByDefault}).

    @raise usage.UsageError: naming an unknown service.
    """
    byName = {service.name: service for service in available}
    if chosen is not None:
        names = [name.strip() for name in chosen.split(",")]
    elif "services" in fileConfig:
        names = configStrings("services", fileConfig["services"])
    else:
        return [s for s in available if getattr(s, "enabledByDefault", True)]
    for name in names:
        if name not in byName:
            raise usage.UsageError(
                f"unknown service {name!r} (known: {', '.join(byName)})"
            )
    return [service for service in available if service.name in names]


def resolveEndpoints(
    service: INetdService, given: list[str], table: Mapping[str, Any]
) -> list[str]:
    """
    A service's endpoints: those given on the command line, else its table's
    C{endpoints}, else its defaults; each checked against what it speaks.

    @raise usage.UsageError: for a UDP endpoint of a stream-only service, or
        the reverse, or a malformed UDP endpoint.
    """
    endpoints = given
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


def resolveServiceOptions(
    service: INetdService, commandLine: Mapping[str, Any], table: Mapping[str, Any]
) -> dict[str, Any]:
    """
    A service's own options by their short names: the command line's value,
    else its table's, else the service's default.

    @param commandLine: the parsed options, keyed C{NAME-OPTION}.
    @param table: the service's table of the config file.
    @raise usage.UsageError: for an unknown key in the table, or a value of
        the wrong type.
    """
    known = {"endpoints", "policy"}
    options: dict[str, Any] = {}
    for name, _short, default, _doc, coerce in _padded(service.optParameters, 5):
        known.add(name)
        value = commandLine[f"{service.name}-{name}"]
        if value is None and name in table:
            value = configValue(f"{service.name}.{name}", table[name], coerce)
        options[name] = default if value is None else value
    for name, _short, _doc in _padded(service.optFlags, 3):
        known.add(name)
        value = bool(commandLine[f"{service.name}-{name}"])
        if not value and name in table:
            value = configFlag(f"{service.name}.{name}", table[name])
        options[name] = value
    for name, *_ in _repeatables(service):
        known.add(name)
        values = list(commandLine[f"{service.name}-{name}"])
        if not values and name in table:
            values = configStrings(f"{service.name}.{name}", table[name])
        options[name] = values
    for key in table:
        if key not in known:
            raise usage.UsageError(
                f"unknown key {service.name}.{key!r} in the config file"
            )
    return options


def _padded(rows: Iterable[Iterable[Any]], width: int) -> list[list[Any]]:
    return [(list(row) + [None] * width)[:width] for row in rows]


def _repeatables(service: INetdService) -> list[list[Any]]:
    return _padded(getattr(service, "optRepeatable", ()), 3)
