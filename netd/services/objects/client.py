# -*- test-case-name: tests.services.objects.test_objects -*-
"""
A Twisted client for the objects service (or any
C{multiprocessing.connection} listener): the same handshake as the standard
library's C{Client}, then Deferred-based calls.

    client = yield connectObjects(TCP4ClientEndpoint(reactor, host, 50016),
                                  authkey=b"secret")
    reply = yield client.call((1, 2))

Any L{IStreamClientEndpoint} works, so TLS is a matter of passing a TLS
endpoint (C{wrapClientTLS}). Replies are unpickled with the same
L{RestrictedUnpickler} as requests on the server, plus the builtin
exceptions the server replies with: a client does not trust its server to
run code either.

C{netd-client objects [options] LITERAL} (L{ObjectsCommand}) sends one
Python literal (C{ast.literal_eval}) and prints the reply's C{repr}; its
authkey comes from C{--authkey-file} or C{$NETD_OBJECTS_AUTHKEY}, as for the
server, never from the command line.
"""

from __future__ import annotations

import ast
import builtins
import pickle
import sys
from collections import deque
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import connectProtocol
from twisted.python import usage

from netd.cli import ClientCommand
from netd.services.objects.unpickling import loadRestricted
from netd.services.objects.wire import (
    CHALLENGE,
    FAILURE,
    WELCOME,
    AuthenticationError,
    FrameReceiver,
    createResponse,
    newChallenge,
    verifyResponse,
)

BUILTIN_EXCEPTIONS: dict[tuple[str, str], Any] = {
    ("builtins", name): value
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, Exception)
}
"""The names a reply may use beyond plain data: every builtin exception."""


class ObjectsClientProtocol(FrameReceiver):
    """
    One connection to an objects server.

    @ivar ready: fires with this protocol once the handshake is done (at
        once without an authkey), or fails with L{AuthenticationError}.
    """

    def __init__(
        self,
        authkey: bytes | None = None,
        protocol: int = pickle.DEFAULT_PROTOCOL,
        maxBytes: int = 64 * 1024 * 1024,
        allowed: Mapping[tuple[str, str], Any] | None = None,
        clock: Any = None,
        handshakeTimeout: float = 5.0,
    ) -> None:
        """
        @param authkey: the shared key, or L{None} for a server without one.
        @param protocol: the pickle protocol of requests (the server replies
            in no higher a one).
        @param maxBytes: the largest reply frame accepted.
        @param allowed: extra globals replies may use, beside plain data and
            builtin exceptions.
        @param clock: an L{IReactorTime} for the handshake's deadline; with
            L{None}, no deadline.
        @param handshakeTimeout: with an authkey, seconds to wait for the
            server's challenge: a server without a key sends none, and would
            otherwise leave the client waiting for ever.
        """
        super().__init__()
        self.authkey = authkey
        self.protocol = protocol
        self.maxBytes = maxBytes
        self.allowed = {**BUILTIN_EXCEPTIONS, **(allowed or {})}
        self.ready: defer.Deferred[ObjectsClientProtocol] = defer.Deferred()
        self._state = "challenge"
        self._challenge = b""
        self._waiting: deque[defer.Deferred[Any]] = deque()
        self._clock = clock
        self._handshakeTimeout = handshakeTimeout
        self._deadline: Any = None

    def connectionMade(self) -> None:
        if self.authkey is None:
            self._ready()
        elif self._clock is not None:
            self._deadline = self._clock.callLater(
                self._handshakeTimeout, self._noChallenge
            )

    def _noChallenge(self) -> None:
        self._deadline = None
        if self._state == "challenge":
            self._fail(
                f"the server sent no challenge in {self._handshakeTimeout:g} s: "
                "it has no authkey (connect without one) or is not an objects "
                "server"
            )

    def _ready(self) -> None:
        self._cancelDeadline()
        self._state = "ready"
        self.maxFrameLength = self.maxBytes
        self.ready.callback(self)

    def _cancelDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def frameReceived(self, frame: bytes) -> None:
        if self._state == "ready":
            if self.authkey is None and frame.startswith(CHALLENGE):
                self._fail(
                    "the server asks for an authkey (give --authkey-file or "
                    "set $NETD_OBJECTS_AUTHKEY)"
                )
                return
            self._reply(frame)
        elif self._state == "challenge":
            message = frame[len(CHALLENGE) :]
            if not frame.startswith(CHALLENGE) or len(message) < 20:
                self._fail("protocol error, expected a challenge")
                return
            assert self.authkey is not None
            try:
                self.sendFrame(createResponse(self.authkey, message))
            except AuthenticationError as error:
                self._fail(str(error))
                return
            self._state = "welcome"
        elif self._state == "welcome":
            if frame != WELCOME:
                self._fail("the server rejected our key: the keys differ")
                return
            self._challenge = newChallenge()
            self.sendFrame(CHALLENGE + self._challenge)
            self._state = "response"
        else:
            assert self.authkey is not None
            try:
                verifyResponse(self.authkey, self._challenge, frame)
            except AuthenticationError:
                self.sendFrame(FAILURE)
                self._fail("the server's key differs from ours")
                return
            self.sendFrame(WELCOME)
            self._ready()

    def _fail(self, reason: str) -> None:
        """
        End the connection because the handshake failed: C{ready}, and any
        call already waiting, fail with L{AuthenticationError}.
        """
        self._cancelDeadline()
        self._state = "failed"
        self._closing = True
        self.transport.loseConnection()
        error = AuthenticationError(f"authentication failed: {reason}")
        if not self.ready.called:
            self.ready.errback(error)
        waiting, self._waiting = self._waiting, deque()
        for pending in waiting:
            pending.errback(error)

    def call(self, request: Any) -> defer.Deferred[Any]:
        """
        Send one object; fire with the reply, or fail with the exception the
        server replied with.
        """
        if self._state != "ready":
            return defer.fail(ConnectionError("the connection is not ready"))
        waiting: defer.Deferred[Any] = defer.Deferred()
        self._waiting.append(waiting)
        self.sendFrame(pickle.dumps(request, self.protocol))
        return waiting

    def _reply(self, frame: bytes) -> None:
        if not self._waiting:
            self.badFrame("a reply to no request")
            return
        waiting = self._waiting.popleft()
        try:
            reply = loadRestricted(frame, self.allowed)
        except Exception as error:
            waiting.errback(error)
            return
        if isinstance(reply, Exception):
            waiting.errback(reply)
        else:
            waiting.callback(reply)

    def connectionLost(self, reason: Any = None) -> None:
        self._cancelDeadline()
        self._closing = True
        if not self.ready.called:
            self.ready.errback(
                AuthenticationError(
                    "authentication failed: the server closed during the "
                    "handshake (do both sides use the same key?)"
                )
            )
        waiting, self._waiting = self._waiting, deque()
        for pending in waiting:
            pending.errback(ConnectionError("the server closed before replying"))


async def _connected(endpoint: Any, client: ObjectsClientProtocol) -> Any:
    await connectProtocol(endpoint, client)
    return await client.ready


def connectObjects(
    endpoint: Any, authkey: bytes | None = None, **options: Any
) -> defer.Deferred[ObjectsClientProtocol]:
    """
    Connect to an objects server and do the handshake.

    @param endpoint: any L{IStreamClientEndpoint}.
    @param options: more arguments for L{ObjectsClientProtocol}.
    @return: fires with the ready L{ObjectsClientProtocol}.
    """
    client = ObjectsClientProtocol(authkey, **options)
    return defer.Deferred.fromCoroutine(_connected(endpoint, client))


class ObjectsCommand(ClientCommand):
    """
    C{netd-client objects [options] LITERAL}.
    """

    synopsis = "[options] LITERAL"
    defaultPort = 50016
    optParameters = [
        ["authkey-file", None, None, "Read the authkey from this file."],
        [
            "protocol",
            None,
            pickle.DEFAULT_PROTOCOL,
            "Pickle protocol of the request.",
            int,
        ],
    ]

    def parseArgs(self, literal: str) -> None:
        try:
            self["request"] = ast.literal_eval(literal)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise usage.UsageError(f"not a Python literal: {literal!r}") from None

    def postOptions(self) -> None:
        super().postOptions()
        if not 0 <= self["protocol"] <= pickle.HIGHEST_PROTOCOL:
            raise usage.UsageError(
                f"--protocol must be 0-{pickle.HIGHEST_PROTOCOL}, "
                f"not {self['protocol']!r}"
            )

    async def _run(self, reactor: Any) -> int:
        from netd.listeners import StartupError
        from netd.services.objects.client import connectObjects
        from netd.services.objects.plugin import readAuthkey

        try:
            authkey = readAuthkey(self["authkey-file"])
        except StartupError as error:
            raise usage.UsageError(str(error)) from None
        client = await connectObjects(
            self.endpoint(reactor),
            authkey,
            protocol=self["protocol"],
            clock=reactor,
            handshakeTimeout=min(self["timeout"], 5.0),
        )
        try:
            reply = await client.call(self["request"])
        except (AuthenticationError, ConnectionError):
            raise
        except Exception as error:
            # The server's answer: an exception it replied with.
            sys.stdout.write(f"{type(error).__name__}: {error}\n")
            return 1
        finally:
            client.transport.loseConnection()
        sys.stdout.write(f"{reply!r}\n")
        return 0

    def run(self, reactor: Any) -> Any:
        from twisted.internet import defer

        return defer.Deferred.fromCoroutine(self._run(reactor))
