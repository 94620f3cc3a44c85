"""
End-to-end: netd as systemd runs it. A real socket activator
(C{systemd-socket-activate}), a stand-in C{$NOTIFY_SOCKET}, C{SIGHUP} and
C{SIGTERM} sent to a C{twistd -n netd} subprocess, and the units and
configs of C{etc/} checked by C{systemd-analyze} and started for real.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tomllib
from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from netd.tap import Options
from tests.common import (
    PROJECT,
    TWISTD,
    exchange,
    freePort,
    listenNotifySocket,
    projectEnvironment,
    runCommand,
    runNetd,
)

ETC = os.path.join(PROJECT, "etc")

#: Options naming a directory that the example configs set to a system path.
PATH_OPTIONS = ("getfile-root",)
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or "systemd-socket-activate"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "systemd-analyze"


class EchoClient(Protocol):
    """
    A lock-step echo client: send, then wait for so many bytes back.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[BaseException] = defer.Deferred()
        self._want: tuple[int, defer.Deferred[bytes]] | None = None

    def exchange(self, data: bytes, replyLength: int) -> defer.Deferred[bytes]:
        """
        Send C{data}; fire with the next C{replyLength} bytes received.
        """
        expected = self.expect(replyLength)
        self.transport.write(data)
        return expected

    def expect(self, replyLength: int) -> defer.Deferred[bytes]:
        """
        Fire with the next C{replyLength} bytes received.
        """
        self._want = (replyLength, defer.Deferred())
        return self._want[1]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._want is not None and len(self.received) >= self._want[0]:
            (length, done), self._want = self._want, None
            reply, self.received = self.received[:length], self.received[length:]
            done.callback(reply)

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(reason.value)


def connectEcho(port: int) -> defer.Deferred[EchoClient]:
    """
    Connect an L{EchoClient} to 127.0.0.1:C{port}.
    """
    return connectProtocol(
        TCP4ClientEndpoint(_reactor, "127.0.0.1", port), EchoClient()
    )


def heldBy(pid: int, transport: Any) -> bool:
    """
    Whether process C{pid} has accepted the far end of a loopback TCP
    connection and read every byte sent on it: per C{/proc/net/tcp}, the
    sending side has nothing unsent, the receiving side nothing unread, and
    the receiving socket is one of C{pid}'s open files.
    """
    client = transport.getHost().port, transport.getPeer().port
    sockets = {}
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            ends = tuple(int(address.split(":")[1], 16) for address in fields[1:3])
            queues = tuple(int(queue, 16) for queue in fields[4].split(":"))
            sockets[ends] = (fields[3], queues, fields[9])
    if client not in sockets or client[::-1] not in sockets:
        return False
    (_, (unsent, _), _), (state, (_, unread), inode) = (
        sockets[client],
        sockets[client[::-1]],
    )
    if (state, unsent, unread) != ("01", 0, 0):
        return False
    descriptors = f"/proc/{pid}/fd"
    return any(
        os.readlink(os.path.join(descriptors, name)) == f"socket:[{inode}]"
        for name in os.listdir(descriptors)
    )


def waitUntil(condition: Any, interval: float = 0.05) -> defer.Deferred[None]:
    """
    Fire once C{condition()} is true, checking every C{interval} seconds.
    """
    done: defer.Deferred[None] = defer.Deferred()

    def check() -> None:
        if condition():
            loop.stop()
            done.callback(None)

    loop = task.LoopingCall(check)
    loop.start(interval)
    return done


@defer.inlineCallbacks
def runNetdNotifying(testCase: TestCase, *arguments: str) -> defer.Generator:
    """
    Run netd with a stand-in C{$NOTIFY_SOCKET}; fire with the process and
    the socket once netd has said C{READY=1}.
    """
    notify = listenNotifySocket(testCase)
    netd = yield runNetd(
        testCase, *arguments, env=projectEnvironment(NOTIFY_SOCKET=notify.address)
    )
    yield notify.received("READY")
    return netd, notify


class DatagramClient(DatagramProtocol):
    """
    Send datagrams and collect the replies.
    """

    def __init__(self) -> None:
        self.replies: list[bytes] = []
        self._waiting: defer.Deferred[bytes] | None = None

    def datagramReceived(self, data: bytes, address: Any) -> None:
        self.replies.append(data)
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.callback(data)

    def ask(self, data: bytes, port: int) -> defer.Deferred[bytes]:
        """
        Send C{data} to 127.0.0.1:C{port}; fire with the next reply.
        """
        self._waiting = defer.Deferred()
        self.transport.write(data, ("127.0.0.1", port))
        return self._waiting


def listenDatagramClient(testCase: TestCase) -> DatagramClient:
    client = DatagramClient()
    port = _reactor.listenUDP(0, client, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    return client


def localPaths(testCase: TestCase) -> list[str]:
    """
    Command-line options that point the example configs' system paths
    (C{/srv/netd}...) at a fresh directory, for the options installed.
    """
    directory = os.path.abspath(testCase.mktemp())
    os.makedirs(directory)
    known = set(Options().synonyms)
    return [
        argument
        for option in PATH_OPTIONS
        if option in known
        for argument in (f"--{option}", directory)
    ]


class NotifyTests(TestCase):
    """
    netd tells the service manager when it is ready, reloading and stopping.
    """

    @defer.inlineCallbacks
    def test_readyReloadingStopping(self) -> defer.Generator:
        """
        Under C{$NOTIFY_SOCKET} netd sends C{READY=1} with a C{STATUS} naming
        the address it listens on once it listens, C{RELOADING=1} with
        C{MONOTONIC_USEC} then C{READY=1} again around a C{SIGHUP} reload, and
        C{STOPPING=1} on C{SIGTERM}, in that order.
        """
        notify = listenNotifySocket(self)
        netd = yield runNetd(
            self,
            "--services",
            "echo",
            "--echo",
            "tcp:0:interface=127.0.0.1",
            env=projectEnvironment(NOTIFY_SOCKET=notify.address),
        )
        ready = yield notify.received("READY")
        self.assertEqual(ready["READY"], "1")
        self.assertEqual(
            ready["STATUS"], f"listening on echo TCP 127.0.0.1:{netd.port('echo')}"
        )

        netd.signal("HUP")
        reloading = yield notify.received("RELOADING")
        self.assertEqual(reloading["RELOADING"], "1")
        self.assertRegex(reloading["MONOTONIC_USEC"], r"^[0-9]+$")
        yield notify.received("READY", 2)

        netd.signal("TERM")
        stopping = yield notify.received("STOPPING")
        self.assertEqual(stopping["STOPPING"], "1")
        yield netd.ended
        self.assertEqual(notify.keys(), ["READY", "RELOADING", "READY", "STOPPING"])


class ReloadTests(TestCase):
    """
    C{SIGHUP} re-reads the config file and applies what it can, with
    connections open.
    """

    @defer.inlineCallbacks
    def test_reloadKeepsOpenConnections(self) -> defer.Generator:
        """
        A connection open across a reload keeps working and gets the new
        prefix; UDP replies change too; a changed endpoint is logged as
        needing a restart; a config that became invalid changes nothing.
        """
        config = os.path.abspath(self.mktemp())

        def write(prefix: str, port: str = "0") -> None:
            with open(config, "w") as stream:
                stream.write(
                    f'services = ["echo"]\n[echo]\nprefix = "{prefix}"\n'
                    f'endpoints = ["tcp:{port}:interface=127.0.0.1", '
                    f'"udp:0:interface=127.0.0.1"]\n'
                )

        write("A=>")
        notify = listenNotifySocket(self)
        netd = yield runNetd(
            self,
            "--config",
            config,
            listeners=2,
            env=projectEnvironment(NOTIFY_SOCKET=notify.address),
        )
        yield notify.received("READY")
        client = yield connectEcho(netd.port("echo"))
        udp = listenDatagramClient(self)
        self.assertEqual((yield client.exchange(b"one", 6)), b"A=>one")

        write("B=>", port=str(freePort()))
        netd.signal("HUP")
        yield notify.received("READY", 2)
        self.assertEqual((yield client.exchange(b"two", 6)), b"B=>two")
        self.assertEqual(
            (yield udp.ask(b"dgram", netd.port("echo", "UDP"))), b"B=>dgram"
        )
        yield waitUntil(lambda: b"reload done" in netd.output)
        output = netd.output.decode()
        self.assertIn("reload: echo.prefix changed from 'A=>' to 'B=>'", output)
        self.assertIn("reload: echo.endpoints changed; it needs a restart", output)

        with open(config, "w") as stream:
            stream.write('[echo]\nprefix = "C=>"\nbogus = 1\n')
        netd.signal("HUP")
        ready = yield notify.received("READY", 3)
        self.assertIn("reload failed", ready["STATUS"])
        self.assertEqual((yield client.exchange(b"three", 8)), b"B=>three")
        yield waitUntil(lambda: b"unknown key echo.'bogus'" in netd.output)
        self.assertFalse(client.closed.called)

    @defer.inlineCallbacks
    def test_reloadLimitAndCertificate(self) -> defer.Generator:
        """
        With a TLS connection open, a reload that raises C{max-connections}
        and replaces the certificate files lets a new client in, which sees
        the new certificate; the open connection keeps working throughout.
        """
        from twisted.internet.error import ConnectError

        from netd.tlsclient import TLSError
        from tests.common import Certificates, exchange, tlsClientEndpoint

        old = Certificates(self.mktemp())
        config = os.path.abspath(self.mktemp())

        def write(limit: int) -> None:
            with open(config, "w") as stream:
                stream.write(
                    f'services = ["echo"]\n[echo]\nendpoints = [{old.endpoint()!r}]\n'
                    f"[echo.policy]\nmax-connections = {limit}\n"
                )

        write(1)
        netd, notify = yield runNetdNotifying(self, "--config", config)
        port = netd.port("echo")
        first = yield connectProtocol(tlsClientEndpoint(old, port), EchoClient())
        self.assertEqual((yield first.exchange(b"one", 9)), b"Echo=>one")
        yield self.assertFailure(
            exchange(tlsClientEndpoint(old, port), until=1), TLSError, ConnectError
        )
        yield waitUntil(lambda: b"refused" in netd.output)
        self.assertIn("already 1 connections", netd.output.decode())

        new = Certificates(self.mktemp())
        shutil.copy(new.serverCert, old.serverCert)
        shutil.copy(new.serverKey, old.serverKey)
        write(2)
        netd.signal("HUP")
        yield notify.received("READY", 2)
        # The log comes through another pipe than the notification.
        yield waitUntil(lambda: b"reload done" in netd.output)
        output = netd.output.decode()
        self.assertIn("reload: echo.policy changed: max-connections 1 -> 2", output)
        self.assertIn("reloaded", output)

        second = yield connectProtocol(tlsClientEndpoint(new, port), EchoClient())
        self.assertEqual((yield second.exchange(b"two", 9)), b"Echo=>two")
        self.assertEqual((yield first.exchange(b"old", 9)), b"Echo=>old")
        self.assertFalse(first.closed.called)
        for client in (first, second):
            client.transport.loseConnection()
            yield client.closed


class GracefulStopTests(TestCase):
    """
    C{SIGTERM}: netd stops accepting, lets what is in flight finish within
    its grace period, then aborts the rest.
    """

    @defer.inlineCallbacks
    def _startDelayed(
        self, delay: str, grace: str, env: dict[str, str] | None = None
    ) -> defer.Generator:
        """
        netd with a delayed first echo reply, and a client whose message
        netd has accepted and is holding.
        """
        netd = yield runNetd(
            self,
            "--services",
            "echo",
            "--echo",
            "tcp:0:interface=127.0.0.1",
            "--echo",
            "udp:0:interface=127.0.0.1",
            "--echo-delay",
            delay,
            "--grace",
            grace,
            listeners=2,
            env=env,
        )
        idle = yield connectEcho(netd.port("echo"))
        # "hello" is handed to the kernel now, not buffered by a transport.
        with socket.create_connection(("127.0.0.1", netd.port("echo"))) as sock:
            sock.sendall(b"hello")
            busy = EchoClient()
            _reactor.adoptStreamConnection(
                sock.fileno(), socket.AF_INET, Factory.forProtocol(lambda: busy)
            )
        reply = busy.expect(11)
        # Only once netd has read "hello" is its reply in flight; the
        # kernel shows when (and, for idle, that netd accepted it).
        for client in (idle, busy):
            yield waitUntil(lambda c=client: heldBy(netd.transport.pid, c.transport))
        return netd, idle, busy, reply

    @defer.inlineCallbacks
    def test_inFlightReplyCompletes(self) -> defer.Generator:
        """
        A reply still delayed when netd is told to stop is sent before the
        connection closes cleanly; an idle connection is closed at once,
        while the delayed one is still waiting; netd then exits.
        """
        netd, idle, busy, reply = yield self._startDelayed("3", "30")
        netd.signal("TERM")
        self.assertIsInstance((yield idle.closed), ConnectionDone)
        self.assertFalse(reply.called)
        self.assertEqual((yield reply), b"Echo=>hello")
        self.assertIsInstance((yield busy.closed), ConnectionDone)
        yield netd.ended
        self.assertIn("stopping: 2 connections open", netd.output.decode())

    @defer.inlineCallbacks
    def test_graceOverAbortsTheRest(self) -> defer.Generator:
        """
        A connection still busy when the grace period ends is aborted
        without its reply, and netd exits then rather than waiting for it
        (the reply is due in ten minutes, beyond the test's time-out).
        """
        netd, _idle, busy, reply = yield self._startDelayed("600", "0.5")
        netd.signal("TERM")
        yield busy.closed
        self.assertFalse(reply.called)
        yield netd.ended
        self.assertIn(
            "grace period of 0.5s over: aborting 1 connections", netd.output.decode()
        )

    test_graceOverAbortsTheRest.timeout = 60  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_secondSignalEndsGrace(self) -> defer.Generator:
        """
        A second C{SIGTERM} while the grace period runs ends it: the busy
        connection is aborted and netd exits at once (grace and reply are
        ten minutes away, beyond the test's time-out).
        """
        notify = listenNotifySocket(self)
        netd, _idle, busy, reply = yield self._startDelayed(
            "600", "600", env=projectEnvironment(NOTIFY_SOCKET=notify.address)
        )
        netd.signal("TERM")
        yield notify.received("STOPPING")
        netd.signal("TERM")
        yield busy.closed
        self.assertFalse(reply.called)
        yield netd.ended
        self.assertIn(
            "stopping again: not waiting for the grace period", netd.output.decode()
        )

    test_secondSignalEndsGrace.timeout = 60  # type: ignore[attr-defined]


class SocketActivationTests(TestCase):
    """
    netd adopts the sockets a real activator hands over, by name, as the
    units and config of C{etc/} name them.
    """

    @defer.inlineCallbacks
    def test_systemdSocketActivate(self) -> defer.Generator:
        """
        Under C{systemd-socket-activate} with one named socket per endpoint
        of C{etc/netd-socket.toml} (TCP and UDP), netd started by the first
        datagram serves every installed service on exactly those sockets,
        answers that first datagram, and tells C{$NOTIFY_SOCKET} it is
        ready, as under netd.socket and netd.service.
        """
        config = os.path.join(ETC, "netd-socket.toml")
        with open(config, "rb") as stream:
            endpoints = [
                endpoint
                for table in tomllib.load(stream).values()
                if isinstance(table, dict)
                for endpoint in table.get("endpoints", [])
            ]
        named = re.compile(r"^(systemd|systemd-udp):domain=INET:name=([\w-]+)$")
        streams, datagrams = {}, {}
        for endpoint in endpoints:
            match = named.match(endpoint)
            self.assertIsNotNone(match, endpoint)
            if match[1] == "systemd":
                streams[match[2]] = freePort()
            else:
                datagrams[match[2]] = freePort(socket.SOCK_DGRAM)
        self.assertIn("echo-udp", datagrams)
        notify = listenNotifySocket(self)
        # The activator serves one kind of socket: the datagram one hands
        # its sockets on to the stream one, which names them all. Each
        # passes on only the environment it is told to, as systemd does.
        passOn = ["--setenv=PYTHONPATH", "--setenv=NOTIFY_SOCKET"]
        launcher = [SOCKET_ACTIVATE, "--datagram", *passOn]
        launcher += [f"--listen=127.0.0.1:{port}" for port in datagrams.values()]
        launcher += [SOCKET_ACTIVATE, *passOn]
        launcher += [f"--listen=127.0.0.1:{port}" for port in streams.values()]
        launcher += ["--fdname=" + ":".join([*datagrams, *streams])]

        udp = listenDatagramClient(self)
        starting = runNetd(
            self,
            "--config",
            config,
            *localPaths(self),
            listeners=len(endpoints),
            launcher=launcher,
            env=projectEnvironment(NOTIFY_SOCKET=notify.address),
        )
        # The first datagram starts netd; resend until the activator listens.
        knock = task.LoopingCall(
            udp.transport.write, b"knock", ("127.0.0.1", datagrams["echo-udp"])
        )
        knock.start(0.2)
        try:
            netd = yield starting
        finally:
            knock.stop()
        for name, port in streams.items():
            self.assertIn((name, "TCP", "127.0.0.1", port), netd.addresses)
        for name, port in datagrams.items():
            service = name.removesuffix("-udp")
            self.assertIn((service, "UDP", "127.0.0.1", port), netd.addresses)
        client = yield connectEcho(streams["echo"])
        self.assertEqual((yield client.exchange(b"plain", 5)), b"plain")
        self.assertIn(b"knock", udp.replies)
        ready = yield notify.received("READY")
        self.assertIn(f"echo TCP 127.0.0.1:{streams['echo']}", ready["STATUS"])


class UnitFileTests(TestCase):
    """
    The units of C{etc/} are valid for systemd, hardened, and agree with
    the config they go with.
    """

    def setUp(self) -> None:
        self.units = sorted(
            name for name in os.listdir(ETC) if name.endswith((".service", ".socket"))
        )

    def _standIn(self) -> str:
        """
        A copy of the units whose C{ExecStart} runs this checkout's twistd
        (C{/opt/netd} is where the README installs it, absent here).
        """
        directory = self.mktemp()
        os.makedirs(directory)
        for name in self.units:
            with open(os.path.join(ETC, name)) as stream:
                text = stream.read()
            text = text.replace("/opt/netd/bin/twistd", TWISTD)
            with open(os.path.join(directory, name), "w") as stream:
                stream.write(text)
        return directory

    @defer.inlineCallbacks
    def test_analyzeVerify(self) -> defer.Generator:
        """
        C{systemd-analyze verify} accepts every unit without a word.
        """
        directory = self._standIn()
        out, err, code = yield runCommand(
            SYSTEMD_ANALYZE, "verify", *self.units, path=directory
        )
        self.assertEqual((err, code), (b"", 0), out)

    @defer.inlineCallbacks
    def test_analyzeVerifyRejectsNonsense(self) -> defer.Generator:
        """
        The verification above can fail: an unknown key is reported.
        """
        directory = self._standIn()
        with open(os.path.join(directory, "netd.service"), "a") as stream:
            stream.write("ProtectEverything=yes\n")
        _out, err, _code = yield runCommand(
            SYSTEMD_ANALYZE, "verify", "netd.service", path=directory
        )
        self.assertIn(b"Unknown key 'ProtectEverything'", err)

    @defer.inlineCallbacks
    def test_analyzeSecurity(self) -> defer.Generator:
        """
        C{systemd-analyze security} rates netd.service's exposure 2.0
        ("OK") or better.
        """
        directory = self._standIn()
        out, err, code = yield runCommand(
            SYSTEMD_ANALYZE,
            "security",
            "--offline=yes",
            "--threshold=20",
            "netd.service",
            path=directory,
        )
        self.assertEqual(code, 0, out + err)
        self.assertRegex(out.decode(), r"exposure level for netd.service: [01]\.\d")

    def test_execStartIsWhatTestsRun(self) -> None:
        """
        netd.service runs C{twistd --nodaemon --pidfile= netd --config FILE}:
        the command line L{runNetd} runs in these tests (with this
        checkout's twistd and a test config), so they run what systemd runs.
        """
        with open(os.path.join(ETC, "netd.service")) as stream:
            [execStart] = [
                line.strip() for line in stream if line.startswith("ExecStart=")
            ]
        self.assertEqual(
            execStart.split(),
            [
                "ExecStart=/opt/netd/bin/twistd",
                "--nodaemon",
                "--pidfile=",
                "netd",
                "--config",
                "/etc/netd/netd.toml",
            ],
        )

    def test_socketsMatchConfig(self) -> None:
        """
        Every C{systemd:}/C{systemd-udp:} endpoint of C{etc/netd-socket.toml}
        names a socket unit of the right kind that hands its socket to
        netd.service, netd.socket pulls in every other socket unit, and no
        socket is left unused.
        """
        with open(os.path.join(ETC, "netd-socket.toml"), "rb") as stream:
            config = tomllib.load(stream)
        wanted = {}
        for service in config["services"]:
            for endpoint in config[service]["endpoints"]:
                kind, _, rest = endpoint.partition(":")
                name = dict(part.split("=") for part in rest.split(":"))["name"]
                wanted[name] = "Stream" if kind == "systemd" else "Datagram"
        offered = {}
        pulledIn = set()
        for unit in self.units:
            if not unit.endswith(".socket"):
                continue
            with open(os.path.join(ETC, unit)) as stream:
                lines = dict(
                    line.strip().split("=", 1)
                    for line in stream
                    if "=" in line and not line.startswith("#")
                )
            self.assertEqual(lines["Service"], "netd.service", unit)
            kind = "Stream" if "ListenStream" in lines else "Datagram"
            offered[lines["FileDescriptorName"]] = kind
            if unit == "netd.socket":
                pulledIn = set(lines["Wants"].split())
        self.assertEqual(offered, wanted)
        self.assertEqual(
            pulledIn, {unit for unit in self.units if unit.startswith("netd-")}
        )


class Download(Protocol):
    """
    A getfile client that can stop reading: it fires C{started} with the
    first bytes and C{closed} with everything once the server closes.
    """

    def __init__(self) -> None:
        self.received = b""
        self.started: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.started.called:
            self.started.callback(None)

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(self.received)


@defer.inlineCallbacks
def stopDuringDownload(
    testCase: TestCase, content: bytes, *arguments: str
) -> defer.Generator:
    """
    Serve C{content} as C{big.bin} with C{twistd -n netd ARGUMENTS}, start
    an extended-form download of it, stop reading, send C{SIGTERM}, and once
    netd says it is stopping with that connection open, read on to the end.

    @return: the netd process and every byte the client received.
    """
    root = os.path.abspath(testCase.mktemp())
    os.makedirs(root)
    with open(os.path.join(root, "big.bin"), "wb") as stream:
        stream.write(content)
    netd = yield runNetd(
        testCase,
        *arguments,
        "--services",
        "getfile",
        "--getfile",
        "tcp:0:interface=127.0.0.1",
        "--getfile-root",
        root,
        "--grace",
        "60",
    )
    client = Download()
    yield connectProtocol(
        TCP4ClientEndpoint(_reactor, "127.0.0.1", netd.port("getfile")), client
    )
    client.transport.write(b"GETFILE/1 0 big.bin\n")
    yield client.started
    client.transport.pauseProducing()
    netd.signal("TERM")
    yield waitUntil(lambda: b"stopping: 1 connections open" in netd.output)
    client.transport.resumeProducing()
    received = yield client.closed
    return netd, received


class GetFileLifecycleTests(TestCase):
    """
    getfile across a stop and a reload of netd.
    """

    def makeRoot(self, files: dict[str, bytes]) -> str:
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        for name, data in files.items():
            with open(os.path.join(root, name), "wb") as stream:
                stream.write(data)
        return root

    @defer.inlineCallbacks
    def test_downloadSurvivesStop(self) -> defer.Generator:
        """
        A large download under way when netd is told to stop (its client
        not even reading at that moment) completes, byte for byte, within
        the grace period; then netd exits.
        """
        content = os.urandom(32 * 1024 * 1024)
        netd, received = yield stopDuringDownload(self, content)
        self.assertEqual(len(received), len(b"OK %d\n" % len(content)) + len(content))
        self.assertTrue(received == b"OK %d\n" % len(content) + content)
        # twistd ends by the signal that stopped it, as systemd expects.
        yield netd.ended
        self.assertIn(b"sent, 33554432 of 33554432 bytes", netd.output)
        self.assertIn(b"Server Shut Down.", netd.output)

    @defer.inlineCallbacks
    def test_reloadRoot(self) -> defer.Generator:
        """
        A reload that points getfile at another root serves the next
        request from there.
        """
        first = self.makeRoot({"which.txt": b"first root\n"})
        second = self.makeRoot({"which.txt": b"second root\n"})
        config = os.path.abspath(self.mktemp())

        def write(root: str) -> None:
            with open(config, "w") as stream:
                stream.write(
                    'services = ["getfile"]\n[getfile]\n'
                    'endpoints = ["tcp:0:interface=127.0.0.1"]\n'
                    f"root = {root!r}\n"
                )

        write(first)
        netd, notify = yield runNetdNotifying(self, "--config", config)
        endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", netd.port("getfile"))
        self.assertEqual((yield exchange(endpoint, b"which.txt\n")), b"first root\n")
        write(second)
        netd.signal("HUP")
        yield notify.received("READY", 2)
        # The log comes through another pipe than the notification.
        yield waitUntil(lambda: b"reload: getfile.root changed" in netd.output)
        self.assertEqual((yield exchange(endpoint, b"which.txt\n")), b"second root\n")
