"""
Tests for L{netd.workers}: C{--workers N}, a supervising parent and N
worker processes on the same listening sockets.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
)
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.protocol import Factory
from twisted.logger import LogLevel, formatEvent
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.endpoints import streamEndpoint
from netd.listeners import StartupError
from netd.policy import PolicySettings
from netd.services.echo.plugin import echo
from netd.tap import Options
from netd.worker import HandedOver, Worker, WorkerLogObserver, perWorker, shareLimits
from netd.workerprocess import WorkerProcess, logsToStdout
from netd.workers import Supervisor
from tests.common import (
    TWISTD,
    NetdProcess,
    exchange,
    freePort,
    listenNotifySocket,
    projectEnvironment,
    runNetd,
    waitForOutput,
)
from tests.test_integration_systemd import (
    SOCKET_ACTIVATE,
    EchoClient,
    connectEcho,
    heldBy,
    listenDatagramClient,
    runNetdNotifying,
    stopDuringDownload,
    waitUntil,
)

STARTED = re.compile(r"worker (\d+) started: pid (\d+)")
#: Two workers serving echo alone.
TWO_ECHO = ("--workers", "2", "--services", "echo")
SERVED = re.compile(r"\[worker (\d+)\] (\w+) TCP 127\.0\.0\.1:(\d+) closed")


class OptionTests(SynchronousTestCase):
    """
    C{--workers N} and the config file's C{workers}.
    """

    def parse(self, *argv: str, toml: str | None = None) -> Options:
        options = Options(services=[echo])
        if toml is not None:
            path = self.mktemp()
            with open(path, "w") as stream:
                stream.write(toml)
            argv = ("--config", path, *argv)
        options.parseOptions(list(argv))
        return options

    def test_default(self) -> None:
        """
        One worker by default: netd is one process, as ever.
        """
        self.assertEqual(self.parse()["workers"], 1)

    def test_commandLineAndFile(self) -> None:
        """
        The file sets C{workers}; the command line wins.
        """
        self.assertEqual(self.parse(toml="workers = 3\n")["workers"], 3)
        self.assertEqual(
            self.parse("--workers", "2", toml="workers = 3\n")["workers"], 2
        )

    def test_bad(self) -> None:
        """
        Zero, a negative number or a non-number is a usage error.
        """
        for argv in (["--workers", "0"], ["--workers", "-1"], ["--workers", "many"]):
            self.assertRaises(UsageError, self.parse, *argv)
        self.assertEqual(self.parse(toml='workers = "2"\n')["workers"], 2)
        self.assertRaises(UsageError, self.parse, toml='workers = "two"\n')
        self.assertRaises(UsageError, self.parse, toml="workers = 0\n")


class ShareTests(SynchronousTestCase):
    """
    Each worker gets its share of the daemon's limits.
    """

    def test_perWorker(self) -> None:
        """
        Whole numbers are divided rounding up, rates exactly, 0 (no limit)
        stays 0.
        """
        self.assertEqual(perWorker(1000, 2), 500)
        self.assertEqual(perWorker(5, 2), 3)
        self.assertEqual(perWorker(1, 4), 1)
        self.assertEqual(perWorker(0, 4), 0)
        self.assertEqual(perWorker(20.0, 4), 5.0)

    def test_shareLimits(self) -> None:
        """
        C{max-connections} and C{udp-rate} are divided; C{max-per-source}
        and the rest of the policy are left alone.
        """
        options = Options(services=[echo])
        options.parseOptions(
            ["--max-connections", "9", "--max-per-source", "4", "--idle-timeout", "7"]
        )
        rate = options["serviceOptions"]["echo"]["udp-rate"]
        shareLimits(options, 2)
        settings = options["policies"]["echo"]
        self.assertEqual(
            (settings.maxConnections, settings.maxPerSource, settings.idleTimeout),
            (5, 4, 7.0),
        )
        self.assertEqual(options["serviceOptions"]["echo"]["udp-rate"], rate / 2)
        self.assertIsInstance(settings, PolicySettings)


class WorkerTests(SynchronousTestCase):
    """
    A worker adopts the sockets its parent handed over, by endpoint.
    """

    def test_fromEnvironment(self) -> None:
        """
        Without C{$NETD_WORKER} a process is no worker; with it, the worker
        knows its number, the count and its sockets.
        """
        self.assertIsNone(Worker.fromEnvironment(_reactor, streamEndpoint, {}))
        handover = {
            "index": 2,
            "workers": 3,
            "listeners": [
                {"service": "echo", "endpoint": "tcp:0", "fd": 4, "family": 2}
            ],
        }
        worker = Worker.fromEnvironment(
            _reactor, streamEndpoint, {"NETD_WORKER": json.dumps(handover)}
        )
        assert worker is not None
        self.assertEqual((worker.index, worker.workers), (2, 3))

    def test_unknownEndpoint(self) -> None:
        """
        An endpoint that the parent did not open (the configuration changed
        since netd started) stops the worker with a message saying so.
        """
        worker = Worker(
            _reactor, 1, 2, [HandedOver("echo", "tcp:7", 4, 2)], streamEndpoint
        )
        error = self.assertRaises(StartupError, worker.streamEndpoint, "echo", "tcp:8")
        self.assertIn("restart netd", str(error))

    def test_adoptsEachSocketOnce(self) -> None:
        """
        A C{tcp:} endpoint of a worker serves the very socket handed over,
        and a second listener on the same description needs a second
        socket.
        """
        listening = socket.socket()
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(5)
        description = "tcp:0:interface=127.0.0.1"
        worker = Worker(
            _reactor,
            1,
            2,
            [HandedOver("echo", description, listening.fileno(), socket.AF_INET)],
            streamEndpoint,
        )
        endpoint = worker.streamEndpoint("echo", description)
        ports: list[Any] = []
        endpoint.listen(Factory()).addCallback(ports.append)
        self.addCleanup(ports[0].stopListening)
        self.assertEqual(ports[0].getHost().port, listening.getsockname()[1])
        self.assertRaises(StartupError, worker.streamEndpoint, "echo", description)


class HoldingTests(TestCase):
    """
    The parent holds the listening sockets for its workers.
    """

    @defer.inlineCallbacks
    def test_closedNotShutDown(self) -> defer.Generator:
        """
        The parent never accepts on its sockets, and when it lets them go it
        closes its copy only: a worker's copy still listens.
        """
        options = Options(services=[echo])
        options.parseOptions(["--workers", "2", "--echo", "tcp:0:interface=127.0.0.1"])
        supervisor = Supervisor(options, _reactor, streamEndpoint, handleSignals=False)
        supervisor.privilegedStartService()
        [listener] = list(supervisor)
        workersCopy = socket.socket(fileno=os.dup(listener.port.fileno()))
        self.addCleanup(workersCopy.close)
        address = workersCopy.getsockname()
        yield listener.stopService()
        self.assertEqual(
            workersCopy.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1
        )
        with socket.create_connection(address, timeout=5) as client:
            accepted, _ = workersCopy.accept()
            accepted.close()
            self.assertEqual(client.recv(1), b"")


class RelayTests(SynchronousTestCase):
    """
    A worker's log events reach the parent's log as the parent's, tagged.
    """

    def test_roundTrip(self) -> None:
        """
        An event written by L{WorkerLogObserver} and read by the parent is
        logged with the same text and level, with the worker as its system;
        what reads like the parent's own listening line is reworded.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        observer = WorkerLogObserver(2, relay=True, fd=write)
        observer(
            {
                "log_format": "{service} took {duration:.3f}s",
                "service": "echo",
                "duration": 0.123456,
                "log_level": LogLevel.warn,
                "log_namespace": "netd.test",
                "log_time": 1.0,
            }
        )
        observer(
            {
                "log_format": "{service} listening on {address}",
                "service": "echo",
                "address": "TCP 127.0.0.1:7",
                "log_level": LogLevel.info,
                "log_time": 2.0,
            }
        )
        lines = os.read(read, 65536).split(b"\n")
        self.assertEqual(lines[-1], b"")
        supervisor = Supervisor.__new__(Supervisor)
        events: list[dict[str, Any]] = []
        supervisor.log = type(Supervisor.log)(observer=events.append)
        worker = WorkerProcess.__new__(WorkerProcess)
        worker.index, worker.system = 2, "worker 2"
        for line in lines[:-1]:
            supervisor.relayEvent(worker, line)
        self.assertEqual(formatEvent(events[0]), "echo took 0.123s")
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertEqual(events[0]["log_system"], "worker 2")
        self.assertEqual(events[0]["service"], "echo")
        self.assertEqual(events[0]["log_time"], 1.0)
        self.assertEqual(formatEvent(events[1]), "echo serving TCP 127.0.0.1:7")

    def test_direct(self) -> None:
        """
        When the parent logs to stdout, a worker writes each event there
        itself, one line in twistd's format with the worker as its system.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        observer = WorkerLogObserver(1, relay=False, fd=write)
        observer(
            {
                "log_format": "{service} listening on {address}",
                "service": "echo",
                "address": "TCP 127.0.0.1:7",
                "log_level": LogLevel.info,
                "log_time": 2.0,
            }
        )
        line = os.read(read, 65536).decode()
        self.assertTrue(line.endswith(" [worker 1] echo serving TCP 127.0.0.1:7\n"))

    def test_logsToStdout(self) -> None:
        """
        twistd logs to stdout with C{--nodaemon} and no log file, or with
        C{--logfile -}; not to a file, to syslog or to a custom logger.
        """
        self.assertTrue(logsToStdout({"nodaemon": True, "logfile": None}))
        self.assertTrue(logsToStdout({"nodaemon": True, "logfile": "-"}))
        self.assertFalse(logsToStdout({"nodaemon": False, "logfile": None}))
        self.assertFalse(logsToStdout({"nodaemon": True, "logfile": "netd.log"}))
        self.assertFalse(logsToStdout({"nodaemon": True, "syslog": True}))
        self.assertFalse(logsToStdout({"nodaemon": True, "logger": print}))
        self.assertFalse(logsToStdout(None))

    def test_notAnEvent(self) -> None:
        """
        A line that is not an event (a worker's stderr) is logged as text.
        """
        supervisor = Supervisor.__new__(Supervisor)
        events: list[dict[str, Any]] = []
        supervisor.log = type(Supervisor.log)(observer=events.append)
        worker = WorkerProcess.__new__(WorkerProcess)
        worker.index, worker.system = 1, "worker 1"
        supervisor.relayEvent(worker, b"netd: something broke")
        self.assertEqual(formatEvent(events[0]), "netd: something broke")
        self.assertEqual(events[0]["log_system"], "worker 1")


def workerPids(netd: Any) -> dict[int, int]:
    """
    The pid of each worker, the latest started, from the parent's log.
    """
    return {
        int(index): int(pid)
        for index, pid in STARTED.findall(netd.output.decode("utf-8", "replace"))
    }


def servedBy(netd: Any, service: str) -> dict[int, int]:
    """
    For each client port of a C{service} connection logged so far, the
    worker that served it.
    """
    return {
        int(port): int(index)
        for index, name, port in SERVED.findall(netd.output.decode("utf-8", "replace"))
        if name == service
    }


@defer.inlineCallbacks
def daytimeUntilEveryWorker(
    testCase: TestCase, netd: Any, workers: int, batches: int = 20, size: int = 8
) -> defer.Generator:
    """
    Ask daytime in batches of concurrent connections until connections of
    one batch were served by every worker (at most C{batches} batches);
    return the workers seen.
    """
    endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", netd.port("daytime"))
    seen: set[int] = set()
    for _batch in range(batches):
        clients, ports = [], []
        for _ in range(size):
            client = EchoClient()
            yield connectProtocol(endpoint, client)
            clients.append(client)
            ports.append(client.transport.getHost().port)
        replies = yield defer.gatherResults([client.closed for client in clients])
        for reason in replies:
            testCase.assertIsInstance(reason, ConnectionDone)
        for client in clients:
            testCase.assertRegex(client.received, rb"\d\d:\d\d:\d\d")
        yield waitUntil(
            lambda ports=ports: all(port in servedBy(netd, "daytime") for port in ports)
        )
        served = servedBy(netd, "daytime")
        seen |= {served[port] for port in ports}
        if len(seen) == workers:
            break
    return seen


class WorkersTests(TestCase):
    """
    C{twistd -n netd --workers 2} for real: one parent, two workers.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_everyWorkerServes(self) -> defer.Generator:
        """
        The parent logs each listener once and C{netd ready} once both
        workers listen; connections are served by both workers; echo and
        UDP echo answer; the parent's status names the workers.
        """
        notify = listenNotifySocket(self)
        netd = yield runNetd(
            self,
            "--workers",
            "2",
            "--services",
            "echo,daytime",
            "--echo",
            "tcp:0:interface=127.0.0.1",
            "--echo",
            "udp:0:interface=127.0.0.1",
            "--daytime",
            "tcp:0:interface=127.0.0.1",
            listeners=3,
            env=projectEnvironment(NOTIFY_SOCKET=notify.address),
        )
        ready = yield notify.received("READY")
        self.assertTrue(ready["STATUS"].endswith("with 2 workers"), ready)
        output = netd.output.decode()
        self.assertEqual(len(netd.addresses), 3)
        self.assertEqual(output.count("netd ready: "), 1)
        self.assertEqual(output.count("worker ready: "), 2)
        pids = workerPids(netd)
        self.assertEqual(sorted(pids), [1, 2])
        self.assertNotIn(netd.transport.pid, pids.values())

        seen = yield daytimeUntilEveryWorker(self, netd, 2)
        self.assertEqual(seen, {1, 2})

        clients = []
        for _ in range(16):
            client = yield connectEcho(netd.port("echo"))
            clients.append(client)
        replies = yield defer.gatherResults(
            [client.exchange(b"ping%02d" % n, 12) for n, client in enumerate(clients)]
        )
        self.assertEqual(replies, [b"Echo=>ping%02d" % n for n in range(16)])
        for client in clients:
            client.transport.loseConnection()
        udp = listenDatagramClient(self)
        for n in range(4):
            reply = yield udp.ask(b"dgram%d" % n, netd.port("echo", "UDP"))
            self.assertEqual(reply, b"Echo=>dgram%d" % n)

    @defer.inlineCallbacks
    def test_wrappedEndpoints(self) -> defer.Generator:
        """
        Workers serve C{tls:} (each with its own TLS context), C{unix:} and
        C{haproxy:} endpoints on the sockets the parent opened: a verified
        TLS exchange, a UNIX exchange, and a PROXY header whose client the
        connection log names.
        """
        from tests.common import makeCertificates, tlsClientEndpoint

        certificates = makeCertificates(self)
        path = os.path.abspath(self.mktemp())
        netd = yield runNetd(
            self,
            *TWO_ECHO,
            "--echo",
            certificates.endpoint(),
            "--echo",
            f"unix:{path}",
            "--echo",
            "haproxy:tcp:0:interface=127.0.0.1",
            listeners=3,
        )
        tlsPort, _, proxiedPort = (port for *_, port in netd.addresses)
        replies = yield defer.gatherResults(
            [
                exchange(tlsClientEndpoint(certificates, tlsPort), b"tls", until=9)
                for _ in range(4)
            ]
        )
        self.assertEqual(replies, [b"Echo=>tls"] * 4)
        unix = UNIXClientEndpoint(_reactor, path)
        self.assertEqual((yield exchange(unix, b"unix")), b"Echo=>unix")
        proxied = TCP4ClientEndpoint(_reactor, "127.0.0.1", proxiedPort)
        header = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 7\r\n"
        self.assertEqual((yield exchange(proxied, header + b"far")), b"Echo=>far")
        yield waitForOutput(netd, "echo TCP 192.0.2.7:5555 closed")

    @defer.inlineCallbacks
    def test_logFile(self) -> defer.Generator:
        """
        With C{--logfile}, the workers' events reach the parent's log file
        through the parent, tagged with the worker, and nothing goes to
        stdout.
        """
        notify = listenNotifySocket(self)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        logPath = os.path.join(directory, "netd.log")
        netd = NetdProcess(0)
        netd.ready.addErrback(lambda failure: None)  # it logs to the file
        argv = [TWISTD, "--nodaemon", "--pidfile=", f"--logfile={logPath}", "netd"]
        argv += ["--workers", "2", "--services", "daytime"]
        argv += ["--daytime", "tcp:0:interface=127.0.0.1"]
        _reactor.spawnProcess(
            netd,
            TWISTD,
            argv,
            env=projectEnvironment(NOTIFY_SOCKET=notify.address),
            path=directory,
        )

        def stop() -> defer.Deferred[int] | None:
            if netd.ended.called:
                return None
            netd.signal("TERM")
            return netd.ended

        self.addCleanup(stop)
        ready = yield notify.received("READY")
        port = int(re.search(r"TCP 127\.0\.0\.1:(\d+)", ready["STATUS"])[1])
        endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", port)
        self.assertRegex((yield exchange(endpoint)), rb"\d\d:\d\d:\d\d")

        def logged() -> str:
            with open(logPath) as stream:
                return stream.read()

        yield waitUntil(lambda: SERVED.search(logged()) is not None)
        text = logged()
        self.assertEqual(text.count("daytime listening on TCP"), 1)
        self.assertIn("[worker 1] worker ready: ", text)
        self.assertIn("[worker 2] worker ready: ", text)
        netd.signal("TERM")
        yield netd.ended
        self.assertEqual(netd.output, b"")

    @defer.inlineCallbacks
    def test_reloadEveryWorker(self) -> defer.Generator:
        """
        C{SIGHUP} reloads every worker: the parent says C{RELOADING=1},
        then C{READY=1} once both reloaded; new connections to either
        worker and UDP get the new prefix.
        """
        config = os.path.abspath(self.mktemp())

        def write(prefix: str) -> None:
            with open(config, "w") as stream:
                stream.write(
                    f'services = ["echo", "daytime"]\nworkers = 2\n'
                    f'[echo]\nprefix = "{prefix}"\n'
                    'endpoints = ["tcp:0:interface=127.0.0.1", '
                    '"udp:0:interface=127.0.0.1"]\n'
                    '[daytime]\nendpoints = ["tcp:0:interface=127.0.0.1"]\n'
                )

        write("A=>")
        netd, notify = yield runNetdNotifying(self, "--config", config)
        endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", netd.port("echo"))
        self.assertEqual((yield exchange(endpoint, b"one")), b"A=>one")

        write("B=>")
        netd.signal("HUP")
        yield notify.received("RELOADING")
        yield notify.received("READY", 2)
        output = yield waitForOutput(netd, "reload: echo.prefix changed", count=2)
        self.assertIn(
            "[worker 1] reload: echo.prefix changed from 'A=>' to 'B=>'", output
        )
        self.assertIn(
            "[worker 2] reload: echo.prefix changed from 'A=>' to 'B=>'", output
        )
        # Both workers serve, and every connection gets the new prefix.
        before = set(servedBy(netd, "echo"))
        seen: set[int] = set()
        for batch in range(1, 21):
            replies = yield defer.gatherResults(
                [exchange(endpoint, b"two") for _ in range(8)]
            )
            self.assertEqual(replies, [b"B=>two"] * 8)
            yield waitUntil(
                lambda b=batch: len(servedBy(netd, "echo")) >= len(before) + 8 * b
            )
            served = servedBy(netd, "echo")
            seen = {served[port] for port in served if port not in before}
            if seen == {1, 2}:
                break
        self.assertEqual(seen, {1, 2})
        udp = listenDatagramClient(self)
        reply = yield udp.ask(b"dgram", netd.port("echo", "UDP"))
        self.assertEqual(reply, b"B=>dgram")
        self.assertEqual(notify.keys(), ["READY", "RELOADING", "READY"])

    @defer.inlineCallbacks
    def test_gracefulStop(self) -> defer.Generator:
        """
        C{SIGTERM} to the parent: a delayed echo reply that a worker holds
        is still sent, then that worker, the other, and the parent end.
        """
        netd = yield runNetd(
            self,
            *TWO_ECHO,
            "--echo",
            "tcp:0:interface=127.0.0.1",
            "--echo-delay",
            "3",
            "--grace",
            "30",
            listeners=1,
        )
        yield waitForOutput(netd, "worker ready: ", count=2)
        with socket.create_connection(("127.0.0.1", netd.port("echo"))) as sock:
            sock.sendall(b"hello")
            busy = EchoClient()
            _reactor.adoptStreamConnection(
                sock.fileno(), socket.AF_INET, Factory.forProtocol(lambda: busy)
            )
        reply = busy.expect(11)
        pids = workerPids(netd).values()
        yield waitUntil(lambda: any(heldBy(pid, busy.transport) for pid in pids))
        netd.signal("TERM")
        self.assertFalse(reply.called)
        self.assertEqual((yield reply), b"Echo=>hello")
        self.assertIsInstance((yield busy.closed), ConnectionDone)
        yield netd.ended
        output = netd.output.decode()
        self.assertIn("stopping: 1 connections open", output)
        self.assertEqual(len(re.findall(r"\[worker \d\] Server Shut Down", output)), 2)
        self.assertIn("worker 1 ended", output)
        self.assertIn("worker 2 ended", output)
        for pid in pids:
            self.assertFalse(os.path.exists(f"/proc/{pid}/status") and _alive(pid))

    @defer.inlineCallbacks
    def test_downloadSurvivesStop(self) -> defer.Generator:
        """
        A getfile download under way in a worker when the parent is told to
        stop (its client not even reading then) completes, byte for byte.
        """
        content = os.urandom(8 * 1024 * 1024)
        netd, received = yield stopDuringDownload(self, content, "--workers", "2")
        self.assertTrue(received == b"OK %d\n" % len(content) + content)
        yield netd.ended
        self.assertIn(b"sent, 8388608 of 8388608 bytes", netd.output)

    @defer.inlineCallbacks
    def test_limitShared(self) -> defer.Generator:
        """
        C{--max-connections 2} with two workers allows each worker one
        connection: of three connections held open, one is refused, by a
        worker that already has one.
        """
        netd = yield runNetd(
            self,
            *TWO_ECHO,
            "--echo",
            "tcp:0:interface=127.0.0.1",
            "--max-connections",
            "2",
        )
        yield waitForOutput(netd, "worker ready: ", count=2)
        clients = []
        for _ in range(3):
            # A refused client may be reset before its connect completes.
            connecting = connectEcho(netd.port("echo"))
            connecting.addErrback(lambda failure: failure.trap(ConnectError) and None)
            client = yield connecting
            if client is not None:
                clients.append(client)
        output = yield waitForOutput(netd, "refused TCP 127.0.0.1:")
        self.assertIn(": already 1 connections", output)
        for client in clients:
            client.transport.loseConnection()

    @defer.inlineCallbacks
    def test_deadWorkerRestarted(self) -> defer.Generator:
        """
        A worker killed is restarted by the parent, which logs it; service
        goes on meanwhile, and the new worker serves.
        """
        netd, notify = yield runNetdNotifying(
            self,
            "--workers",
            "2",
            "--services",
            "daytime",
            "--daytime",
            "tcp:0:interface=127.0.0.1",
        )
        victim = workerPids(netd)[1]
        os.kill(victim, signal.SIGKILL)
        output = yield waitForOutput(netd, "worker 1 started: pid", count=2)
        self.assertIn(
            f"worker 1 (pid {victim}) ended by signal 9; restarting it", output
        )
        endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", netd.port("daytime"))
        self.assertRegex((yield exchange(endpoint)), rb"\d\d:\d\d:\d\d")
        yield waitForOutput(netd, "[worker 1] worker ready: ", count=2)
        self.assertNotEqual(workerPids(netd)[1], victim)
        restarting = yield notify.received("STATUS", 2)
        self.assertTrue(restarting["STATUS"].startswith("worker 1 ended by signal 9"))
        healed = yield notify.received("STATUS", 3)
        self.assertTrue(healed["STATUS"].startswith("listening on daytime TCP"))
        self.assertEqual(notify.keys(), ["READY", "STATUS", "STATUS"])
        seen = yield daytimeUntilEveryWorker(self, netd, 2)
        self.assertEqual(seen, {1, 2})

    @defer.inlineCallbacks
    def test_orphansStop(self) -> defer.Generator:
        """
        Workers whose parent was killed (and so could not stop them) stop
        by themselves.
        """
        netd = yield runNetd(
            self, *TWO_ECHO, "--echo", "tcp:0:interface=127.0.0.1", listeners=1
        )
        yield waitForOutput(netd, "worker ready: ", count=2)
        pids = list(workerPids(netd).values())
        self.assertTrue(all(_alive(pid) for pid in pids))
        self.addCleanup(_killAlive, pids)
        netd.signal("KILL")
        yield netd.ended
        gone = waitUntil(lambda: not any(_alive(pid) for pid in pids))
        yield gone.addTimeout(30, _reactor)

    @defer.inlineCallbacks
    def test_socketActivation(self) -> defer.Generator:
        """
        Under C{systemd-socket-activate} (a TCP and a UDP socket, by name)
        with C{--workers 2}, the workers serve the inherited sockets, and
        the parent alone tells C{$NOTIFY_SOCKET} it is ready.
        """
        streamPort, datagramPort = freePort(), freePort(socket.SOCK_DGRAM)
        notify = listenNotifySocket(self)
        passOn = ["--setenv=PYTHONPATH", "--setenv=NOTIFY_SOCKET"]
        launcher = [SOCKET_ACTIVATE, "--datagram", *passOn]
        launcher += [f"--listen=127.0.0.1:{datagramPort}"]
        launcher += [SOCKET_ACTIVATE, *passOn, f"--listen=127.0.0.1:{streamPort}"]
        launcher += ["--fdname=echo-udp:echo"]
        udp = listenDatagramClient(self)
        starting = runNetd(
            self,
            *TWO_ECHO,
            "--echo",
            "systemd:domain=INET:name=echo",
            "--echo",
            "systemd-udp:domain=INET:name=echo-udp",
            listeners=2,
            launcher=launcher,
            env=projectEnvironment(NOTIFY_SOCKET=notify.address),
        )
        knock = task.LoopingCall(
            udp.transport.write, b"knock", ("127.0.0.1", datagramPort)
        )
        knock.start(0.2)
        try:
            netd = yield starting
        finally:
            knock.stop()
        self.assertIn(("echo", "TCP", "127.0.0.1", streamPort), netd.addresses)
        self.assertIn(("echo", "UDP", "127.0.0.1", datagramPort), netd.addresses)
        ready = yield notify.received("READY")
        self.assertIn("with 2 workers", ready["STATUS"])
        endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", streamPort)
        for batch in range(1, 21):
            replies = yield defer.gatherResults(
                [exchange(endpoint, b"plain") for _ in range(8)]
            )
            self.assertEqual(replies, [b"Echo=>plain"] * 8)
            yield waitUntil(lambda b=batch: len(servedBy(netd, "echo")) >= 8 * b)
            if set(servedBy(netd, "echo").values()) == {1, 2}:
                break
        self.assertEqual(set(servedBy(netd, "echo").values()), {1, 2})
        self.assertIn(b"Echo=>knock", udp.replies)
        self.assertEqual([key for key in notify.keys() if key == "READY"], ["READY"])


def _alive(pid: int) -> bool:
    """
    Whether C{pid} is a process that has not ended (a zombie has).
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _killAlive(pids: list[int]) -> None:
    """
    Kill those of C{pids} (this test's own workers) still running.
    """
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
