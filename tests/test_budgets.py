"""
Tests for L{netd.budgets}: the per-source share, the descriptor limit and
budget (unit, and a real C{twistd -n netd} under a 1,024 limit flooded on
one service), and the listen backlog.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import sys
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from netd.budgets import (
    FALLBACK_BACKLOG,
    RESERVE,
    DescriptorBudget,
    descriptorBudget,
    listenBacklog,
    perSourceShare,
    raiseDescriptorLimit,
    withBacklog,
)
from netd.endpoints import streamEndpoint
from netd.metrics import refusalReason
from netd.policy import Policy, PolicyFactory, PolicySettings
from netd.services.objects.client import connectObjects
from tests.common import (
    TWISTD,
    exchange,
    projectEnvironment,
    runCommand,
    runNetd,
    waitForOutput,
)
from tests.test_policy import RecorderFactory

#: Runs the rest of its arguments with RLIMIT_NOFILE set to argv[1] (soft)
#: and argv[2] (hard; "hard" keeps the current one).
LIMITED = (
    "import os, resource, sys\n"
    "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
    "hard = hard if sys.argv[2] == 'hard' else int(sys.argv[2])\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


def limited(soft: int, hard: int | None = None) -> list[str]:
    """
    A launcher for L{runNetd} that starts netd with this descriptor limit.
    """
    return [sys.executable, "-c", LIMITED, str(soft), str(hard or "hard")]


class PerSourceShareTests(SynchronousTestCase):
    """
    L{perSourceShare}: a tenth, at least 16, never beyond the service's limit.
    """

    def test_share(self) -> None:
        self.assertEqual(
            [perSourceShare(n) for n in (0, 1, 16, 100, 1000, 4096)],
            [0, 1, 16, 16, 100, 409],
        )


class RaiseLimitTests(SynchronousTestCase):
    """
    L{raiseDescriptorLimit} when the soft limit is already the hard one,
    and when raising it is not allowed (a seccomp filter, as systemd's
    C{SystemCallFilter=~@privileged} holds C{setrlimit}).
    """

    def test_atTheHardLimit(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.patch(resource, "getrlimit", lambda kind: (hard, hard))
        self.patch(resource, "setrlimit", self.fail)
        self.assertEqual(raiseDescriptorLimit(), (hard, hard, None))

    def test_notAllowed(self) -> None:
        def refuse(kind: int, limits: tuple[int, int]) -> None:
            raise PermissionError(errno.EPERM, "Operation not permitted")

        self.patch(resource, "getrlimit", lambda kind: (1024, 4096))
        self.patch(resource, "setrlimit", refuse)
        before, after, problem = raiseDescriptorLimit()
        self.assertEqual((before, after), (1024, 1024))
        self.assertIn("Operation not permitted", problem or "")


class BacklogTests(SynchronousTestCase):
    """
    Listeners ask for the kernel's largest backlog unless told otherwise.
    """

    def test_somaxconn(self) -> None:
        """
        The backlog is the kernel's C{somaxconn} (or the fallback).
        """
        try:
            with open("/proc/sys/net/core/somaxconn") as stream:
                expected = int(stream.read())
        except OSError:
            expected = FALLBACK_BACKLOG
        self.assertEqual(listenBacklog(), expected)

    def test_descriptions(self) -> None:
        """
        A backlog is added to C{tcp:}, C{tcp6:}, C{ssl:}, C{unix:} and
        netd's C{tls:} endpoints that set none, by keyword or in its place.
        """
        added = [
            "tcp:0",
            "tcp:0:interface=127.0.0.1",
            "tcp:0:127.0.0.1",
            "TCP:0",
            "tcp6:0:interface=\\:\\:1",
            "ssl:0:privateKey=k:interface=127.0.0.1",
            "unix:/run/netd.sock",
            "unix:/run/netd.sock:mode=600",
            "tls:0:privateKey=k:certKey=c",
        ]
        for description in added:
            self.assertEqual(
                withBacklog(description, 4096), description + ":backlog=4096"
            )
        kept = [
            "tcp:0:backlog=7",
            "tcp:0:127.0.0.1:7",
            "tcp6:0:7",
            "unix:/run/netd.sock:666:7",
            "ssl:0:k:c:TLSv1_2_METHOD:127.0.0.1:7",
            "tls:0:privateKey=k:backlog=7",
            "tls:/etc/certs:port=0",
            "systemd:domain=INET:index=0",
        ]
        for description in kept:
            self.assertEqual(withBacklog(description, 4096), description)

    def test_endpoint(self) -> None:
        """
        The endpoint netd builds for C{tcp:} listens with that backlog; with
        C{haproxy:} too; one set in the description is kept.
        """
        endpoint = streamEndpoint("echo", "tcp:0:interface=127.0.0.1", _reactor, 999)
        self.assertEqual(endpoint._backlog, 999)
        proxied = streamEndpoint("echo", "haproxy:tcp:0", _reactor, 999)
        self.assertEqual(proxied.wrappedEndpoint._backlog, 999)
        endpoint = streamEndpoint("echo", "tcp:0:backlog=7", _reactor, 999)
        self.assertEqual(endpoint._backlog, 7)


class BacklogListeningTests(TestCase):
    """
    A real listener holds a burst of connections it has not accepted yet.
    """

    def burst(self, backlog: int) -> int:
        """
        Listen on a UNIX socket built as netd builds it, then connect 200
        times without letting the reactor accept any: how many connects
        succeed (a full backlog fails them with C{EAGAIN}).
        """
        path = os.path.abspath(self.mktemp())
        endpoint = streamEndpoint("echo", f"unix:{path}", _reactor, backlog)
        listening = endpoint.listen(Factory.forProtocol(Protocol))
        port = self.successResultOf(listening)
        self.addCleanup(port.stopListening)
        connected = 0
        for _ in range(200):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.addCleanup(client.close)
            client.setblocking(False)
            try:
                client.connect(path)
            except OSError as error:
                self.assertEqual(error.errno, errno.EAGAIN)
                continue
            connected += 1
        return connected

    def test_burst(self) -> None:
        """
        With netd's backlog (the kernel's most), a burst of 200 connects is
        queued whole; with Twisted's default of 50, it is not.
        """
        if listenBacklog() < 256:
            raise SkipTest("the kernel's somaxconn is below 256")
        self.assertEqual(self.burst(listenBacklog()), 200)
        self.assertLess(self.burst(0), 200)


class DescriptorBudgetTests(SynchronousTestCase):
    """
    L{DescriptorBudget}'s split: a guaranteed part each, the rest shared.
    """

    def test_figures(self) -> None:
        """
        Of a 1,024 limit with 200 set aside, each of 4 services is
        guaranteed 103 (half of 824, in four), and one may hold 515.
        """
        budget = DescriptorBudget(1024, 200, dict.fromkeys("abcd", 1000))
        self.assertEqual(budget.available, 824)
        self.assertEqual(budget.guaranteed, dict.fromkeys("abcd", 103))
        self.assertEqual(budget.most("a"), 824 - 3 * 103)
        self.assertFalse(budget.fits())
        self.assertIn("a 103-515", budget.describe())
        self.assertIsNone(budget.check())

    def test_floodLeavesTheOthersTheirPart(self) -> None:
        """
        A service opening connections until refused holds L{most}; every
        other service can still open its guaranteed part, and a closed
        connection can be opened again.
        """
        budget = DescriptorBudget(1024, 200, dict.fromkeys("abcd", 1000))
        held = 0
        while budget.refusal("a") is None:
            budget.opened("a")
            held += 1
            self.assertLess(held, 1024)
        self.assertEqual(held, budget.most("a"))
        self.assertEqual(refusalReason(budget.refusal("a") or ""), "descriptors")
        for name in "bcd":
            for _ in range(budget.guaranteed[name]):
                self.assertIsNone(budget.refusal(name), name)
                budget.opened(name)
            self.assertIsNotNone(budget.refusal(name), name)
        budget.closed("b")
        self.assertIsNone(budget.refusal("b"))
        self.assertIsNotNone(budget.refusal("a"))
        budget.closed("a")
        self.assertIsNone(budget.refusal("a"))

    def test_lowLimitsNeedNoGuarantee(self) -> None:
        """
        A service whose own limit is under its part is guaranteed only
        that much; limits that all fit are never refused by the budget.
        """
        budget = DescriptorBudget(1024, 200, {"a": 10, "b": 800})
        self.assertEqual(budget.guaranteed, {"a": 10, "b": 206})
        self.assertTrue(budget.fits())
        self.assertIn("fits", budget.describe())
        self.assertFalse(DescriptorBudget(1024, 200, {"a": 0}).fits())

    def test_tooFew(self) -> None:
        """
        A limit that cannot guarantee each service 8 connections is an
        error naming the limit and what it takes.
        """
        budget = descriptorBudget(256, 10, 128, dict.fromkeys("abcde", 1000))
        self.assertEqual(budget.reserve, RESERVE + 10 + 128)
        error = budget.check()
        assert error is not None
        self.assertIn("is 256", error)
        self.assertIn(f"needs {RESERVE + 10 + 128 + 80}", error)

    def test_policiesShareIt(self) -> None:
        """
        Two services' access policies sharing a budget: a flood of one is
        refused past its part, and the other is still served.
        """
        clock = task.Clock()
        budget = DescriptorBudget(120, 20, {"a": 1000, "b": 1000})
        factories = {}
        for name in "ab":
            factories[name] = PolicyFactory(
                name, RecorderFactory(), Policy(PolicySettings()), clock
            )
            factories[name].budget = budget

        def connect(name: str, host: str) -> StringTransport:
            address = IPv4Address("TCP", host, 1234)
            transport = StringTransport(peerAddress=address)
            factories[name].buildProtocol(address).makeConnection(transport)
            return transport

        accepted = 0
        for index in range(200):
            if not connect("a", f"192.0.2.{index % 250}").disconnected:
                accepted += 1
        self.assertEqual(accepted, budget.most("a"))
        self.assertEqual(factories["a"].active, accepted)
        self.assertFalse(connect("b", "198.51.100.1").disconnected)


class Echoed(protocol.Protocol):
    """
    A flooding client: sends a byte and, once echoed, holds the connection
    idle. C{settled} fires with C{True} when served, C{False} when closed
    first.
    """

    def __init__(self) -> None:
        self.settled: defer.Deferred[bool] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"x")

    def dataReceived(self, data: bytes) -> None:
        if not self.settled.called:
            self.settled.callback(True)

    def refused(self, reason: Any) -> None:
        """
        The connection failed (reset before it was made).
        """
        if not self.settled.called:
            self.settled.callback(False)

    def connectionLost(self, reason: Any) -> None:
        self.refused(reason)
        self.lost.callback(None)


class DescriptorLimitTests(TestCase):
    """
    A real C{twistd -n netd} and its descriptor limit.
    """

    def setUp(self) -> None:
        soft, self.hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if self.hard != resource.RLIM_INFINITY and self.hard <= 2048:
            raise SkipTest(f"the hard descriptor limit is {self.hard}")

    @defer.inlineCallbacks
    def test_raised(self) -> defer.Generator:
        """
        Started with a soft limit of 1,024, netd raises it to the hard
        limit, and logs it in one line.
        """
        netd = yield runNetd(
            self,
            "--services", "echo", "--echo", "tcp:0:interface=127.0.0.1",
            launcher=limited(1024),
        )  # fmt: skip
        pid = netd.transport.pid
        with open(f"/proc/{pid}/limits") as stream:
            [line] = [line for line in stream if line.startswith("Max open files")]
        soft, hard = line.split()[3:5]
        self.assertEqual(soft, hard)
        log = netd.output.decode()
        self.assertEqual(log.count("descriptors: "), 1, log)
        self.assertIn(f"descriptors: soft limit raised from 1024 to {hard};", log)

    @defer.inlineCallbacks
    def test_tooFew(self) -> defer.Generator:
        """
        A limit too low for every service is one C{netd:} line and exit 1.
        """
        path = self.mktemp()
        os.makedirs(path)
        out, err, code = yield runCommand(
            *limited(100, 100),
            TWISTD, "--nodaemon", "--pidfile=", "netd",
            "--echo", "tcp:0:interface=127.0.0.1",
            "--getfile", "tcp:0:interface=127.0.0.1",
            path=path,
            env=projectEnvironment(),
        )  # fmt: skip
        self.assertEqual(code, 1)
        output = (out + err).decode()
        self.assertNotIn("Traceback", output)
        lastLine = output.strip().splitlines()[-1]
        self.assertTrue(
            lastLine.startswith("netd: the descriptor limit (RLIMIT_NOFILE) is 100"),
            output,
        )

    @defer.inlineCallbacks
    def test_floodLeavesOthersAnswering(self) -> defer.Generator:
        """
        Under a 1,024 limit with the default settings, a client holding as
        many idle echo connections as it can (from 15 addresses, past the
        per-source share) holds at most echo's share of the budget; then
        daytime, time, getfile and objects all still answer.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 2048:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        with open(os.path.join(root, "probe.txt"), "wb") as stream:
            stream.write(b"probe")
        services = ["echo", "getfile", "daytime", "time", "objects"]
        arguments = ["--services", ",".join(services), "--getfile-root", root]
        for name in services:
            arguments += [f"--{name}", "tcp:0:interface=127.0.0.1"]
        netd = yield runNetd(
            self, *arguments, listeners=len(services), launcher=limited(1024, 1024)
        )
        self.assertIn("descriptors: limit 1024;", netd.output.decode())
        self.assertIn("do not all fit", netd.output.decode())

        clients = []
        attempts = []
        for index in range(1125):
            client = Echoed()
            clients.append(client)
            endpoint = TCP4ClientEndpoint(
                _reactor,
                "127.0.0.1",
                netd.port("echo"),
                bindAddress=(f"127.0.0.{10 + index % 15}", 0),
            )
            connectProtocol(endpoint, client).addErrback(client.refused)
            attempts.append(client.settled)
        settled = yield defer.gatherResults(attempts)

        def closeAll() -> defer.Deferred[Any]:
            waiting = []
            for client in clients:
                if client.transport is not None and client.transport.connected:
                    client.transport.loseConnection()
                    waiting.append(client.lost)
            return defer.gatherResults(waiting)

        self.addCleanup(closeAll)
        held = sum(settled)
        expected = descriptorBudget(
            1024, len(services), 2 * 64, dict.fromkeys(services, 1000)
        ).most("echo")
        self.assertEqual(held, expected)
        yield waitForOutput(netd, "descriptor budget spent")

        def tcp(name: str) -> TCP4ClientEndpoint:
            return TCP4ClientEndpoint(_reactor, "127.0.0.1", netd.port(name))

        line = yield exchange(tcp("daytime"))
        self.assertTrue(line.endswith(b"\r\n"), line)
        seconds = yield exchange(tcp("time"))
        self.assertEqual(len(seconds), 4)
        content = yield exchange(tcp("getfile"), b"GETFILE/1 0 probe.txt\n")
        self.assertEqual(content, b"OK 5\nprobe")
        objects = yield connectObjects(tcp("objects"))
        reply = yield objects.call([1, 2, 3])
        self.assertEqual(reply, [1, 2, 3])
        objects.transport.loseConnection()
