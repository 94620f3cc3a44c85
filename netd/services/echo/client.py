# -*- test-case-name: tests.test_echoclient -*-
"""
Echo clients: C{netd-client echo} (the book's echo-client: one lock-step
exchange per word) and C{netd-client load echo} (the book's testecho: many
concurrent clients, with rates and latencies).
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python import usage

from netd.cli import ClientCommand

STAMP_LENGTH = len(b" at ") + 24  # time.ctime() is always 24 characters


class LockStepEchoClient(Protocol):
    """
    Send one message at a time and wait for its whole reply.

    @ivar overhead: how many bytes a reply has beyond its message (the
        prefix, and the stamp if there is one).
    """

    def __init__(self, overhead: int) -> None:
        self.overhead = overhead
        self._buffer = b""
        self._waiting: defer.Deferred[bytes] | None = None
        self._expected = 0
        self.closed: defer.Deferred[None] = defer.Deferred()

    def exchange(self, message: bytes) -> defer.Deferred[bytes]:
        """
        Send C{message}; fire with its reply.
        """
        self._waiting = defer.Deferred()
        self._expected = len(message) + self.overhead
        self.transport.write(message)
        return self._waiting

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if self._waiting is not None and len(self._buffer) >= self._expected:
            reply = self._buffer[: self._expected]
            self._buffer = self._buffer[self._expected :]
            waiting, self._waiting = self._waiting, None
            waiting.callback(reply)

    def connectionLost(self, reason: Any) -> None:
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.errback(ConnectionError("the server closed before replying"))
        self.closed.callback(None)


class EchoCommand(ClientCommand):
    """
    C{netd-client echo [options] WORD...}: one exchange per word.
    """

    synopsis = "[options] WORD..."
    defaultPort = 50007
    optParameters = [["prefix", None, "Echo=>", "The server's reply prefix."]]
    optFlags = [["stamp", None, "The server stamps its replies (--echo-stamp)."]]

    def parseArgs(self, *words: str) -> None:
        self["words"] = list(words) or ["Hello network world"]

    def overhead(self) -> int:
        """
        How many bytes each reply has beyond its message.
        """
        extra = STAMP_LENGTH if self["stamp"] else 0
        return len(self["prefix"].encode("utf-8")) + extra

    @defer.inlineCallbacks
    def run(self, reactor: Any) -> Any:
        client = LockStepEchoClient(self.overhead())
        yield connectProtocol(self.endpoint(reactor), client)
        for word in self["words"]:
            reply = yield client.exchange(word.encode("utf-8"))
            self.write(f"Client received: {reply!r}\n")
        client.transport.loseConnection()
        yield client.closed
        return 0

    def write(self, text: str) -> None:
        """
        Print a line of the command's output.
        """
        import sys

        sys.stdout.write(text)
        sys.stdout.flush()


def percentile(sortedValues: list[float], fraction: float) -> float:
    """
    The value below which C{fraction} of C{sortedValues} lie (nearest rank).
    """
    if not sortedValues:
        return 0.0
    index = min(len(sortedValues) - 1, max(0, round(fraction * len(sortedValues)) - 1))
    return sortedValues[index]


class EchoLoadCommand(EchoCommand):
    """
    C{netd-client load echo [options]}: many concurrent lock-step clients.
    """

    synopsis = "[options]"
    optParameters = [
        ["clients", "c", 8, "Concurrent connections.", int],
        ["messages", "m", 1000, "Messages each connection sends.", int],
        ["size", "s", 64, "Bytes in each message.", int],
    ]

    def parseArgs(self) -> None:
        self["words"] = []

    def postOptions(self) -> None:
        super().postOptions()
        for name in ("clients", "messages", "size"):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be positive, not {self[name]!r}")

    @defer.inlineCallbacks
    def run(self, reactor: Any) -> Any:
        message = b"x" * self["size"]
        latencies: list[float] = []

        @defer.inlineCallbacks
        def oneClient() -> Any:
            client = LockStepEchoClient(self.overhead())
            yield connectProtocol(self.endpoint(reactor), client)
            for _ in range(self["messages"]):
                sent = reactor.seconds()
                reply = yield client.exchange(message)
                latencies.append(reactor.seconds() - sent)
                if not reply.endswith(message) and not self["stamp"]:
                    raise ValueError(f"wrong reply {reply[:40]!r}")
            client.transport.loseConnection()
            yield client.closed

        cpuBefore = _cpuSeconds()
        started = reactor.seconds()
        yield defer.gatherResults(
            [oneClient() for _ in range(self["clients"])], consumeErrors=True
        )
        elapsed = reactor.seconds() - started
        cpu = _cpuSeconds() - cpuBefore
        latencies.sort()
        self.write(
            f"{self['clients']} clients x {self['messages']} messages of "
            f"{self['size']} bytes in {elapsed:.3f} s: "
            f"{len(latencies) / elapsed:.0f} msg/s, "
            f"p50 {percentile(latencies, 0.50) * 1000:.3f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.3f} ms, "
            f"client CPU {100 * cpu / elapsed:.0f}%\n"
        )
        return 0


def _cpuSeconds() -> float:
    usage_ = resource.getrusage(resource.RUSAGE_SELF)
    return usage_.ru_utime + usage_.ru_stime


class LoadCommand(usage.Options):
    """
    C{netd-client load SERVICE [options]}: drive a service with many clients.
    """

    synopsis = "SERVICE [options]"
    subCommands = [["echo", None, EchoLoadCommand, "Lock-step echo clients."]]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("name a service to load: echo")

    def run(self, reactor: Any) -> defer.Deferred[int]:
        """
        Run the chosen service's load.
        """
        return self.subOptions.run(reactor)
