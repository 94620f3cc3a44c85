# -*- test-case-name: tests.test_objects_service -*-
"""
C{netd-client objects [options] LITERAL}: send one Python literal
(C{ast.literal_eval}) to the objects service and print the reply's C{repr}.

The authkey comes from C{--authkey-file} or C{$NETD_OBJECTS_AUTHKEY}, as for
the server, never from the command line.
"""

from __future__ import annotations

import ast
import pickle
import sys
from typing import Any

from twisted.python import usage

from netd.cli import ClientCommand


class ObjectsCommand(ClientCommand):
    """
    C{netd-client objects [options] LITERAL}.
    """

    synopsis = "[options] LITERAL"
    defaultPort = 50016
    optParameters = [
        ["authkey-file", None, None, "Read the authkey from this file."],
        [
            "protocol",
            None,
            pickle.DEFAULT_PROTOCOL,
            "Pickle protocol of the request.",
            int,
        ],
    ]

    def parseArgs(self, literal: str) -> None:
        try:
            self["request"] = ast.literal_eval(literal)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise usage.UsageError(f"not a Python literal: {literal!r}") from None

    def postOptions(self) -> None:
        super().postOptions()
        if not 0 <= self["protocol"] <= pickle.HIGHEST_PROTOCOL:
            raise usage.UsageError(
                f"--protocol must be 0-{pickle.HIGHEST_PROTOCOL}, "
                f"not {self['protocol']!r}"
            )

    async def _run(self, reactor: Any) -> int:
        from netd.client import connectObjects
        from netd.listeners import StartupError
        from netd.services.objects import readAuthkey

        try:
            authkey = readAuthkey(self["authkey-file"])
        except StartupError as error:
            raise usage.UsageError(str(error)) from None
        client = await connectObjects(
            self.endpoint(reactor), authkey, protocol=self["protocol"]
        )
        try:
            reply = await client.call(self["request"])
        except Exception as error:
            sys.stdout.write(f"{type(error).__name__}: {error}\n")
            return 1
        finally:
            client.transport.loseConnection()
        sys.stdout.write(f"{reply!r}\n")
        return 0

    def run(self, reactor: Any) -> Any:
        from twisted.internet import defer

        return defer.Deferred.fromCoroutine(self._run(reactor))
