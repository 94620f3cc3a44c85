"""
Helpers shared by netd's tests: running C{twistd -n netd} as a subprocess,
and talking to real sockets on loopback.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock, _FakePort

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")

READY = b"netd ready: "
LISTENING = re.compile(
    r"(?P<service>[\w-]+) listening on (?P<kind>TCP|UDP|UNIX) "
    r"(?:\[(?P<host6>[^\]]+)\]|(?P<host>[^:\s]+)):?(?P<port>\d+)?"
)


def twistdReactor() -> list[str]:
    """
    The C{twistd} option that chooses the reactor netd runs on in these
    tests: C{-r NAME} from C{$NETD_TEST_TWISTD_REACTOR} (C{make trial}
    runs the suite on each reactor), else none, for netd's default.
    """
    name = os.environ.get("NETD_TEST_TWISTD_REACTOR")
    return ["-r", name] if name else []


def projectEnvironment(**extra: str) -> dict[str, str]:
    """
    The environment for a subprocess that must import this checkout of netd.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [PROJECT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.update(extra)
    return env


class NetdProcess(protocol.ProcessProtocol):
    """
    A C{twistd -n netd} subprocess, with its output and listening addresses.

    @ivar output: everything it wrote, stdout and stderr together.
    @ivar addresses: C{(service, kind, host, port)} for each logged listener.
    @ivar ready: fires with this object once netd logged that it is ready
        and at least C{listeners} addresses, or fails if the process ends
        first.
    @ivar ended: fires with the exit status when the process ends.
    """

    def __init__(self, listeners: int) -> None:
        self.listeners = listeners
        self.output = b""
        self.addresses: list[tuple[str, str, str, int]] = []
        self.ready: defer.Deferred[NetdProcess] = defer.Deferred()
        self.ended: defer.Deferred[int] = defer.Deferred()
        self._lines = b""
        self._watchers: list[defer.Deferred[None]] = []

    def outputChanged(self) -> defer.Deferred[None]:
        """
        Fire the next time the process writes anything (or ends).
        """
        watcher: defer.Deferred[None] = defer.Deferred()
        self._watchers.append(watcher)
        return watcher

    def _notify(self) -> None:
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.callback(None)

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._lines += data
        *complete, self._lines = self._lines.split(b"\n")
        for line in complete:
            match = LISTENING.search(line.decode("utf-8", "replace"))
            if match is not None:
                self.addresses.append(
                    (
                        match["service"],
                        match["kind"],
                        match["host6"] or match["host"],
                        int(match["port"] or 0),
                    )
                )
        if (
            READY in self.output
            and len(self.addresses) >= self.listeners
            and not self.ready.called
        ):
            self.ready.callback(self)
        self._notify()

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode if reason.check(ProcessTerminated) else 0
        if reason.check(ProcessDone, ProcessTerminated) and code is None:
            code = -1
        if not self.ready.called:
            self.ready.errback(
                RuntimeError(
                    f"netd exited ({code}) before listening:\n"
                    + self.output.decode("utf-8", "replace")
                )
            )
        self.ended.callback(code)
        self._notify()

    def port(self, service: str, kind: str = "TCP") -> int:
        """
        The port a service was logged listening on.
        """
        for name, k, _host, port in self.addresses:
            if name == service and k == kind:
                return port
        raise KeyError((service, kind))

    def signal(self, name: str) -> None:
        """
        Send a signal (C{"TERM"}, C{"HUP"}...) to the process if it runs.
        """
        if self.transport is not None and self.transport.pid is not None:
            self.transport.signalProcess(name)


def runNetd(
    testCase: Any,
    *arguments: str,
    listeners: int = 1,
    env: dict[str, str] | None = None,
    path: str | None = None,
    timeout: float = 30,
    launcher: Sequence[str] = (),
) -> defer.Deferred[NetdProcess]:
    """
    Start C{twistd -n netd ARGUMENTS} and fire once it is ready (and logged
    at least C{listeners} listening addresses). The process is stopped when
    the test ends.

    @param testCase: the test, for its clean-up and temporary directory.
    @param path: the working directory; a fresh temporary one by default.
    @param timeout: seconds to wait for the listeners.
    @param launcher: a command that ends by executing C{twistd ...} in its
        own process (C{systemd-socket-activate -l ...}), or nothing.
    """
    if path is None:
        path = testCase.mktemp()
        os.makedirs(path)
    netd = NetdProcess(listeners)
    argv = [*launcher, TWISTD, "--nodaemon", "--pidfile=", *twistdReactor()]
    argv += ["netd", *arguments]
    _reactor.spawnProcess(
        netd,
        argv[0],
        argv,
        env=env if env is not None else projectEnvironment(),
        path=path,
    )

    def stop() -> defer.Deferred[int] | None:
        if netd.ended.called:
            return None
        netd.signal("TERM")
        killer = _reactor.callLater(10, lambda: netd.signal("KILL"))
        netd.ended.addBoth(lambda result: killer.active() and killer.cancel())
        return netd.ended

    testCase.addCleanup(stop)
    return netd.ready.addTimeout(timeout, _reactor)


def runCommand(
    executable: str,
    *arguments: str,
    env: dict[str, str] | None = None,
    path: str | None = None,
    stdin: bytes = b"",
) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """
    Run a command to its end: fires with C{(stdout, stderr, exit status)},
    the status negative for a signal.
    """

    class Collect(protocol.ProcessProtocol):
        def __init__(self) -> None:
            self.out, self.err = b"", b""
            self.done: defer.Deferred[tuple[bytes, bytes, int]] = defer.Deferred()

        def connectionMade(self) -> None:
            if stdin:
                self.transport.write(stdin)
            self.transport.closeStdin()

        def outReceived(self, data: bytes) -> None:
            self.out += data

        def errReceived(self, data: bytes) -> None:
            self.err += data

        def processEnded(self, reason: Any) -> None:
            value = reason.value
            code = (
                value.exitCode if value.exitCode is not None else -(value.signal or 0)
            )
            self.done.callback((self.out, self.err, code))

    collect = Collect()
    _reactor.spawnProcess(
        collect,
        executable,
        [executable, *arguments],
        env=env if env is not None else projectEnvironment(),
        path=path,
    )
    return collect.done


class Certificates:
    """
    PEM files made by C{trustme} for TLS tests: a CA, a server certificate
    for C{localhost}, C{127.0.0.1} and C{::1}, a client certificate, and a
    client certificate from another CA (C{strangerCert}/C{strangerKey}).

    @ivar directory: where the files are.
    """

    def __init__(self, directory: str) -> None:
        import trustme

        directory = os.path.abspath(directory)
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.authority = trustme.CA()
        server = self.authority.issue_cert("localhost", "127.0.0.1", "::1")
        client = self.authority.issue_cert(
            "client.example", common_name="netd test client"
        )
        stranger = trustme.CA().issue_cert("client.example", common_name="stranger")
        self.ca = self.write("ca.pem", self.authority.cert_pem.bytes())
        self.serverCert = self.write(
            "server.pem", b"".join(blob.bytes() for blob in server.cert_chain_pems)
        )
        self.serverKey = self.write("server.key", server.private_key_pem.bytes())
        self.clientCert = self.write("client.pem", client.cert_chain_pems[0].bytes())
        self.clientKey = self.write("client.key", client.private_key_pem.bytes())
        self.strangerCert = self.write(
            "stranger.pem", stranger.cert_chain_pems[0].bytes()
        )
        self.strangerKey = self.write("stranger.key", stranger.private_key_pem.bytes())

    def write(self, name: str, data: bytes) -> str:
        """
        Write a file beside the others; return its path.
        """
        path = os.path.join(self.directory, name)
        with open(path, "wb") as stream:
            stream.write(data)
        return path

    def endpoint(
        self, port: int = 0, clientCA: bool = False, interface: str = "127.0.0.1"
    ) -> str:
        """
        A C{tls:} endpoint description serving the server certificate,
        requiring a client certificate from the CA when C{clientCA}.
        """
        from twisted.internet.endpoints import quoteStringArgument

        description = (
            f"tls:{port}:privateKey={quoteStringArgument(self.serverKey)}"
            f":certKey={quoteStringArgument(self.serverCert)}:interface={quoteStringArgument(interface)}"
        )
        if clientCA:
            description += f":clientCA={quoteStringArgument(self.ca)}"
        return description


def makeCertificates(testCase: Any) -> Certificates:
    """
    Fresh L{Certificates} in the test's temporary directory.
    """
    return Certificates(testCase.mktemp())


class CollectUntilClosed(protocol.Protocol):
    """
    Send some bytes (then half-close, if asked), and collect everything
    the server sends until it closes: one exchange with any netd TCP
    service.

    @ivar closed: fires with the bytes received once the connection ends.
    """

    def __init__(
        self, send: bytes = b"", halfClose: bool = True, until: int | None = None
    ) -> None:
        self.send = send
        self.halfClose = halfClose
        self.until = until
        self.received = b""
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        if self.send:
            self.transport.write(self.send)
        if self.halfClose:
            self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.until is not None and len(self.received) >= self.until:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(self.received)


class MemoryReactorUDP(MemoryReactorClock):
    """
    Twisted's L{MemoryReactorClock}, plus the C{listenUDP} it lacks.

    @ivar udpServers: C{(port, protocol, interface, maxPacketSize)} for each
        call to C{listenUDP}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.udpServers: list[tuple[int, Any, str, int]] = []

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> Any:
        self.udpServers.append((port, protocol, interface, maxPacketSize))
        return _FakePort(IPv4Address("UDP", interface or "0.0.0.0", port))


@defer.inlineCallbacks
def exchange(
    endpoint: Any, send: bytes = b"", until: int | None = None
) -> defer.Generator:
    """
    Connect with C{endpoint} (plain, or L{netd.tlsclient.clientEndpoint} for a
    verified TLS connection), send C{send}, and return what the server sent
    until it closed, or until C{until} bytes came.

    Without C{until}, the client half-closes after sending (over plain TCP;
    TLS has no half-close, so there the server must close by itself).
    """
    from twisted.internet.endpoints import connectProtocol

    client = CollectUntilClosed(send, until is None, until)
    yield connectProtocol(endpoint, client)
    received = yield client.closed
    return received


def tlsClientEndpoint(
    certificates: Certificates,
    port: int,
    host: str = "127.0.0.1",
    client: bool = False,
) -> Any:
    """
    A verifying TLS client endpoint trusting the test CA, presenting the
    test client certificate when C{client}.
    """
    from netd.tlsclient import clientEndpoint

    return clientEndpoint(
        _reactor,
        host,
        port,
        ca=certificates.ca,
        cert=certificates.clientCert if client else None,
        key=certificates.clientKey if client else None,
        timeout=10,
    )


def opensslClient(
    port: int, *options: str, stdin: bytes = b"", host: str = "127.0.0.1"
) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """
    Run C{openssl s_client -connect HOST:PORT OPTIONS} as an outside client,
    writing C{stdin}; it waits for the server to close (C{-ign_eof}).
    """
    return runCommand(
        "openssl",
        "s_client",
        "-connect",
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "-ign_eof",
        *options,
        stdin=stdin,
    )


def waitForOutput(
    netd: NetdProcess, text: str, count: int = 1, timeout: float = 10
) -> defer.Deferred[str]:
    """
    Fire with netd's output once C{text} occurs C{count} times in it (a log
    line written when a connection ends, say).
    """
    found: defer.Deferred[str] = defer.Deferred()
    received = netd.outReceived

    def check() -> None:
        output = netd.output.decode("utf-8", "replace")
        if not found.called and output.count(text) >= count:
            found.callback(output)

    def outReceived(data: bytes) -> None:
        received(data)
        check()

    netd.outReceived = netd.errReceived = outReceived  # type: ignore[method-assign]
    check()
    return found.addTimeout(timeout, _reactor)


def refusedExchange(
    endpoint: Any, send: bytes = b"", until: int | None = None
) -> defer.Deferred[bytes]:
    """
    L{exchange} with a server expected to refuse: a connection reset
    before the connect completed (netd aborts refused clients at once)
    counts as receiving nothing.
    """
    from twisted.internet.error import ConnectError

    def reset(failure: Any) -> bytes:
        failure.trap(ConnectError)
        return b""

    return exchange(endpoint, send, until).addErrback(reset)


class NotifySocket(protocol.DatagramProtocol):
    """
    A stand-in for the service manager's C{$NOTIFY_SOCKET}: it collects the
    C{sd_notify} messages netd sends.

    @ivar address: the value for C{NOTIFY_SOCKET} (an abstract socket).
    @ivar messages: each message received, as a dict of its fields.
    """

    def __init__(self) -> None:
        self.address = f"@netd-test-{os.getpid()}-{id(self)}"
        self.messages: list[dict[str, str]] = []
        self._waiting: list[tuple[str, int, defer.Deferred[dict[str, str]]]] = []

    def datagramReceived(self, data: bytes, address: Any) -> None:
        lines = data.decode("utf-8", "replace").splitlines()
        self.messages.append(dict(line.split("=", 1) for line in lines if "=" in line))
        for waiting in list(self._waiting):
            self._check(*waiting)

    def received(self, key: str, count: int = 1) -> defer.Deferred[dict[str, str]]:
        """
        Fire with the C{count}th message holding C{key} once it has come.
        """
        waiting: tuple[str, int, defer.Deferred[dict[str, str]]] = (
            key,
            count,
            defer.Deferred(),
        )
        self._waiting.append(waiting)
        self._check(*waiting)
        return waiting[2]

    def _check(
        self, key: str, count: int, done: defer.Deferred[dict[str, str]]
    ) -> None:
        holding = [message for message in self.messages if key in message]
        if len(holding) >= count:
            self._waiting.remove((key, count, done))
            done.callback(holding[count - 1])

    def keys(self) -> list[str]:
        """
        The first field of every message so far, in order (C{READY}...).
        """
        return [next(iter(message)) for message in self.messages]


def listenNotifySocket(testCase: Any) -> NotifySocket:
    """
    Listen on a fresh abstract C{AF_UNIX} datagram socket for C{sd_notify}
    messages, until the test ends.
    """
    notify = NotifySocket()
    port = _reactor.listenUNIXDatagram("\0" + notify.address[1:], notify)
    testCase.addCleanup(port.stopListening)
    return notify


def freePort(kind: int = socket.SOCK_STREAM) -> int:
    """
    A port on 127.0.0.1 that nothing used a moment ago, for a program (such
    as C{systemd-socket-activate}) that cannot be told to pick one.
    """
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def systemCommand(name: str) -> str:
    """
    The path of a system command the tests drive, sbin included (C{make
    sysdeps} installs them).

    @raise AssertionError: when it is not installed.
    """
    import shutil

    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise AssertionError(f"{name} is not installed: run `make sysdeps` as root")
    return found


class _Xinetd(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def errReceived(self, data: bytes) -> None:
        self.output += data
        if b"Started working" in self.output and not self.ready.called:
            self.ready.callback(None)

    outReceived = errReceived

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(
                RuntimeError(
                    f"xinetd exited:\n{self.output.decode('utf-8', 'replace')}"
                )
            )
        self.ended.callback(None)


def runXinetd(testCase: Any, services: dict[str, int]) -> defer.Deferred[None]:
    """
    Run xinetd (C{make sysdeps} installs it) in the foreground with its
    internal services on 127.0.0.1 only, and fire once it serves them. It
    is stopped (by its PID) when the test ends.

    @param services: xinetd's internal service ids (C{chargen-stream},
        C{discard-dgram}...) to the port each listens on.
    """
    xinetd = systemCommand("xinetd")
    directory = os.path.abspath(testCase.mktemp())
    os.makedirs(directory)
    config = os.path.join(directory, "xinetd.conf")
    with open(config, "w") as stream:
        for serviceId, port in services.items():
            name, kind = serviceId.rsplit("-", 1)
            dgram = kind == "dgram"
            stream.write(
                f"service {name}\n{{\n"
                "\ttype = INTERNAL UNLISTED\n"
                f"\tid = {serviceId}\n"
                f"\tsocket_type = {kind}\n"
                f"\tprotocol = {'udp' if dgram else 'tcp'}\n"
                f"\tport = {port}\n"
                "\tbind = 127.0.0.1\n"
                f"\twait = {'yes' if dgram else 'no'}\n"
                "}\n"
            )
    process = _Xinetd()
    transport = _reactor.spawnProcess(
        process,
        xinetd,
        [xinetd, "-dontfork", "-filelog", "/dev/stderr", "-f", config]
        + ["-pidfile", os.path.join(directory, "xinetd.pid")],
        env={},
        path=directory,
    )

    def stop() -> defer.Deferred[None] | None:
        if process.ended.called:
            return None
        transport.signalProcess("TERM")
        return process.ended

    testCase.addCleanup(stop)
    return process.ready.addTimeout(30, _reactor)
