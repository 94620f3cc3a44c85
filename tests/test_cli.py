"""
Tests for L{netd.cli}: C{netd-client}'s frame, its commands gathered from
the installed services, and its version.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

import netd
from netd.cli import Options
from tests.common import BIN, runCommand, runNetd


class CommandsTests(SynchronousTestCase):
    """
    The commands come from the services' plugins.
    """

    def test_everyServiceCommand(self) -> None:
        """
        Each of netd's services brings its commands, and C{load} comes with
        echo.
        """
        names = [name for name, *_ in Options().subCommands]
        for name in ("echo", "load", "getfile", "daytime", "time", "sntp"):
            self.assertIn(name, names)
        self.assertIn("objects", names)

    def test_noCommand(self) -> None:
        """
        Without a command, the error names the commands there are.
        """
        error = self.assertRaises(UsageError, Options().parseOptions, [])
        self.assertIn("name a command: ", str(error))
        self.assertIn("getfile", str(error))


class VersionTests(TestCase):
    """
    Both programs say which netd they are.
    """

    @defer.inlineCallbacks
    def test_clientVersion(self) -> defer.Generator:
        """
        C{netd-client --version} prints netd's version, not Twisted's.
        """
        out, err, code = yield runCommand(os.path.join(BIN, "netd-client"), "--version")
        self.assertEqual(
            (out, err, code),
            (f"netd-client (netd) {netd.__version__}\n".encode(), b"", 0),
        )

    @defer.inlineCallbacks
    def test_startupLogsVersion(self) -> defer.Generator:
        """
        netd's log starts with its version, Python's, Twisted's and the
        reactor's.
        """
        process = yield runNetd(
            self, "--services", "echo", "--echo", "tcp:0:interface=127.0.0.1"
        )
        self.assertIn(
            f"netd {netd.__version__} starting (Python ".encode(), process.output
        )
