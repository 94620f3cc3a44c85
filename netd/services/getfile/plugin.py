# -*- test-case-name: tests.services.getfile.test_getfile -*-
"""
The getfile service's plugin: C{--getfile}, C{--getfile-root},
C{--getfile-request-timeout}, C{--getfile-max-transfers},
C{--getfile-max-per-source}, C{--getfile-stall-timeout},
C{--getfile-no-sendfile}.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from twisted.logger import Logger
from twisted.python.usage import UsageError

from netd.metrics import NO_SERVICE_METRICS, ServiceMetrics
from netd.plugin import ServicePlugin


class GetFileService(ServicePlugin):
    """
    Files under a root directory, by the book's getfile protocol and by the
    extended C{GETFILE/1} form.
    """

    log = Logger()
    name = "getfile"
    description = "send files under a root directory (the book's getfile, confined)"
    clientCommands = [
        ("getfile", "netd.services.getfile.client.GetFileCommand", "Get a file.")
    ]
    defaultEndpoints = ("tcp:50001:interface=127.0.0.1",)
    stream = True
    datagram = False
    optParameters = [
        [
            "root",
            None,
            None,
            "Serve the files under this directory "
            "[default: the directory netd starts in].",
        ],
        [
            "request-timeout",
            None,
            10.0,
            "Seconds a client has to send its request line.",
            float,
        ],
        [
            "max-transfers",
            None,
            64,
            "Transfers at once; more are refused as busy (503).",
            int,
        ],
        [
            "max-per-source",
            None,
            8,
            "Transfers at once to one client address, 0 for no limit; more "
            "are refused as busy (503).",
            int,
        ],
        [
            "stall-timeout",
            None,
            60.0,
            "Close a transfer that sends nothing for this many seconds "
            "(a client that stopped reading), 0 for never.",
            float,
        ],
    ]
    optFlags = [
        [
            "no-sendfile",
            None,
            "Never use os.sendfile: stream every file through the transport.",
        ]
    ]

    def validate(self, options: Mapping[str, Any]) -> None:
        if options["request-timeout"] <= 0:
            raise UsageError(
                "--getfile-request-timeout must be positive, "
                f"not {options['request-timeout']!r}"
            )
        if options["max-transfers"] < 1:
            raise UsageError(
                "--getfile-max-transfers must be positive, "
                f"not {options['max-transfers']!r}"
            )
        for name in ("max-per-source", "stall-timeout"):
            if not 0 <= options[name] < float("inf"):
                raise UsageError(
                    f"--getfile-{name} must not be negative, not {options[name]!r}"
                )

    def extraDescriptors(self, options: Mapping[str, Any]) -> int:
        """
        Descriptors beyond its connections getfile may hold: the file and a
        duplicate of the socket (for C{os.sendfile}) of each transfer.
        """
        return 2 * int(options["max-transfers"])

    def listeningNote(self, options: Mapping[str, Any]) -> str:
        """
        Name the directory served, so that nobody serves one by surprise.
        """
        return f"serving {os.path.realpath(options['root'] or os.getcwd())}"

    def makeFactory(
        self,
        options: Mapping[str, Any],
        reactor: Any,
        metrics: ServiceMetrics = NO_SERVICE_METRICS,
    ) -> Any:
        """
        Build the factory for the root, which must be a readable directory.

        @raise StartupError: when it is not.
        """
        from netd.services.getfile.server import GetFileFactory

        return GetFileFactory(
            reactor,
            rootDirectory(options),
            requestTimeout=options["request-timeout"],
            maxTransfers=options["max-transfers"],
            sendfile=not options["no-sendfile"],
            maxPerSource=options["max-per-source"],
            stallTimeout=options["stall-timeout"],
            metrics=metrics.getfile(),
        )

    def reconfigure(
        self,
        options: Mapping[str, Any],
        changed: Collection[str],
        factory: Any,
        datagramProtocols: Sequence[Any],
    ) -> Collection[str]:
        """
        Apply changed options (on C{SIGHUP}) to the requests that come after;
        transfers under way go on as they began. A new root that is not a
        readable directory is not applied, and is logged.

        @return: the names of the options applied.
        """
        from netd.listeners import StartupError
        from netd.services.getfile.confinement import ConfinedRoot

        if factory is None:
            return ()
        applied = []
        for name in changed:
            if name == "root":
                try:
                    factory.root = ConfinedRoot(rootDirectory(options))
                except StartupError as error:
                    self.log.warn("{error}; still serving the old root", error=error)
                    continue
            elif name == "request-timeout":
                factory.requestTimeout = options["request-timeout"]
            elif name == "max-transfers":
                factory.maxTransfers = options["max-transfers"]
            elif name == "no-sendfile":
                factory.sendfile = not options["no-sendfile"]
            elif name == "max-per-source":
                factory.maxPerSource = options["max-per-source"]
            elif name == "stall-timeout":
                factory.stallTimeout = options["stall-timeout"]
            else:
                continue
            applied.append(name)
        return applied


def rootDirectory(options: Mapping[str, Any]) -> str:
    """
    The directory to serve: C{root}, or the one netd was started in.

    @raise netd.listeners.StartupError: when it is not a readable directory.
    """
    from netd.listeners import StartupError

    root = options["root"] or os.getcwd()
    if not os.path.isdir(root):
        raise StartupError(f"getfile: root {root!r} is not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise StartupError(f"getfile: root {root!r} is not readable")
    return str(root)


getfile = GetFileService()
