"""
Helpers shared by netd's tests: running C{twistd -n netd} as a subprocess,
and talking to real sockets on loopback.
"""

from __future__ import annotations

import os
import re
import sys
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
) -> defer.Deferred[NetdProcess]:
    """
    Start C{twistd -n netd ARGUMENTS} and fire once it is ready (and logged
    at least C{listeners} listening addresses). The process is stopped when
    the test ends.

    @param testCase: the test, for its clean-up and temporary directory.
    @param path: the working directory; a fresh temporary one by default.
    @param timeout: seconds to wait for the listeners.
    """
    if path is None:
        path = testCase.mktemp()
        os.makedirs(path)
    netd = NetdProcess(listeners)
    argv = [TWISTD, "--nodaemon", "--pidfile=", "netd", *arguments]
    _reactor.spawnProcess(
        netd,
        TWISTD,
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


class Collect(protocol.Protocol):
    """
    A client that collects everything the server sends until it closes.

    @ivar closed: fires with all the bytes received when the connection ends.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

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
