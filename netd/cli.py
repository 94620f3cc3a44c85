# -*- test-case-name: tests.test_cli -*-
"""
C{netd-client}: a client for every netd service, and a load generator.

    netd-client echo [--host H] [--port P] WORD...
    netd-client load echo --clients N --messages M

Each command is a L{ClientCommand}: its options, and a C{run(reactor)}
returning a Deferred that fires with the exit status. Commands live beside
their protocols and are named here lazily, so that C{--help} imports none.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint
from twisted.python import usage
from twisted.python.reflect import namedAny


class ClientCommand(usage.Options):
    """
    Options every client command shares: where the server is.

    Subclasses set C{defaultPort} and implement L{run}.
    """

    defaultPort = 0

    optParameters = [
        ["host", "H", "127.0.0.1", "The server's host name or address."],
        ["port", "p", None, "The server's port [default: the service's].", int],
        ["timeout", None, 30.0, "Seconds to wait for the server.", float],
        [
            "ca",
            None,
            None,
            "With --tls: trust these CAs (PEM) [default: the system's].",
        ],
        ["cert", None, None, "With --tls: present this client certificate (PEM)."],
        [
            "key",
            None,
            None,
            "With --tls: the client certificate's key [default: --cert].",
        ],
    ]
    optFlags = [["tls", None, "Connect with TLS, verifying the server's name."]]

    def postOptions(self) -> None:
        if self["port"] is None:
            self["port"] = self.defaultPort
        if not 0 < self["port"] < 65536:
            raise usage.UsageError(f"--port must be 1-65535, not {self['port']!r}")
        for name in ("ca", "cert", "key"):
            if self[name] is not None and not self["tls"]:
                raise usage.UsageError(
                    f"--{name} needs --tls, not {self[name]!r} alone"
                )
        if self["key"] is not None and self["cert"] is None:
            raise usage.UsageError(f"--key needs --cert, not {self['key']!r} alone")

    def endpoint(self, reactor: Any) -> Any:
        """
        The client endpoint to reach the server with; with C{--tls}, one
        that verifies the server (L{netd.tlsclient.clientEndpoint}).
        """
        if self["tls"]:
            from netd.tlsclient import clientEndpoint

            return clientEndpoint(
                reactor,
                self["host"],
                self["port"],
                ca=self["ca"],
                cert=self["cert"],
                key=self["key"],
                timeout=self["timeout"],
            )
        return HostnameEndpoint(
            reactor, self["host"], self["port"], timeout=self["timeout"]
        )

    def run(self, reactor: Any) -> defer.Deferred[int]:
        """
        Do the command's work; fire with the exit status.
        """
        raise NotImplementedError


def _lazy(name: str) -> Any:
    """
    Name a command's options class without importing its module yet.
    """
    return lambda: namedAny(name)()


class Options(usage.Options):
    """
    C{netd-client COMMAND [options]}.
    """

    synopsis = "netd-client COMMAND [options]"

    @property
    def subCommands(self) -> list[list[Any]]:  # type: ignore[override]
        """
        Every installed service's commands (L{INetdService.clientCommands}),
        their modules imported only when one runs.
        """
        from netd.plugin import discoverServices

        return [
            [name, None, _lazy(path), description]
            for service in discoverServices()
            for name, path, description in getattr(service, "clientCommands", ())
        ]

    def opt_version(self) -> None:
        """
        Print netd's version and exit.
        """
        from netd import __version__

        sys.stdout.write(f"netd-client (netd) {__version__}\n")
        raise SystemExit(0)

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError(
                "name a command: " + ", ".join(name for name, *_ in self.subCommands)
            )


def main(argv: list[str] | None = None) -> None:
    """
    The C{netd-client} console script.
    """
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as error:
        sys.stderr.write(f"netd-client: {error}\n")
        raise SystemExit(2) from None
    command = options.subOptions
    task.react(lambda reactor: _exitStatus(command.run(reactor)))


@defer.inlineCallbacks
def _exitStatus(running: defer.Deferred[int]) -> Any:
    """
    Turn a command's status into C{SystemExit} for L{task.react}, and any
    error into one line.
    """
    try:
        status = yield running
    except Exception as error:
        sys.stderr.write(f"netd-client: {error}\n")
        raise SystemExit(1) from None
    if status:
        raise SystemExit(status)
