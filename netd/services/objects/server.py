# -*- test-case-name: tests.services.objects.test_objects -*-
"""
The objects server: pickled Python objects over
C{multiprocessing.connection}'s wire (L{netd.services.objects.wire}),
unpickled by L{netd.services.objects.unpickling}.

A request frame holds one pickle; its reply frame holds one pickle, in a
protocol no higher than the request's.

With a L{WorkerPool}, requests run in worker processes, but for those
L{isCheap} proves small, which are handled at once in the reactor's thread.
Bytes held for requests and replies count against netd's
L{BufferBudget}: a large request that would go over it is refused.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.buffers import DAEMON, BufferBudget
from netd.metrics import NO_OBJECTS_METRICS, ObjectsMetrics
from netd.plugin import IGracefulProtocol
from netd.services.objects.processing import (
    DEFAULT_MAX_REPLY_BYTES,
    encodeReply,
    isCheap,
    processFrame,
)
from netd.services.objects.unpickling import (
    PickleRefusedError,
    loadRestricted,
    requestProtocol,
)
from netd.services.objects.wire import (
    CHALLENGE,
    DEFAULT_MAX_BYTES,
    FAILURE,
    WELCOME,
    AuthenticationError,
    FrameReceiver,
    createResponse,
    encodeFrameHeader,
    newChallenge,
    verifyResponse,
)
from netd.throttledlog import ThrottledLog

DEFAULT_MAX_PENDING = 16
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

LARGE_FRAME = 64 * 1024
"""Requests this large or larger are admitted only if netd's buffer budget
has room for them whole."""

# Handlers.


def echoHandler(request: Any) -> Any:
    """
    Reply with the request itself.
    """
    return request


def addHandler(request: Any) -> Any:
    """
    The book's server: reply C{x + y} for a request C{(x, y)}.
    """
    if type(request) not in (tuple, list) or len(request) != 2:
        raise TypeError("the add handler expects a pair (x, y)")
    x, y = request
    return x + y


HANDLERS: dict[str, Callable[[Any], Any]] = {"echo": echoHandler, "add": addHandler}


# The server.


class _Reply:
    """
    One request's place in the line of replies.

    @ivar held: the bytes charged to the buffer budget for it.
    """

    __slots__ = ("frame", "held")

    def __init__(self, held: int) -> None:
        self.frame: bytes | None = None
        self.held = held


@implementer(IPushProducer, IGracefulProtocol, IHalfCloseableProtocol)
class ObjectsServerProtocol(FrameReceiver):
    """
    Serve one connection: the handshake when there is an authkey, then one
    reply per request frame, in request order.

    At most C{factory.maxPending} requests are in progress at once; beyond
    that, and while replies wait unsent in the transport, the connection is
    not read from, and replies that become ready wait here, counted against
    the buffer budget, until the client reads.

    @ivar factory: the L{ObjectsFactory}.
    """

    log = Logger()
    factory: ObjectsFactory
    peer = "?"
    _handshakeDeadline: Any = None
    _reserved = 0

    def __init__(self) -> None:
        super().__init__()
        self._state = "ready"
        self._challenge = b""
        self._replies: deque[_Reply] = deque()
        self._running: list[defer.Deferred[Any]] = []
        self._writesPaused = False
        self._readPaused = False
        self._stopping = False
        self.requests = 0

    def connectionMade(self) -> None:
        self.peer = _peer(self.transport)
        self.transport.registerProducer(self, True)
        setTcpNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setTcpNoDelay is not None:
            setTcpNoDelay(True)
        self._budget = self.factory.budget
        if self.factory.authkey is None:
            self._ready()
        else:
            self._state = "response"
            self._challenge = newChallenge()
            if self.factory.handshakeTimeout > 0:
                self._handshakeDeadline = self.factory.reactor.callLater(
                    self.factory.handshakeTimeout, self._handshakeTooLate
                )
            self.sendFrame(CHALLENGE + self._challenge)

    def _handshakeTooLate(self) -> None:
        self._handshakeDeadline = None
        self._fail(f"not done within {self.factory.handshakeTimeout:g}s")
        self.transport.abortConnection()

    def _cancelHandshakeDeadline(self) -> None:
        if self._handshakeDeadline is not None:
            self._handshakeDeadline.cancel()
            self._handshakeDeadline = None

    def _ready(self) -> None:
        self._cancelHandshakeDeadline()
        self._state = "ready"
        self.maxFrameLength = self.factory.maxBytes

    def frameReceived(self, frame: bytes) -> None:
        if self._state == "ready":
            self._request(frame)
        else:
            self._handshake(frame)

    def _handshake(self, frame: bytes) -> None:
        authkey = self.factory.authkey
        assert authkey is not None
        if self._state == "response":
            try:
                verifyResponse(authkey, self._challenge, frame)
            except AuthenticationError as error:
                self._fail(str(error), FAILURE)
                return
            self.sendFrame(WELCOME)
            self._state = "challenge"
        elif self._state == "challenge":
            message = frame[len(CHALLENGE) :]
            if not frame.startswith(CHALLENGE) or len(message) < 20:
                self._fail("expected the client's challenge")
                return
            try:
                self.sendFrame(createResponse(authkey, message))
            except AuthenticationError as error:
                self._fail(str(error))
                return
            self._state = "welcome"
        elif frame == WELCOME:
            self._ready()
        else:
            self._fail("the client rejected the server's answer")

    def _fail(self, reason: str, reply: bytes | None = None) -> None:
        self.factory.metrics.authenticationFailed()
        self.log.info(
            "objects: {peer} failed the handshake: {reason}",
            peer=self.peer,
            reason=reason,
        )
        if reply is not None:
            self.sendFrame(reply)
        self._closing = True
        self.transport.loseConnection()

    def badFrame(self, reason: str) -> None:
        self.log.info(
            "objects: closing {peer}: {reason}",
            peer=self.peer,
            reason=reason,
        )
        super().badFrame(reason)

    def admitFrame(self, length: int) -> bool:
        """
        Buffer a large request only if netd's buffer budget has room for it;
        else skip its bytes and reply a C{MemoryError}.
        """
        if length < LARGE_FRAME or self._state != "ready":
            return True
        if self._budget.reserve(self, length, f"a request from {self.peer}"):
            self._reserved = length
            return True
        self.requests += 1
        reply = _Reply(0)
        reply.frame = self.factory.encode(
            MemoryError(
                f"netd is holding too many requests: a request of {length} "
                "bytes was refused, try again later"
            ),
            2,
        )
        self._replies.append(reply)
        self._flush()
        return False

    def _request(self, frame: bytes) -> None:
        self.requests += 1
        held, self._reserved = self._reserved, 0
        result = self.factory.metrics.timed(
            self.factory.process, frame, self.peer, self
        )
        if isinstance(result, bytes) and not self._replies:
            if held:
                self._budget.release(self, held)
            self.sendFrame(result)
            self._closeIfStopping()
            return
        if not held:
            held = len(frame)
            self._budget.charge(self, held)
        reply = _Reply(held)
        self._replies.append(reply)
        if isinstance(result, bytes):
            self._done(reply, result)
        else:
            self._running.append(result)
            result.addCallback(self._replied, reply, result)
        self._updateReading()

    def _replied(self, frame: bytes, reply: _Reply, running: Any) -> None:
        if self._closing:
            return
        self._running.remove(running)
        self._done(reply, frame)
        self._flush()
        self._updateReading()
        self._closeIfStopping()

    def _done(self, reply: _Reply, frame: bytes) -> None:
        """
        A reply is ready: until it is written, count it instead of its
        request.
        """
        budget = self._budget
        budget.release(self, reply.held)
        reply.held = len(frame)
        budget.charge(self, reply.held)
        reply.frame = frame

    def _flush(self) -> None:
        """
        Write the replies ready at the head of the line, unless the client
        is not reading what was written already.
        """
        replies = self._replies
        ready = []
        released = 0
        while replies and replies[0].frame is not None and not self._writesPaused:
            done = replies.popleft()
            frame = done.frame
            assert frame is not None
            released += done.held
            ready += [encodeFrameHeader(len(frame)), frame]
        if released:
            self._budget.release(self, released)
        if ready:
            self.transport.writeSequence(ready)

    def stopGracefully(self) -> None:
        """
        netd is stopping: close now if no request is in progress, or once
        the last reply in progress is sent.
        """
        self._stopping = True
        self._updateReading()
        self._closeIfStopping()

    def _closeIfStopping(self) -> None:
        if self._stopping and not self._replies and not self._closing:
            self._closing = True
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def _updateReading(self) -> None:
        if self._closing:
            return
        full = len(self._replies) >= self.factory.maxPending
        pause = full or self._writesPaused or self._stopping
        if pause != self._readPaused:
            self._readPaused = pause
            if pause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()
        if self._holding != pause:
            self.holdFrames(pause)

    def readConnectionLost(self) -> None:
        """
        The client half-closed (a FIN, or a TLS C{close_notify}): answer the
        requests already read, then close, as when netd stops.
        """
        self.stopGracefully()

    def writeConnectionLost(self) -> None:
        """
        The client cannot read any more: nothing left to do.
        """
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self._cancelHandshakeDeadline()
        self._closing = True
        running, self._running = self._running, []
        self._replies.clear()
        self._budget.releaseAll(self)
        for pending in running:
            pending.cancel()

    # IPushProducer: the transport's view of us, when its buffer fills.

    def pauseProducing(self) -> None:
        """
        Replies are piling up unsent: stop reading requests.
        """
        self._writesPaused = True
        self._updateReading()

    def resumeProducing(self) -> None:
        """
        Replies have drained: send those that waited, and read again unless
        too many requests are running.
        """
        self._writesPaused = False
        self._flush()
        self._updateReading()
        self._closeIfStopping()

    def stopProducing(self) -> None:
        """
        The connection is going away.
        """


def _peer(transport: Any) -> str:
    from netd.listeners import describeAddress

    try:
        return describeAddress(transport.getPeer())
    except Exception:
        return "?"


class ObjectsFactory(Factory):
    """
    Make L{ObjectsServerProtocol}s, and turn request pickles into reply
    pickles.

    @ivar authkey: the shared key, or L{None} to skip the handshake.
    @ivar handler: called with each request object; returns the reply or a
        Deferred of it (a Deferred only without a pool).
    @ivar maxBytes: the largest request frame; a longer one closes the
        connection.
    @ivar maxPending: requests one connection may have in progress at once.
    @ivar handshakeTimeout: seconds a client has to finish the handshake
        (with an authkey) before it is cut off; 0 for no deadline.
    @ivar metrics: what requests, errors and handshake failures are
        reported to.
    @ivar maxReplyBytes: the largest reply; a larger one is replaced by a
        C{ValueError}.
    @ivar pool: the L{WorkerPool} requests run in, or L{None} to run them
        all in the reactor's thread.
    @ivar inlineCheap: whether requests L{isCheap} proves small skip the
        pool (only for netd's own handlers, whose cost is known).
    @ivar budget: the L{BufferBudget} the connections' requests and replies
        count against.
    """

    protocol = ObjectsServerProtocol  # type: ignore[assignment]
    noisy = False
    log = Logger()
    handshakeTimeout = DEFAULT_HANDSHAKE_TIMEOUT

    def __init__(
        self,
        reactor: Any,
        handler: Callable[[Any], Any] = echoHandler,
        authkey: bytes | None = None,
        allowed: Mapping[tuple[str, str], Any] | None = None,
        maxBytes: int = DEFAULT_MAX_BYTES,
        maxPending: int = DEFAULT_MAX_PENDING,
        pool: Any = None,
        maxReplyBytes: int = DEFAULT_MAX_REPLY_BYTES,
        budget: BufferBudget | None = None,
        metrics: ObjectsMetrics = NO_OBJECTS_METRICS,
    ) -> None:
        """
        @param reactor: the reactor (for the throttled log).
        @param allowed: extra globals requests may use, C{(module, qualname)}
            to the object.
        @param pool: a L{netd.services.objects.pool.WorkerPool} (started and
            stopped with this factory), or L{None}.
        @param budget: netd's own L{netd.buffers.DAEMON} by default.
        """
        self.reactor = reactor
        self.handler = handler
        self.authkey = authkey
        self.allowed = dict(allowed or {})
        self.maxBytes = maxBytes
        self.maxPending = maxPending
        self.metrics = metrics
        self.maxReplyBytes = maxReplyBytes
        self.pool = pool
        self.inlineCheap = handler in HANDLERS.values()
        self.budget = budget if budget is not None else DAEMON
        self._refusalLog = ThrottledLog(reactor, interval=1.0, lines=10)

    def startFactory(self) -> None:
        if self.pool is not None:
            self.pool.start()

    def stopFactory(self) -> None:
        """
        The last listener stopped: the pool stops once the requests in
        progress are answered.
        """
        if self.pool is not None:
            self._poolStopped = self.pool.stop()

    def whenStopped(self) -> defer.Deferred[None]:
        """
        Fire once the worker pool has ended (at once without one, or while
        it runs no more).
        """
        stopped = getattr(self, "_poolStopped", None)
        if stopped is None or stopped.called:
            return defer.succeed(None)
        waiting: defer.Deferred[None] = defer.Deferred()

        def passOn(result: object) -> object:
            waiting.callback(None)
            return result

        stopped.addBoth(passOn)
        return waiting

    def process(
        self, frame: bytes, peer: str, owner: object = None
    ) -> bytes | defer.Deferred[bytes]:
        """
        Turn one request frame into its reply frame: at once when it is
        handled here, else a Deferred; never fails.

        @param owner: the connection, whose requests the pool serves in
            turn with other connections'.
        """
        pool = self.pool
        if pool is not None:
            if self.inlineCheap and isCheap(frame):
                outcome = processFrame(
                    frame, self.handler, {}, self.maxReplyBytes, pickle.loads
                )
                if outcome.failed:
                    self.metrics.failed()
                return outcome.reply
            running: defer.Deferred[Any] = pool.submit(frame, owner)
            return running.addCallback(self._pooled, peer).addErrback(
                self._encodeError, requestProtocol(frame)
            )
        protocol = requestProtocol(frame)
        try:
            result = self.handler(self.decode(frame, peer))
        except Exception as error:
            return self.encode(error, protocol)
        if isinstance(result, defer.Deferred):
            return result.addCallback(self.encode, protocol).addErrback(
                self._encodeError, protocol
            )
        return self.encode(result, protocol)

    def _pooled(self, outcome: tuple[bytes, str | None, bool], peer: str) -> bytes:
        reply, refusal, failed = outcome
        if refusal is not None:
            self._logRefusal(peer, refusal)
        if failed:
            self.metrics.failed()
        return reply

    def _logRefusal(self, peer: str, reason: str) -> None:
        self._refusalLog.emit(
            self.log.warn,
            "objects: refused a pickle from {peer}: {reason}",
            peer=peer,
            reason=reason,
        )

    def decode(self, frame: bytes, peer: str) -> Any:
        """
        Unpickle a request with L{RestrictedUnpickler}, logging what it
        refuses.
        """
        try:
            return loadRestricted(frame, self.allowed)
        except PickleRefusedError as error:
            self._logRefusal(peer, str(error))
            raise
        except (RecursionError, MemoryError):
            raise
        except Exception as error:
            raise ValueError(f"not a valid pickle: {error}") from error

    def _encodeError(self, failure: Failure, protocol: int) -> bytes:
        return self.encode(failure.value, protocol)

    def encode(self, result: Any, protocol: int) -> bytes:
        """
        Pickle a reply in C{protocol} (L{encodeReply}): an exception becomes
        its nearest builtin exception, with a bounded message.
        """
        if isinstance(result, BaseException):
            self.metrics.failed()
        return encodeReply(
            result, protocol, self.maxReplyBytes, unpicklable=self.metrics.failed
        )
