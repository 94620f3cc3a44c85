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
from twisted.internet.error import ProcessDone, ProcessTerminated

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")

LISTENING = re.compile(
    r"(?P<service>[\w-]+) listening on (?P<kind>TCP|UDP|UNIX) "
    r"(?:\[(?P<host6>[^\]]+)\]|(?P<host>[^:\s]+)):?(?P<port>\d+)?"
)


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
    @ivar ready: fires with this object once C{listeners} addresses were
        logged, or fails if the process ends first.
    @ivar ended: fires with the exit status when the process ends.
    """

    def __init__(self, listeners: int) -> None:
        self.listeners = listeners
        self.output = b""
        self.addresses: list[tuple[str, str, str, int]] = []
        self.ready: defer.Deferred[NetdProcess] = defer.Deferred()
        self.ended: defer.Deferred[int] = defer.Deferred()
        self._lines = b""

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
        if len(self.addresses) >= self.listeners and not self.ready.called:
            self.ready.callback(self)

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
    Start C{twistd -n netd ARGUMENTS} and fire once it logged C{listeners}
    listening addresses. The process is stopped when the test ends.

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
    argv = [*launcher, TWISTD, "--nodaemon", "--pidfile=", "netd", *arguments]
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
