# -*- test-case-name: tests.services.objects.test_objects_service -*-
"""
The objects service's plugin: C{--objects}, C{--objects-authkey-file},
C{--objects-handler}, C{--objects-allow}, C{--objects-max-bytes},
C{--objects-max-pending}, C{--objects-max-reply-bytes}, C{--objects-workers},
C{--objects-timeout}, C{--objects-worker-memory},
C{--objects-handshake-timeout} and
C{--objects-dangerously-allow-unauthenticated}.

The authkey comes from a file or the environment variable
C{NETD_OBJECTS_AUTHKEY}, never from the command line, where C{ps} shows it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.python.usage import UsageError

from netd.metrics import NO_SERVICE_METRICS, ServiceMetrics
from netd.plugin import ServicePlugin

AUTHKEY_VARIABLE = "NETD_OBJECTS_AUTHKEY"


def _isLoopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def isPrivateEndpoint(description: str) -> bool:
    """
    Whether only this host, or only clients holding a certificate, can reach
    a listener on C{description}: a loopback C{interface=}, a UNIX socket,
    or netd's C{tls:} endpoint with C{clientCA=} (mutual TLS).
    For C{systemd:}, the address of the socket the service manager handed
    over decides; unknown endpoint types count as public, and so does any
    C{haproxy:} endpoint, whatever it listens on: its clients are the
    proxy's, which are never only this host's.
    """
    from netd.listeners import _splitEndpoint

    kind, *arguments = _splitEndpoint(description)
    kind = kind.lower()
    if kind == "unix":
        return True
    if kind == "haproxy":
        return False
    keywords = dict(argument.split("=", 1) for argument in arguments if "=" in argument)
    positional = [argument for argument in arguments if "=" not in argument]
    if kind == "tls" and keywords.get("clientCA"):
        return True
    interface = keywords.get("interface", "")
    if kind in ("tcp", "tcp6") and not interface and len(positional) >= 3:
        interface = positional[2]
    if kind in ("tcp", "tcp6", "ssl", "tls"):
        return _isLoopback(interface)
    if kind == "systemd":
        return _isPrivateInherited(keywords)
    return False


def _isPrivateInherited(keywords: dict[str, str]) -> bool:
    """
    Whether the socket a C{systemd:} endpoint adopts is a loopback or UNIX
    one. A socket that was not handed over counts as private here: the
    endpoint then fails to start with its own, clearer message.
    """
    from netd.systemd import inheritedDescriptor, inheritedHost

    index = keywords.get("index")
    try:
        descriptor = inheritedDescriptor(
            keywords.get("name"), int(index) if index is not None else None
        )
    except (LookupError, ValueError, AssertionError):
        return True
    host = inheritedHost(descriptor)
    return host is None or _isLoopback(host)


def _checkName(option: str, value: str) -> None:
    module, sep, qualname = value.partition(":")
    if not (sep and module and qualname):
        raise UsageError(f"{option} expects MODULE:QUALNAME, not {value!r}")


class ObjectsService(ServicePlugin):
    """
    Pickled Python objects, wire-compatible with
    C{multiprocessing.connection}.
    """

    name = "objects"
    description = "pickled objects, multiprocessing.connection compatible"
    clientCommands = [
        ("objects", "netd.services.objects.client.ObjectsCommand", "Send an object.")
    ]
    defaultEndpoints = ("tcp:50016:interface=127.0.0.1",)
    stream = True
    datagram = False
    optParameters = [
        [
            "authkey-file",
            None,
            None,
            f"Read the shared authkey from this file (or set ${AUTHKEY_VARIABLE}).",
        ],
        ["handler", None, "echo", "echo, add, or MODULE:CALLABLE."],
        ["max-bytes", None, 8 * 1024 * 1024, "Largest request frame in bytes.", int],
        ["max-pending", None, 16, "Requests in progress per connection.", int],
        [
            "handshake-timeout",
            None,
            10.0,
            "Seconds a client has to finish the authkey handshake, 0 for no limit.",
            float,
        ],
        [
            "max-reply-bytes",
            None,
            16 * 1024 * 1024,
            "Largest reply in bytes (a larger one becomes a ValueError).",
            int,
        ],
        [
            "workers",
            None,
            2,
            "Worker processes that handle requests (0: in netd's own thread, "
            "unbounded).",
            int,
        ],
        ["timeout", None, 5.0, "Seconds one request may take in a worker.", float],
        [
            "worker-memory",
            None,
            512 * 1024 * 1024,
            "Bytes of address space per worker process (RLIMIT_AS).",
            int,
        ],
    ]
    optFlags = [
        [
            "dangerously-allow-unauthenticated",
            None,
            "Serve beyond loopback with no authkey: anyone who can connect may "
            "make netd unpickle (allowlisted) data.",
        ]
    ]
    optRepeatable = [
        ["allow", None, "Also allow this MODULE:QUALNAME in requests (trusted)."]
    ]

    def validate(self, options: Mapping[str, Any]) -> None:
        for name, least in (
            ("max-bytes", 1),
            ("max-pending", 1),
            ("max-reply-bytes", 1024),
            ("workers", 0),
            ("worker-memory", 64 * 1024 * 1024),
        ):
            if options[name] < least:
                raise UsageError(
                    f"--objects-{name} must be at least {least}, not {options[name]!r}"
                )
        if not 0 <= options["handshake-timeout"] < float("inf"):
            raise UsageError(
                "--objects-handshake-timeout must not be negative, "
                f"not {options['handshake-timeout']!r}"
            )
        if not 0 < options["timeout"] < float("inf"):
            raise UsageError(
                f"--objects-timeout must be a positive number of seconds, "
                f"not {options['timeout']!r}"
            )
        handler = options["handler"]
        if handler not in ("echo", "add"):
            _checkName("--objects-handler (echo, add or MODULE:CALLABLE)", handler)
        for allowed in options["allow"]:
            _checkName("--objects-allow", allowed)

    def validateEndpoints(
        self, options: Mapping[str, Any], endpoints: Sequence[str]
    ) -> None:
        if (
            options["authkey-file"]
            or os.environ.get(AUTHKEY_VARIABLE)
            or options["dangerously-allow-unauthenticated"]
        ):
            return
        for description in endpoints:
            if description.lower().startswith("haproxy:"):
                raise UsageError(
                    f"objects on {description!r} would serve clients of a proxy "
                    "(never local ones) without an authkey: give "
                    f"--objects-authkey-file (or ${AUTHKEY_VARIABLE}), or "
                    "--objects-dangerously-allow-unauthenticated"
                )
            if not isPrivateEndpoint(description):
                raise UsageError(
                    f"objects would listen beyond loopback on {description!r} "
                    "without an authkey: give --objects-authkey-file (or "
                    f"${AUTHKEY_VARIABLE}), use tls:...:clientCA=, or "
                    "--objects-dangerously-allow-unauthenticated"
                )

    def makeFactory(
        self,
        options: Mapping[str, Any],
        reactor: Any,
        metrics: ServiceMetrics = NO_SERVICE_METRICS,
    ) -> Any:
        from netd.listeners import StartupError
        from netd.services.objects.server import HANDLERS, ObjectsFactory
        from netd.services.objects.unpickling import resolveName

        try:
            handler = HANDLERS.get(options["handler"]) or resolveName(
                options["handler"]
            )
            allowed = {
                tuple(name.split(":", 1)): resolveName(name)
                for name in options["allow"]
            }
        except ValueError as error:
            raise StartupError(f"objects: {error}") from error
        if not callable(handler):
            raise StartupError(
                f"objects: handler {options['handler']!r} is not callable"
            )
        pool = None
        if options["workers"]:
            from netd.services.objects.pool import WorkerPool

            pool = WorkerPool(
                reactor,
                options["handler"],
                options["allow"],
                size=options["workers"],
                timeout=options["timeout"],
                memory=options["worker-memory"],
                maxBytes=options["max-bytes"],
                maxReplyBytes=options["max-reply-bytes"],
            )
        factory = ObjectsFactory(
            reactor,
            handler=handler,
            authkey=readAuthkey(options["authkey-file"]),
            allowed=allowed,
            maxBytes=options["max-bytes"],
            maxPending=options["max-pending"],
            pool=pool,
            maxReplyBytes=options["max-reply-bytes"],
            metrics=metrics.objects(),
        )
        factory.handshakeTimeout = options["handshake-timeout"]
        if pool is not None:
            pool.restarted = factory.metrics.workerRestarted
        return factory


def readAuthkey(path: str | None) -> bytes | None:
    """
    The authkey: the file's bytes (line ends at its end ignored, so that
    C{echo KEY > FILE} works), else C{$NETD_OBJECTS_AUTHKEY} in UTF-8, else
    L{None}.

    @raise netd.listeners.StartupError: when the file cannot be read or the
        key is empty.
    """
    from netd.listeners import StartupError

    if path:
        try:
            with open(path, "rb") as stream:
                key = stream.read().rstrip(b"\r\n")
        except OSError as error:
            raise StartupError(
                f"objects: cannot read authkey file {path!r}: {error.strerror}"
            ) from error
        if not key:
            raise StartupError(f"objects: authkey file {path!r} is empty")
        return key
    value = os.environ.get(AUTHKEY_VARIABLE)
    return value.encode("utf-8") if value else None


objects = ObjectsService()
