"""
Tests for L{netd.devrun}, C{make run}'s front end.
"""

from __future__ import annotations

import io
import os
import sys

from twisted.internet import defer, protocol
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.devrun import hints, relay
from tests.common import projectEnvironment

LINES = """\
[netd.listeners.StreamListener#info] echo listening on TCP 127.0.0.1:41000
[netd.listeners.DatagramListener#info] daytime listening on UDP 127.0.0.1:41001
[netd.listeners.StreamListener#info] objects listening on TCP 127.0.0.1:41002
[netd.listeners.StreamListener#info] qotd listening on TCP 127.0.0.1:41003
[netd.lifecycle.NetdService#info] netd ready: listening on ...
"""


class HintsTests(SynchronousTestCase):
    """
    The hints name each service's real port.
    """

    def test_relay(self) -> None:
        """
        netd's lines pass through unchanged, and the hints follow the ready
        line, each with the port netd logged.
        """
        out = io.StringIO()
        relay(io.StringIO(LINES), out, [], "netd-client")
        text = out.getvalue()
        self.assertTrue(text.startswith(LINES), text)
        hinted = text[len(LINES) :]
        self.assertIn("netd-client echo --port 41000 hello world\n", hinted)
        self.assertIn("netd-client daytime --udp --port 41001\n", hinted)
        self.assertIn(
            "netd-client objects --port 41002 '([1, 2], [3])'    # no authkey", hinted
        )
        self.assertIn("nc 127.0.0.1 41003    # qotd\n", hinted)

    def test_keyedObjects(self) -> None:
        """
        With an authkey there is no warning that objects has none.
        """
        [line] = hints([("objects", "TCP", "::1", 5)], "c", keyless=False)
        self.assertEqual(line, "c objects --host ::1 --port 5 '([1, 2], [3])'")


class RunTests(TestCase):
    """
    C{python -m netd.devrun} runs netd and stops it on SIGINT.
    """

    @defer.inlineCallbacks
    def test_runAndInterrupt(self) -> defer.Generator:
        """
        Once netd is ready the hints are printed; SIGINT reaches netd, which
        stops (even when this process started with SIGINT ignored), and the
        stop is a success.
        """

        class Watch(protocol.ProcessProtocol):
            def __init__(self) -> None:
                self.output = b""
                self.hinted: defer.Deferred[None] = defer.Deferred()
                self.ended: defer.Deferred[int] = defer.Deferred()

            def outReceived(self, data: bytes) -> None:
                self.output += data
                if b"Ctrl-C stops it" in self.output and not self.hinted.called:
                    self.hinted.callback(None)

            errReceived = outReceived

            def processEnded(self, reason: object) -> None:
                self.ended.callback(reason.value.exitCode)  # type: ignore[attr-defined]

        watch = Watch()
        path = self.mktemp()
        os.makedirs(path)
        # Started with SIGINT ignored, as a background job of a shell (or a
        # test runner's worker) starts it: netd must still stop on it.
        argv = [
            "/bin/sh",
            "-c",
            'trap "" INT; exec "$0" -m netd.devrun "$@"',
            sys.executable,
            "--services",
            "echo",
            "--echo",
            "tcp:0:interface=127.0.0.1",
        ]
        process = _reactor.spawnProcess(
            watch, argv[0], argv, env=projectEnvironment(), path=path
        )

        def stop() -> defer.Deferred[int] | None:
            if watch.ended.called:
                return None
            process.signalProcess("TERM")  # passed on to netd
            return watch.ended

        self.addCleanup(stop)
        yield watch.hinted.addTimeout(30, _reactor)
        self.assertIn(b"echo listening on TCP 127.0.0.1:", watch.output)
        self.assertRegex(
            watch.output.decode(), r"netd-client echo --port \d+ hello world"
        )
        process.signalProcess("INT")
        code = yield watch.ended.addTimeout(30, _reactor)
        self.assertEqual(code, 0)
        self.assertIn(b"Main loop terminated.", watch.output)
