"""
Tests for the objects service's isolation: worker processes
(L{netd.services.objects.pool}, L{netd.services.objects.worker}), the scan
that lets cheap requests skip them (L{netd.services.objects.processing}),
bounded error replies and the buffer budget, with hostile clients over
real loopback connections while another service on the same reactor must
keep answering.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.protocols import wire
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.buffers import BufferBudget
from netd.services.objects.pool import WorkerPool
from netd.services.objects.processing import (
    INLINE_MAX_BYTES,
    encodeReply,
    isCheap,
    processFrame,
)
from netd.services.objects.server import ObjectsFactory, addHandler, echoHandler
from netd.services.objects.unpickling import MAX_ERROR_MESSAGE, requestProtocol
from netd.services.objects.wire import FrameReceiver, encodeFrameHeader
from netd.services.objects.worker import decodeOutcome, encodeOutcome
from tests.common import runNetd, waitForOutput
from tests.services.objects.test_integration_objects import StdlibClientMixin

HERE = "tests.services.objects.test_pool"
PRIME = 2**61 - 1


# Handlers the workers import by name.


def spin(request: Any) -> Any:
    """
    Never return when asked to spin, else echo.
    """
    while request == "spin":
        pass
    return request


def hog(request: int) -> int:
    """
    Allocate C{request} bytes.
    """
    return len(b"x" * request)


def suicide(request: Any) -> Any:
    """
    Kill the worker when asked, else echo.
    """
    if request == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return request


def waitForFile(path: str) -> str:
    """
    Say so on standard error, then wait until C{path} exists: a request
    that stays in progress until the test lets it end.
    """
    print("waiting for", path, file=sys.stderr, flush=True)
    while not os.path.exists(path):
        pass
    return path


# Hostile pickles.


def _long1(value: int) -> bytes:
    data = pickle.encode_long(value)  # type: ignore[attr-defined]
    return b"\x8a" + bytes([len(data)]) + data


def collidingInts(count: int) -> bytes:
    """
    C{count} distinct ints with one hash, each as a C{LONG1} opcode.
    """
    return b"".join(_long1(1 + i * PRIME) for i in range(count))


def collidingSet(count: int) -> bytes:
    return b"\x80\x04\x8f(" + collidingInts(count) + b"\x90."


def collidingFrozenset(count: int) -> bytes:
    return b"\x80\x04(" + collidingInts(count) + b"\x91."


def collidingDict(count: int) -> bytes:
    items = b"".join(_long1(1 + i * PRIME) + b"N" for i in range(count))
    return b"\x80\x04}(" + items + b"u."


def collidingMemo(count: int) -> bytes:
    """
    Protocol 0: C{PUT} with memo indexes that all hash alike.
    """
    return b"N" + b"".join(b"p%d\n" % (1 + i * PRIME) for i in range(count)) + b"."


def hugeDecimal() -> bytes:
    data = pickle.encode_long(2**3_000_000)  # type: ignore[attr-defined]
    return (
        b"\x80\x04\x8c\x07decimal\x8c\x07Decimal\x93\x8b"
        + struct.pack("<I", len(data))
        + data
        + b"\x85R."
    )


def deepLists(depth: int) -> bytes:
    return b"\x80\x04" + b"]" * depth + b"a" * (depth - 1) + b"."


def badFloatLine(size: int) -> bytes:
    return b"F" + b"9x" * (size // 2) + b"\n."


# A client that sends raw frames.


class FrameClient(FrameReceiver):
    """
    Send raw request frames; each reply frame fires the next waiting
    Deferred, with the unpickled reply.
    """

    maxFrameLength = 1 << 30

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[defer.Deferred[Any]] = []
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.sizes: list[int] = []

    def request(self, frame: bytes) -> defer.Deferred[Any]:
        self.transport.write(encodeFrameHeader(len(frame)) + frame)
        return self.expect()

    def expect(self) -> defer.Deferred[Any]:
        waiting: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append(waiting)
        return waiting

    def frameReceived(self, frame: bytes) -> None:
        self.sizes.append(len(frame))
        self.waiting.pop(0).callback(pickle.loads(frame))

    def connectionLost(self, reason: Any = None) -> None:
        waiting, self.waiting = self.waiting, []
        for pending in waiting:
            pending.errback(ConnectionError("closed"))
        self.closed.callback(None)


class EchoProbe(protocol.Protocol):
    """
    Send a line to an echo service; fire once it comes back.
    """

    def __init__(self) -> None:
        self.back: defer.Deferred[bytes] = defer.Deferred()
        self.received = b""

    def connectionMade(self) -> None:
        self.transport.write(b"probe\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received.endswith(b"\n") and not self.back.called:
            self.back.callback(self.received)
            self.transport.loseConnection()


def connect(port: int, client: protocol.Protocol) -> defer.Deferred[Any]:
    return connectProtocol(TCP4ClientEndpoint(_reactor, "127.0.0.1", port), client)


class IsolationMixin:
    """
    An objects server with a worker pool, and an echo server beside it on
    the same reactor.
    """

    def serve(self: Any, handler: str = "echo", **poolArguments: Any) -> int:
        poolArguments.setdefault("timeout", 1.0)
        poolArguments.setdefault("size", 1)
        self.pool = WorkerPool(_reactor, handler, **poolArguments)
        self.addCleanup(self.pool.stop)
        named = {"echo": echoHandler, "add": addHandler}
        self.budget = BufferBudget(64 * 1024 * 1024)
        factory = ObjectsFactory(
            _reactor,
            named.get(handler, echoHandler),
            pool=self.pool,
            budget=self.budget,
        )
        if handler not in named:
            factory.inlineCheap = False
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        echo = _reactor.listenTCP(
            0, protocol.Factory.forProtocol(wire.Echo), interface="127.0.0.1"
        )
        self.addCleanup(echo.stopListening)
        self.echoPort = echo.getHost().port
        return int(port.getHost().port)

    @defer.inlineCallbacks
    def client(self: Any, port: int) -> defer.Generator:
        client = FrameClient()
        yield connect(port, client)
        self.addCleanup(client.transport.loseConnection)
        return client

    @defer.inlineCallbacks
    def attack(self: Any, port: int, frame: bytes) -> defer.Generator:
        """
        Send C{frame}, then probe the echo server: the probe must be
        answered first. Then the same connection must still answer a plain
        request. Returns the attack's reply.
        """
        client = yield self.client(port)
        order: list[str] = []
        attacked = client.request(frame)
        attacked.addBoth(lambda result: order.append("attack") or result)
        probe = EchoProbe()
        yield connect(self.echoPort, probe)
        echoed = yield probe.back
        order.append("echo")
        self.assertEqual(echoed, b"probe\n")
        reply = yield attacked
        self.assertEqual(order, ["echo", "attack"])
        again = yield client.request(pickle.dumps(("still", "here")))
        self.assertEqual(again, ("still", "here"))
        return reply


class AttackTests(IsolationMixin, TestCase):
    """
    Hostile requests cost a worker its time or memory, never the reactor:
    another service answers meanwhile, the attacker gets an error reply, and
    its connection still works.
    """

    @defer.inlineCallbacks
    def assertTimesOut(self, frame: bytes) -> defer.Generator:
        port = self.serve()
        reply = yield self.attack(port, frame)
        if requestProtocol(frame) > 2:
            self.assertIsInstance(reply, TimeoutError)
        else:
            # A reply Python 2 may read: its nearest exception it has.
            self.assertIs(type(reply), OSError)
        self.assertIn("was stopped", str(reply))
        self.assertEqual(self.pool.stats["timeouts"], 1)

    def test_collidingSet(self) -> defer.Deferred[None]:
        """
        A set of 50,000 ints that hash alike takes a worker's whole budget.
        """
        return self.assertTimesOut(collidingSet(50_000))

    def test_collidingFrozenset(self) -> defer.Deferred[None]:
        return self.assertTimesOut(collidingFrozenset(50_000))

    def test_collidingDictKeys(self) -> defer.Deferred[None]:
        return self.assertTimesOut(collidingDict(50_000))

    def test_collidingMemoIndexes(self) -> defer.Deferred[None]:
        return self.assertTimesOut(collidingMemo(50_000))

    def test_hugeDecimal(self) -> defer.Deferred[None]:
        """
        C{Decimal(2**3000000)}: a short pickle, a long conversion.
        """
        return self.assertTimesOut(hugeDecimal())

    @defer.inlineCallbacks
    def test_spinningHandler(self) -> defer.Generator:
        """
        A handler that never returns is stopped at the timeout.
        """
        port = self.serve(f"{HERE}:spin")
        reply = yield self.attack(port, pickle.dumps("spin"))
        self.assertIsInstance(reply, TimeoutError)
        self.assertIn("1 s", str(reply))
        self.assertEqual(self.pool.stats["spawned"], 2)

    @defer.inlineCallbacks
    def test_memoryHog(self) -> defer.Generator:
        """
        A request that allocates beyond the worker's address space gets a
        C{MemoryError}, and its worker is replaced.
        """
        port = self.serve(f"{HERE}:hog", memory=256 * 1024 * 1024, timeout=30.0)
        client = yield self.client(port)
        reply = yield client.request(pickle.dumps(1 << 30))
        self.assertIsInstance(reply, MemoryError)
        self.assertEqual(self.pool.stats["exhausted"], 1)
        small = yield client.request(pickle.dumps(1000))
        self.assertEqual(small, 1000)
        self.assertEqual(self.pool.stats["spawned"], 2)

    @defer.inlineCallbacks
    def test_workerKilled(self) -> defer.Generator:
        """
        A worker killed in the middle of a request: the request gets a
        C{RuntimeError}, the next one a fresh worker.
        """
        port = self.serve(f"{HERE}:suicide", timeout=30.0)
        client = yield self.client(port)
        reply = yield client.request(pickle.dumps("die"))
        self.assertIsInstance(reply, RuntimeError)
        self.assertIn("SIGKILL", str(reply))
        again = yield client.request(pickle.dumps("alive"))
        self.assertEqual(again, "alive")
        self.assertEqual(self.pool.stats["crashes"], 1)

    @defer.inlineCallbacks
    def test_deepNesting(self) -> defer.Generator:
        """
        Lists nested 100,000 deep: a C{RecursionError} reply, from a worker.
        """
        port = self.serve()
        client = yield self.client(port)
        reply = yield client.request(deepLists(100_000))
        self.assertIsInstance(reply, RecursionError)
        again = yield client.request(pickle.dumps([1]))
        self.assertEqual(again, [1])

    @defer.inlineCallbacks
    def test_replyAmplification(self) -> defer.Generator:
        """
        A 4 MiB bad C{FLOAT} line gets a C{ValueError} whose message is cut
        to L{MAX_ERROR_MESSAGE} characters, not a reply of 36 MiB.
        """
        port = self.serve()
        client = yield self.client(port)
        reply = yield client.request(badFloatLine(4 * 1024 * 1024))
        self.assertIsInstance(reply, ValueError)
        self.assertLess(client.sizes[-1], MAX_ERROR_MESSAGE + 200)
        self.assertIn("characters in all", str(reply))

    @defer.inlineCallbacks
    def test_fairQueue(self) -> defer.Generator:
        """
        One connection's queue of slow requests does not delay another
        connection's request behind all of them: connections are served in
        turn.
        """
        port = self.serve(f"{HERE}:suicide", timeout=30.0)
        greedy = yield self.client(port)
        other = yield self.client(port)
        order: list[str] = []
        big = pickle.dumps(list(range(200_000)))
        greedyReplies = [greedy.request(big) for _ in range(4)]
        for reply in greedyReplies:
            reply.addCallback(lambda _: order.append("greedy"))
        otherReply = other.request(pickle.dumps(["other"] * 2000))
        otherReply.addCallback(lambda _: order.append("other"))
        yield defer.gatherResults([*greedyReplies, otherReply])
        self.assertLess(order.index("other"), 3)

    @defer.inlineCallbacks
    def test_gracefulStop(self) -> defer.Generator:
        """
        Stopping the pool lets the requests queued or in progress finish,
        then the workers end.
        """
        self.serve(f"{HERE}:suicide", timeout=30.0)
        yield self.pool.submit(pickle.dumps("warm up"))
        reply = self.pool.submit(pickle.dumps(list(range(100_000))))
        reply.addCallback(lambda outcome: pickle.loads(outcome[0]))
        stopped = self.pool.stop()
        self.assertFalse(stopped.called)
        self.assertEqual((yield reply), list(range(100_000)))
        yield stopped
        self.assertEqual(self.pool._workers, [])
        late = self.pool.submit(pickle.dumps(1))
        failure = yield self.assertFailure(late, RuntimeError)
        self.assertIn("stopped", str(failure))


class BudgetTests(IsolationMixin, TestCase):
    """
    Large requests and unread replies count against the buffer budget.
    """

    @defer.inlineCallbacks
    def test_partialFramesHeldOpen(self) -> defer.Generator:
        """
        Connections holding partial large frames use up the budget; a new
        large frame is then refused with a C{MemoryError}, its bytes
        skipped, and that connection stays usable; once the holder finishes,
        large frames are accepted again.
        """
        port = self.serve()
        self.budget.limit = 1024 * 1024
        holder = yield self.client(port)
        body = pickle.dumps(b"h" * 700_000)
        holder.transport.write(encodeFrameHeader(len(body)) + body[:1000])
        held = holder.expect()
        other = yield self.client(port)
        refused = yield other.request(pickle.dumps(b"o" * 700_000))
        self.assertIsInstance(refused, MemoryError)
        small = yield other.request(pickle.dumps("small"))
        self.assertEqual(small, "small")
        holder.transport.write(body[1000:])
        self.assertEqual((yield held), b"h" * 700_000)
        accepted = yield other.request(pickle.dumps(b"o" * 700_000))
        self.assertEqual(accepted, b"o" * 700_000)
        self.assertEqual(self.budget.refusals, 1)
        self.assertEqual(self.budget.used, 0)

    @defer.inlineCallbacks
    def test_nonReadingClient(self) -> defer.Generator:
        """
        A client that sends requests and reads no reply: netd stops reading
        it, holding at most the budget; once the client reads, every reply
        comes, in order (a C{MemoryError} for those refused), and the budget
        is released when it leaves.
        """
        port = self.serve()
        self.budget.limit = 2 * 1024 * 1024
        peaks = []
        charge = self.budget.charge

        def recordingCharge(owner: object, amount: int) -> None:
            charge(owner, amount)
            peaks.append(self.budget.used)

        self.budget.charge = recordingCharge  # type: ignore[method-assign]
        client = yield self.client(port)
        client.transport.pauseProducing()
        request = pickle.dumps(b"r" * 300_000)
        replies = [client.request(request) for _ in range(30)]
        # The other service answers while netd holds what it can.
        probe = EchoProbe()
        yield connect(self.echoPort, probe)
        yield probe.back
        client.transport.resumeProducing()
        results = yield defer.gatherResults(replies)
        kinds = {type(result).__name__ for result in results}
        self.assertLessEqual(kinds, {"bytes", "MemoryError"})
        self.assertIn("bytes", kinds)
        self.assertLessEqual(max(peaks), self.budget.limit + len(request) + 64)
        client.transport.loseConnection()
        yield client.closed
        yield self.pool.stop()
        self.assertEqual(self.budget.used, 0)


class NetdIsolationTests(StdlibClientMixin, TestCase):
    """
    The whole daemon: an objects attack against C{twistd -n netd} leaves
    echo answering.
    """

    @defer.inlineCallbacks
    def test_attackDuringEcho(self) -> defer.Generator:
        netd = yield runNetd(
            self,
            "--services=echo,objects",
            "--echo=tcp:0:interface=127.0.0.1",
            "--objects=tcp:0:interface=127.0.0.1",
            "--objects-timeout=1",
            "--objects-workers=1",
            listeners=2,
        )
        client = FrameClient()
        yield connect(netd.port("objects"), client)
        order: list[str] = []
        attacked = client.request(collidingSet(50_000))
        attacked.addBoth(lambda result: order.append("attack") or result)
        probe = EchoProbe()
        yield connect(netd.port("echo"), probe)
        yield probe.back
        order.append("echo")
        reply = yield attacked
        self.assertEqual(order, ["echo", "attack"])
        self.assertIsInstance(reply, TimeoutError)
        again = yield client.request(pickle.dumps({"plain": [1, 2]}))
        self.assertEqual(again, {"plain": [1, 2]})
        client.transport.loseConnection()
        yield client.closed
        self.assertIn(b"ran over 1.0s; killing worker", netd.output)

    @defer.inlineCallbacks
    def test_stdlibClients(self) -> defer.Generator:
        """
        The standard library's clients of Python 3.11 and 3.13 get a
        C{TimeoutError} for a colliding set, a short C{ValueError} for a bad
        4 MiB C{FLOAT} line, and their connection keeps working.
        """
        netd = yield runNetd(
            self,
            "--services=objects",
            "--objects=tcp:0:interface=127.0.0.1",
            "--objects-timeout=1",
            "--objects-workers=2",
        )
        port = netd.port("objects")
        for version in ("3.11", "3.13"):
            output = yield self.stdlibClient(
                version,
                port,
                [
                    f"raw {collidingSet(50_000).hex()}",
                    "obj {'still': 'here'}",
                    f"raw {badFloatLine(4 * 1024 * 1024).hex()}",
                    "pipe 20",
                ],
            )
            self.assertEqual(
                output[0], "TimeoutError: the request took over 1 s and was stopped"
            )
            self.assertEqual(output[1], "{'still': 'here'}")
            self.assertTrue(output[2].startswith("ValueError: not a valid pickle"))
            self.assertLess(len(output[2]), MAX_ERROR_MESSAGE + 100)
            self.assertEqual(output[3:], ["in order"])


class NetdStopTests(TestCase):
    """
    netd's graceful stop waits for requests in progress in the workers.
    """

    @defer.inlineCallbacks
    def test_requestFinishesOnStop(self) -> defer.Generator:
        netd = yield runNetd(
            self,
            "--services=objects",
            "--objects=tcp:0:interface=127.0.0.1",
            f"--objects-handler={HERE}:waitForFile",
            "--objects-workers=1",
            "--objects-timeout=60",
        )
        client = FrameClient()
        yield connect(netd.port("objects"), client)
        path = os.path.abspath(self.mktemp())
        reply = client.request(pickle.dumps(path))
        yield waitForOutput(netd, "waiting for")
        netd.signal("TERM")
        yield waitForOutput(netd, "stopping: 1 connections open")
        self.assertFalse(reply.called)
        with open(path, "w"):
            pass
        self.assertEqual((yield reply), path)
        yield client.closed
        yield netd.ended
        self.assertIn(b"Server Shut Down.", netd.output)
        self.assertNotIn(b"aborting", netd.output)


class CheapTests(SynchronousTestCase):
    """
    L{isCheap} lets through only small plain pickles.
    """

    def test_plain(self) -> None:
        """
        Small pickles of numbers, strings, bytes, tuples, lists, dicts, sets
        and frozensets, in protocols 2 to 5, are cheap.
        """
        value = ("hello", 42, -7, 2**70, [1.5, 2.5], {"a": b"b"}, {1, 2}, None)
        for protocolNumber in range(4, pickle.HIGHEST_PROTOCOL + 1):
            self.assertTrue(isCheap(pickle.dumps(value, protocolNumber)))
        older = ("hello", 42, -7, 2**70, [1.5, 2.5], {"a": "b"}, None, True)
        for protocolNumber in (2, 3):
            self.assertTrue(isCheap(pickle.dumps(older, protocolNumber)))
        self.assertTrue(isCheap(pickle.dumps(frozenset({1}), 4)))

    def test_refused(self) -> None:
        """
        Too large, globals, shared objects (C{GET}), text opcodes, large
        memo indexes, truncated or trailing bytes: not cheap.
        """
        shared = ["x"] * 3
        for frame in [
            pickle.dumps("x" * INLINE_MAX_BYTES, 4),
            pickle.dumps(range(3), 4),
            pickle.dumps([shared, shared], 4),
            pickle.dumps([1, 2], 0),
            b"N\x88\x00\x00\x01\x00.",
            b"\x80\x04N\x94r\x00\x00\x01\x00.",
            pickle.dumps([1], 4)[:-1],
            pickle.dumps([1], 4) + b"N",
            b"\x80\x04X\xff\xff\xff\xff.",
            b"",
        ]:
            self.assertFalse(isCheap(frame), frame)

    def test_worstCase(self) -> None:
        """
        The costliest cheap pickle of colliding keys still decodes, and
        the reply says so in order.
        """
        count = INLINE_MAX_BYTES // 11
        frame = collidingSet(count)
        self.assertTrue(isCheap(frame))
        outcome = processFrame(frame, echoHandler, {}, loads=pickle.loads)
        self.assertEqual(len(pickle.loads(outcome.reply)), count)


class OutcomeTests(SynchronousTestCase):
    """
    The workers' reply format, and bounded replies.
    """

    def test_roundTrip(self) -> None:
        for reply, refusal, exiting, failed in [
            (b"reply", None, False, False),
            (b"", "global os.system is not allowed", True, True),
            (b"error", None, False, True),
        ]:
            self.assertEqual(
                decodeOutcome(encodeOutcome(reply, refusal, exiting, failed)),
                (reply, refusal, exiting, failed),
            )
        self.assertRaises(ValueError, decodeOutcome, b"")
        self.assertRaises(ValueError, decodeOutcome, b"\x01ab")

    def test_refusalReported(self) -> None:
        """
        A refused global is reported with its reason.
        """
        outcome = processFrame(pickle.dumps(print, 4), echoHandler, {})
        self.assertIn("print", outcome.refusal or "")
        self.assertTrue(outcome.failed)
        self.assertIsInstance(pickle.loads(outcome.reply), PermissionError)

    def test_replyCap(self) -> None:
        """
        A reply over the cap becomes a C{ValueError} saying so.
        """
        reply = pickle.loads(encodeReply(b"x" * 5000, 4, maxBytes=4096))
        self.assertIsInstance(reply, ValueError)
        self.assertIn("over the limit of 4096", str(reply))

    def test_errorMessageCut(self) -> None:
        reply = pickle.loads(encodeReply(ValueError("y" * 100_000), 2))
        self.assertTrue(str(reply).startswith("y" * MAX_ERROR_MESSAGE + "... "))
        self.assertIn("(100000 characters in all)", str(reply))


# The pool's supervision, with a fake process reactor and a fake clock.


class FakeProcess:
    """
    What L{WorkerPool} sees of a worker process.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sent = b""
        self.signals: list[str] = []
        self.closed: list[int] = []

    def closeStdin(self) -> None:
        self.closed.append(0)

    def closeChildFD(self, fd: int) -> None:
        self.closed.append(fd)

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.sent += data

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class FakeProcessReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.workers: list[Any] = []

    def callWhenRunning(self, f: Any) -> None:
        f()

    def spawnProcess(self, proto: Any, executable: str, args: Any, **kw: Any) -> None:
        proto.makeConnection(FakeProcess(1000 + len(self.workers)))
        self.workers.append(proto)


def reply(worker: Any, body: bytes) -> None:
    """
    The worker sends one frame.
    """
    worker.childDataReceived(4, encodeFrameHeader(len(body)) + body)


def end(worker: Any, signalName: str | None = None) -> None:
    from twisted.internet.error import ProcessDone, ProcessTerminated
    from twisted.python.failure import Failure

    if signalName is None:
        worker.processEnded(Failure(ProcessDone(0)))
    else:
        number = getattr(signal, signalName)
        worker.processEnded(Failure(ProcessTerminated(None, number)))


class SupervisionTests(SynchronousTestCase):
    """
    L{WorkerPool}'s watchdog, replacement and turns, on a fake clock.
    """

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.pool = WorkerPool(self.reactor, "echo", size=1, timeout=5.0)
        self.pool.start()
        [self.worker] = self.reactor.workers
        reply(self.worker, b"")

    def test_watchdog(self) -> None:
        """
        A request over its time gets a C{TimeoutError}, its worker a
        C{SIGKILL} and a successor once it ended.
        """
        result = self.pool.submit(b"request")
        self.assertTrue(self.worker.transport.sent.endswith(b"request"))
        self.reactor.advance(4.9)
        self.assertNoResult(result)
        self.reactor.advance(0.2)
        self.failureResultOf(result, TimeoutError)
        self.assertEqual(self.worker.transport.signals, ["KILL"])
        end(self.worker, "SIGKILL")
        self.assertEqual(len(self.reactor.workers), 2)
        self.assertEqual(self.pool.stats["timeouts"], 1)

    def test_answer(self) -> None:
        """
        A reply in time is the request's result; the watchdog is cancelled.
        """
        result = self.pool.submit(b"request")
        reply(self.worker, encodeOutcome(b"answer", "refused", False))
        self.assertEqual(self.successResultOf(result), (b"answer", "refused", False))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_died(self) -> None:
        """
        A worker that dies with a request: C{RuntimeError} naming how, and a
        successor; one killed by C{SIGXCPU} (its CPU limit): C{TimeoutError}.
        """
        result = self.pool.submit(b"request")
        end(self.worker, "SIGSEGV")
        self.assertIn("SIGSEGV", str(self.failureResultOf(result, RuntimeError).value))
        successor = self.reactor.workers[1]
        reply(successor, b"")
        result = self.pool.submit(b"request")
        end(successor, "SIGXCPU")
        self.failureResultOf(result, TimeoutError)
        self.assertEqual(self.pool.stats["crashes"], 2)

    def test_failingStarts(self) -> None:
        """
        Workers that die before they are ready are restarted a second
        apart; after three, queued requests get a C{RuntimeError}.
        """
        self.pool.stop()
        end(self.worker)
        pool = WorkerPool(self.reactor, "echo", size=1)
        pool.start()
        result = pool.submit(b"request")
        for _attempt in range(3):
            end(self.reactor.workers[-1], "SIGABRT")
            self.reactor.advance(1.0)
        self.failureResultOf(result, RuntimeError)
        self.assertEqual(len(self.reactor.workers), 2 + 3)
        pool.stop()
        end(self.reactor.workers[-1])

    def test_cannotSpawn(self) -> None:
        """
        When workers cannot even be spawned (the interpreter cannot be
        executed), netd retries a second apart and queued requests get a
        C{RuntimeError} after three tries.
        """
        self.pool.stop()
        end(self.worker)

        def refuse(*args: Any, **kw: Any) -> None:
            raise PermissionError(13, "Permission denied")

        self.reactor.spawnProcess = refuse  # type: ignore[method-assign]
        pool = WorkerPool(self.reactor, "echo", size=1)
        pool.start()
        result = pool.submit(b"request")
        self.assertNoResult(result)
        self.reactor.advance(1.0)
        self.reactor.advance(1.0)
        self.failureResultOf(result, RuntimeError)
        pool.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_turns(self) -> None:
        """
        Requests of different owners are served in turn: one that arrives
        behind another owner's backlog waits for one of them, not all.
        """
        order: list[bytes] = []
        for frame in [b"a1", b"a2", b"a3", b"a4", b"b1"]:
            self.pool.submit(frame, frame[:1]).addCallback(
                lambda outcome: order.append(outcome[0])
            )
        for _ in range(5):
            sent = self.worker.transport.sent
            self.worker.transport.sent = b""
            reply(self.worker, b"\x00" + sent[-2:])
        self.assertEqual(order, [b"a1", b"a2", b"b1", b"a3", b"a4"])

    def test_cancelQueued(self) -> None:
        """
        A cancelled request that waits is never sent to a worker.
        """
        first = self.pool.submit(b"first")
        second = self.pool.submit(b"second")
        second.cancel()
        self.failureResultOf(second, defer.CancelledError)
        reply(self.worker, b"\x00done")
        self.successResultOf(first)
        self.assertNotIn(b"second", self.worker.transport.sent)
