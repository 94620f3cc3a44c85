# -*- test-case-name: tests.services.objects.test_objects -*-
"""
The objects server: pickled Python objects over
C{multiprocessing.connection}'s wire (L{netd.services.objects.wire}),
unpickled by L{netd.services.objects.unpickling}.

A request frame holds one pickle; its reply frame holds one pickle, in a
protocol no higher than the request's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.metrics import NO_OBJECTS_METRICS, ObjectsMetrics
from netd.plugin import IGracefulProtocol
from netd.services.objects.replies import encodeReply
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
    """

    __slots__ = ("frame",)

    def __init__(self) -> None:
        self.frame: bytes | None = None


@implementer(IPushProducer, IGracefulProtocol)
class ObjectsServerProtocol(FrameReceiver):
    """
    Serve one connection: the handshake when there is an authkey, then one
    reply per request frame, in request order.

    At most C{factory.maxPending} requests are in progress at once; beyond
    that, and while replies wait unsent in the transport, the connection is
    not read from.

    @ivar factory: the L{ObjectsFactory}.
    """

    log = Logger()
    factory: ObjectsFactory
    peer = "?"
    _handshakeDeadline: Any = None

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

    def _request(self, frame: bytes) -> None:
        self.requests += 1
        result = self.factory.metrics.timed(self.factory.process, frame, self.peer)
        if isinstance(result, bytes) and not self._replies:
            self.sendFrame(result)
            self._closeIfStopping()
            return
        reply = _Reply()
        self._replies.append(reply)
        if isinstance(result, bytes):
            reply.frame = result
        else:
            self._running.append(result)
            result.addCallback(self._replied, reply, result)
        self._updateReading()

    def _replied(self, frame: bytes, reply: _Reply, running: Any) -> None:
        if self._closing:
            return
        self._running.remove(running)
        reply.frame = frame
        replies = self._replies
        ready = []
        while replies and replies[0].frame is not None:
            done = replies.popleft().frame
            assert done is not None
            ready += [encodeFrameHeader(len(done)), done]
        if ready:
            self.transport.writeSequence(ready)
        self._updateReading()
        self._closeIfStopping()

    def stopGracefully(self) -> None:
        """
        netd is stopping: close now if no request is in progress, or once
        the last reply in progress is sent.
        """
        self._stopping = True
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
        pause = full or self._writesPaused
        if pause != self._readPaused:
            self._readPaused = pause
            if pause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()
        if self._holding != full:
            self.holdFrames(full)

    def connectionLost(self, reason: Any = None) -> None:
        self._cancelHandshakeDeadline()
        self._closing = True
        running, self._running = self._running, []
        self._replies.clear()
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
        Replies have drained: read again unless too many requests are running.
        """
        self._writesPaused = False
        self._updateReading()

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
        Deferred of it.
    @ivar maxBytes: the largest request frame; a longer one closes the
        connection.
    @ivar maxPending: requests one connection may have in progress at once.
    @ivar handshakeTimeout: seconds a client has to finish the handshake
        (with an authkey) before it is cut off; 0 for no deadline.
    @ivar metrics: what requests, errors and handshake failures are
        reported to.
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
        threadPool: Any = None,
        metrics: ObjectsMetrics = NO_OBJECTS_METRICS,
    ) -> None:
        """
        @param reactor: the reactor (for the thread pool's results).
        @param allowed: extra globals requests may use, C{(module, qualname)}
            to the object.
        @param threadPool: when given, decoding, the handler and encoding
            run there (the handler must then return a value, not a Deferred).
        """
        self.reactor = reactor
        self.handler = handler
        self.authkey = authkey
        self.allowed = dict(allowed or {})
        self.maxBytes = maxBytes
        self.maxPending = maxPending
        self.threadPool = threadPool
        self.metrics = metrics
        self._refusalLog = ThrottledLog(reactor, interval=1.0, lines=10)

    def process(self, frame: bytes, peer: str) -> bytes | defer.Deferred[bytes]:
        """
        Turn one request frame into its reply frame: at once when the
        handler returns a value, else a Deferred; never fails.
        """
        protocol = requestProtocol(frame)
        if self.threadPool is not None:
            from twisted.internet.threads import deferToThreadPool

            running: defer.Deferred[Any] = deferToThreadPool(
                self.reactor, self.threadPool, self._processInThread, frame, peer
            )
            return running.addErrback(self._encodeError, protocol)
        try:
            result = self.handler(self.decode(frame, peer))
        except Exception as error:
            return self.encode(error, protocol)
        if isinstance(result, defer.Deferred):
            return result.addCallback(self.encode, protocol).addErrback(
                self._encodeError, protocol
            )
        return self.encode(result, protocol)

    def _processInThread(self, frame: bytes, peer: str) -> bytes:
        protocol = requestProtocol(frame)
        try:
            result = self.handler(self.decode(frame, peer))
        except Exception as error:
            result = error
        if isinstance(result, defer.Deferred):
            result = TypeError("a handler run in threads must not return a Deferred")
        return self.encode(result, protocol)

    def decode(self, frame: bytes, peer: str) -> Any:
        """
        Unpickle a request with L{RestrictedUnpickler}, logging what it
        refuses.
        """
        try:
            return loadRestricted(frame, self.allowed)
        except PickleRefusedError as error:
            self._refusalLog.emit(
                self.log.warn,
                "objects: refused a pickle from {peer}: {reason}",
                peer=peer,
                reason=str(error),
            )
            raise
        except (RecursionError, MemoryError):
            raise
        except Exception as error:
            raise ValueError(f"not a valid pickle: {error}") from error

    def _encodeError(self, failure: Failure, protocol: int) -> bytes:
        return self.encode(failure.value, protocol)

    def encode(self, result: Any, protocol: int) -> bytes:
        """
        Pickle a reply in C{protocol} (see L{encodeReply}).
        """
        if isinstance(result, BaseException):
            self.metrics.failed()
        return encodeReply(result, protocol, unpicklable=self.metrics.failed)
