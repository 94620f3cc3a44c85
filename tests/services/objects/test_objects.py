"""
Tests for L{netd.services.objects}: framing and the handshake (L{wire}),
the restricted unpickler (L{unpickling}) and the server protocol, with
L{StringTransport}; and L{netd.services.objects.client} against the server
over L{iosim}.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import hmac
import os
import pickle
import pickletools
import struct
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent, globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from netd.services.objects.client import ObjectsClientProtocol
from netd.services.objects.processing import encodeReply
from netd.services.objects.replies import replyException
from netd.services.objects.server import ObjectsFactory, addHandler
from netd.services.objects.unpickling import (
    MAX_ALLOCATIONS,
    MAX_TUPLE_DEPTH,
    PickleRefusedError,
    builtinException,
    loadRestricted,
    requestProtocol,
)
from netd.services.objects.wire import (
    CHALLENGE,
    FAILURE,
    WELCOME,
    AuthenticationError,
    FrameReceiver,
    createResponse,
    encodeFrameHeader,
    verifyResponse,
)

PLAIN_VALUES: list[Any] = [
    0,
    -(10**100),
    2.5,
    "text é",
    b"bytes",
    b"",
    bytearray(b"mutable"),
    None,
    True,
    (1, (2, 3)),
    [1, [2, [3]]],
    {"a": 1, 2: [3]},
    {1, 2},
    frozenset({"x"}),
    1 + 2j,
    range(1, 10, 3),
    slice(1, None, 2),
    Ellipsis,
    datetime.datetime(2024, 2, 29, 12, 30, 1, 5),
    datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    datetime.date(2000, 1, 1),
    datetime.time(23, 59, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    datetime.timedelta(days=-1, seconds=5),
    datetime.timezone(datetime.timedelta(hours=-5), "EST"),
    decimal.Decimal("-1.25E+7"),
    fractions.Fraction(-22, 7),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    collections.OrderedDict([("b", 1), ("a", 2)]),
    int,
]


def frame(data: bytes) -> bytes:
    """
    One frame, as C{Connection.send_bytes} sends it.
    """
    return encodeFrameHeader(len(data)) + data


class Reduce:
    """
    Pickles as C{callable(*args)}, the way every hostile pickle runs code.
    """

    def __init__(self, callable: Any, *args: Any) -> None:
        self.callable = callable
        self.args = args

    def __reduce__(self) -> Any:
        return self.callable, self.args


def hostilePickles(marker: str) -> dict[str, bytes]:
    """
    A pickle for each family of attack on an unpickler, by name; none may
    run code or allocate by a declared size. Those that run a command would
    create C{marker}.
    """
    import codecs
    import copyreg
    import functools
    import operator

    command = f"touch {marker}"
    dotted = b"set.__reduce_ex__.__self__.__class__"
    tupleKey = b"\x80\x04}" + b")" + b"\x85" * (MAX_TUPLE_DEPTH + 5) + b"K\x01s."
    return {
        "os.system": pickle.dumps(Reduce(os.system, command)),
        "eval": pickle.dumps(Reduce(eval, f"__import__('os').system({command!r})")),
        "exec": pickle.dumps(Reduce(exec, f"import os; os.system({command!r})")),
        "__import__": pickle.dumps(Reduce(__import__, "os")),
        "getattr": pickle.dumps(Reduce(getattr, Reduce(__import__, "os"), "system")),
        "compile": pickle.dumps(Reduce(compile, "1", "f", "eval")),
        "open": pickle.dumps(Reduce(open, marker, "w")),
        "globals": pickle.dumps(Reduce(globals)),
        "type": pickle.dumps(Reduce(type, "X", (), {})),
        "dotted name": b"\x80\x04\x8c\x08builtins\x8c%c%s\x93." % (len(dotted), dotted),
        "copyreg._reconstructor": pickle.dumps(
            Reduce(copyreg._reconstructor, object, object, None)
        ),
        "codecs.encode rot13": pickle.dumps(Reduce(codecs.encode, "abc", "rot13")),
        "codecs.decode": pickle.dumps(Reduce(codecs.decode, b"x\x9c", "zlib")),
        "operator.attrgetter": pickle.dumps(
            Reduce(operator.attrgetter("system"), Reduce(__import__, "os"))
        ),
        "operator.methodcaller": pickle.dumps(Reduce(operator.methodcaller, "x")),
        "functools.partial": pickle.dumps(
            Reduce(functools.partial(os.system, command))
        ),
        "bytearray size": pickle.dumps(Reduce(bytearray, 2**40)),
        "bytes size": pickle.dumps(Reduce(bytes, 2**40), 2),
        "set of range": pickle.dumps(Reduce(set, range(10**12))),
        "Fraction exponent": pickle.dumps(Reduce(fractions.Fraction, "1e999999999")),
        "Decimal call with list": pickle.dumps(Reduce(decimal.Decimal, [1])),
        "BUILD on a class": (
            b"\x80\x04\x8c\tfractions\x8c\x08Fraction\x93"
            b"N}\x8c\x08__repr__\x8c\x01xs\x86b."
        ),
        "BUILD on a UUID with a bad state": (
            b"\x80\x04\x8c\x04uuid\x8c\x04UUID\x93)\x81}\x8c\x03int]sb."
        ),
        "NEWOBJ of Decimal": b"\x80\x04\x8c\x07decimal\x8c\x07Decimal\x93)\x81.",
        "persistent id": b"\x80\x04K\x01Q.",
        "extension code": b"\x80\x04\x82\x01.",
        "out-of-band buffer": b"\x80\x05\x97.",
        "INST": b"(S'touch x'\nios\nsystem\n.",
        "OBJ": b"\x80\x02(cos\nsystem\nX\x01\x00\x00\x00xo.",
        "APPENDS to a class": b"\x80\x04\x8c\x08builtins\x8c\x04dict\x93(K\x01e.",
        "SETITEM on a list": b"\x80\x04]K\x00K\x01s.",
        "deep tuple key": tupleKey,
        "BYTEARRAY8 bomb": b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b".",
        "allocation bomb": b"\x80\x04]" + b"\x8f" * (MAX_ALLOCATIONS // 4 + 1) + b".",
    }


class RestrictedUnpicklerTests(SynchronousTestCase):
    """
    L{loadRestricted} reads plain data in every protocol and refuses the
    rest.
    """

    def test_plainValuesEveryProtocol(self) -> None:
        """
        Every default-allowed value survives a round trip in protocols 2 to
        5, and all but C{UUID} in protocols 0 and 1.
        """
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            for value in PLAIN_VALUES:
                if protocol < 2 and isinstance(value, uuid.UUID):
                    continue
                loaded = loadRestricted(pickle.dumps(value, protocol))
                self.assertEqual((protocol, loaded), (protocol, value))
                self.assertIs(type(loaded), type(value))

    def test_hostilePicklesRefused(self) -> None:
        """
        Each hostile pickle is refused (L{PickleRefusedError}, or
        C{RecursionError} for the deep tuple, C{UnpicklingError} for the
        lying C{BYTEARRAY8}, C{MemoryError} for a pickle of 500,001 empty
        sets) and creates nothing.
        """
        marker = os.path.abspath(self.mktemp())
        expected = {
            "deep tuple key": RecursionError,
            "BYTEARRAY8 bomb": pickle.UnpicklingError,
            "allocation bomb": MemoryError,
        }
        for name, data in hostilePickles(marker).items():
            with self.subTest(name):
                self.assertRaises(
                    expected.get(name, PickleRefusedError), loadRestricted, data
                )
        self.assertFalse(os.path.exists(marker))

    def test_refusalsNameWhatWasRefused(self) -> None:
        """
        A refused global is named in the L{PickleRefusedError}, which is a
        C{PermissionError}.
        """
        error = self.assertRaises(
            PickleRefusedError, loadRestricted, pickle.dumps(Reduce(os.system, "x"))
        )
        self.assertIsInstance(error, PermissionError)
        self.assertIn("system", str(error))

    def test_deepTupleRefused(self) -> None:
        """
        Tuples nested beyond L{MAX_TUPLE_DEPTH} are refused (hashing one
        would overflow the C stack); up to it they load.
        """
        ok = b"\x80\x04)" + b"\x85" * (MAX_TUPLE_DEPTH - 1) + b"."
        value = loadRestricted(ok)
        hash(value)
        tooDeep = b"\x80\x04)" + b"\x85" * MAX_TUPLE_DEPTH + b"."
        self.assertRaises(RecursionError, loadRestricted, tooDeep)

    def test_deepListLoads(self) -> None:
        """
        A list nested 100,000 deep loads: the unpickler is not recursive.
        """
        data = b"\x80\x04" + b"]" * 100_000 + b"a" * 99_999 + b"."
        value = loadRestricted(data)
        depth = 0
        while value:
            (value,) = value
            depth += 1
        self.assertEqual(depth, 99_999)

    def test_realisticRecordsFitTheBudget(self) -> None:
        """
        A list of 100,000 small records stays within L{MAX_ALLOCATIONS}.
        """
        records = [{"id": n, "name": str(n), "tags": [n]} for n in range(100_000)]
        self.assertEqual(loadRestricted(pickle.dumps(records)), records)

    def test_trustedNamesAreFullCitizens(self) -> None:
        """
        A name added by the operator can be called and built like plain
        C{pickle} would, and only when added.
        """
        data = pickle.dumps(Reduce(os.path.join, "a", "b"))
        self.assertRaises(PickleRefusedError, loadRestricted, data)
        trusted = {(os.path.join.__module__, "join"): os.path.join}
        self.assertEqual(loadRestricted(data, trusted), os.path.join("a", "b"))

    def test_requestProtocol(self) -> None:
        """
        The request's protocol is its C{PROTO} argument, 0 without one.
        """
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            expected = protocol if protocol >= 2 else 0
            self.assertEqual(requestProtocol(pickle.dumps([1], protocol)), expected)
        self.assertEqual(requestProtocol(b"\x80\x09."), pickle.HIGHEST_PROTOCOL)
        self.assertEqual(requestProtocol(b""), 0)


class HandshakeTests(SynchronousTestCase):
    """
    The HMAC functions follow C{multiprocessing.connection}.
    """

    def test_legacyResponse(self) -> None:
        """
        A 20-byte challenge is answered with raw HMAC-MD5, and an unprefixed
        16-byte response is checked as HMAC-MD5 (Python 3.11 and older).
        """
        message = os.urandom(20)
        response = createResponse(b"key", message)
        self.assertEqual(response, hmac.new(b"key", message, "md5").digest())
        verifyResponse(b"key", message, response)
        prefixed = b"{sha256}" + os.urandom(40)
        verifyResponse(b"key", prefixed, hmac.new(b"key", prefixed, "md5").digest())

    def test_prefixedResponse(self) -> None:
        """
        A C{{sha256}} challenge is answered with C{{sha256}} and the HMAC of
        the whole message, prefix included.
        """
        message = b"{sha256}" + os.urandom(40)
        response = createResponse(b"key", message)
        self.assertEqual(
            response, b"{sha256}" + hmac.new(b"key", message, "sha256").digest()
        )
        verifyResponse(b"key", message, response)
        self.assertRaises(AuthenticationError, verifyResponse, b"k2", message, response)

    def test_badResponses(self) -> None:
        """
        Unknown digests, missing prefixes and wrong lengths are refused.
        """
        message = b"{sha256}" + os.urandom(40)
        for response in [b"", b"x" * 17, b"{sha1}" + b"x" * 20, b"{sha256}" + b"x"]:
            self.assertRaises(
                AuthenticationError, verifyResponse, b"key", message, response
            )


class RecordingReceiver(FrameReceiver):
    """
    Collect frames and bad-frame reports.
    """

    maxFrameLength = 1000

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[bytes] = []
        self.bad: list[str] = []

    def frameReceived(self, frame: bytes) -> None:
        self.frames.append(frame)

    def badFrame(self, reason: str) -> None:
        self.bad.append(reason)
        super().badFrame(reason)


class FrameReceiverTests(SynchronousTestCase):
    """
    L{FrameReceiver} splits any chunking of frames correctly.
    """

    def receiver(self) -> tuple[RecordingReceiver, StringTransport]:
        receiver = RecordingReceiver()
        transport = StringTransport()
        receiver.makeConnection(transport)
        return receiver, transport

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.binary(max_size=300), max_size=8),
        st.lists(st.integers(min_value=0, max_value=3000), max_size=20),
        st.booleans(),
    )
    def test_anySplit(self, frames: list[bytes], cuts: list[int], long: bool) -> None:
        """
        Frames (in the 4-byte or the C{-1} + 8-byte form) cut at any byte
        boundaries arrive whole and in order.
        """
        receiver, _ = self.receiver()

        def encode(data: bytes) -> bytes:
            if long:
                return struct.pack("!iQ", -1, len(data)) + data
            return frame(data)

        stream = b"".join(encode(data) for data in frames)
        points = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
        for start, end in zip(points, points[1:], strict=False):
            receiver.dataReceived(stream[start:end])
        self.assertEqual(receiver.frames, frames)
        self.assertEqual(receiver.bad, [])

    def test_oversizeHeaderCloses(self) -> None:
        """
        A header over the limit closes the connection before its body
        arrives, in either length form.
        """
        for header in [struct.pack("!i", 1001), struct.pack("!iQ", -1, 2**62)]:
            receiver, transport = self.receiver()
            receiver.dataReceived(header)
            self.assertEqual(len(receiver.bad), 1)
            self.assertTrue(transport.disconnecting)
            receiver.dataReceived(frame(b"more"))
            self.assertEqual(receiver.frames, [])

    def test_negativeLengthCloses(self) -> None:
        """
        A negative length other than C{-1} closes the connection.
        """
        receiver, transport = self.receiver()
        receiver.dataReceived(struct.pack("!i", -2))
        self.assertTrue(transport.disconnecting)

    def test_truncatedFrameWaits(self) -> None:
        """
        A frame not yet whole is not delivered.
        """
        receiver, transport = self.receiver()
        receiver.dataReceived(frame(b"abcdef")[:-1])
        self.assertEqual(receiver.frames, [])
        self.assertFalse(transport.disconnecting)


def serve(
    handler: Any = None, authkey: bytes | None = None, **options: Any
) -> tuple[Any, StringTransport]:
    factory = ObjectsFactory(
        Clock(), handler=handler or (lambda x: x), authkey=authkey, **options
    )
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def replies(transport: StringTransport) -> list[Any]:
    """
    Unpickle every reply frame written so far.
    """
    receiver = RecordingReceiver()
    receiver.maxFrameLength = 2**31
    receiver.makeConnection(StringTransport())
    receiver.dataReceived(transport.value())
    transport.clear()
    return [pickle.loads(data) for data in receiver.frames]


class ObjectsServerTests(SynchronousTestCase):
    """
    L{ObjectsServerProtocol} over a L{StringTransport}.
    """

    def test_echo(self) -> None:
        """
        Without an authkey, each request gets its reply at once.
        """
        protocol, transport = serve()
        protocol.dataReceived(frame(pickle.dumps({"a": [1, 2]})))
        self.assertEqual(replies(transport), [{"a": [1, 2]}])

    def test_stopGracefullyIdle(self) -> None:
        """
        When netd stops, a connection with no request in progress closes at
        once.
        """
        protocol, transport = serve()
        protocol.dataReceived(frame(pickle.dumps(1)))
        protocol.stopGracefully()
        self.assertEqual(replies(transport), [1])
        self.assertTrue(transport.disconnecting)

    def test_stopGracefullyInFlight(self) -> None:
        """
        When netd stops, a request in progress still gets its reply, then
        the connection closes.
        """
        pending: defer.Deferred[Any] = defer.Deferred()
        protocol, transport = serve(lambda request: pending)
        protocol.dataReceived(frame(pickle.dumps("slow")))
        protocol.stopGracefully()
        self.assertFalse(transport.disconnecting)
        pending.callback("done")
        self.assertEqual(replies(transport), ["done"])
        self.assertTrue(transport.disconnecting)

    def test_add(self) -> None:
        """
        The C{add} handler adds lists and strings, as the book's server.
        """
        protocol, transport = serve(addHandler)
        protocol.dataReceived(frame(pickle.dumps(([1, 2, 3], [4, 5]))))
        protocol.dataReceived(frame(pickle.dumps(("ab", "cd"))))
        self.assertEqual(replies(transport), [[1, 2, 3, 4, 5], "abcd"])

    def test_replyProtocol(self) -> None:
        """
        The reply is pickled in the request's protocol.
        """
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            server, transport = serve()
            server.dataReceived(frame(pickle.dumps([b"x"], protocol)))
            data = transport.value()[4:]
            self.assertEqual(requestProtocol(data), protocol if protocol > 1 else 0)
            self.assertEqual(pickle.loads(data), [b"x"])

    def test_hostileRequestsAnsweredWithExceptions(self) -> None:
        """
        Each hostile pickle gets a builtin exception as its reply, the
        connection stays open, the marker is never created, and refusals of
        globals are logged.
        """
        marker = os.path.abspath(self.mktemp())
        protocol, transport = serve()
        hostile = hostilePickles(marker)
        with capturedLogs() as events:
            for data in hostile.values():
                protocol.dataReceived(frame(data))
        protocol.dataReceived(frame(pickle.dumps("still here")))
        answers = replies(transport)
        self.assertEqual(len(answers), len(hostile) + 1)
        for name, answer in zip(hostile, answers, strict=False):
            self.assertIsInstance(answer, Exception, name)
            self.assertEqual(type(answer).__module__, "builtins", name)
        self.assertEqual(answers[-1], "still here")
        self.assertFalse(transport.disconnecting)
        self.assertFalse(os.path.exists(marker))
        self.assertTrue(
            any("posix.system" in event.get("reason", "") for event in events)
        )

    def test_deepListGetsException(self) -> None:
        """
        A list nested 100,000 deep cannot be pickled back: the reply is a
        C{RecursionError}, and the connection still serves.
        """
        protocol, transport = serve()
        protocol.dataReceived(
            frame(b"\x80\x04" + b"]" * 100_000 + b"a" * 99_999 + b".")
        )
        protocol.dataReceived(frame(pickle.dumps(1)))
        answers = replies(transport)
        self.assertIsInstance(answers[0], RecursionError)
        self.assertEqual(answers[1], 1)

    def test_garbage(self) -> None:
        """
        A frame that is not a pickle gets a C{ValueError}; garbage headers
        close the connection.
        """
        protocol, transport = serve()
        protocol.dataReceived(frame(b"\xffgarbage"))
        protocol.dataReceived(frame(b""))
        answers = replies(transport)
        self.assertEqual([type(a) for a in answers], [ValueError, ValueError])
        protocol.dataReceived(b"\xfe\xfe\xfe\xfe")
        self.assertTrue(transport.disconnecting)

    def test_oversizeRequestCloses(self) -> None:
        """
        A request header over C{maxBytes} closes the connection unanswered.
        """
        protocol, transport = serve(maxBytes=100)
        protocol.dataReceived(frame(pickle.dumps(b"x" * 50)))
        self.assertEqual(len(replies(transport)), 1)
        protocol.dataReceived(struct.pack("!i", 101))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_handlerRaises(self) -> None:
        """
        A handler's exception comes back as the nearest builtin exception,
        message kept.
        """

        class CustomError(KeyError):
            pass

        def handler(request: Any) -> Any:
            if request == 0:
                return 1 / request
            raise CustomError("custom trouble")

        protocol, transport = serve(handler)
        protocol.dataReceived(frame(pickle.dumps(0)) + frame(pickle.dumps(1)))
        zero, custom = replies(transport)
        self.assertEqual(type(zero), ZeroDivisionError)
        self.assertEqual(str(zero), "division by zero")
        self.assertEqual(type(custom), KeyError)
        self.assertEqual(custom.args, ("'custom trouble'",))

    def test_deferredRepliesInOrder(self) -> None:
        """
        Replies go out in request order although the handler's Deferreds
        fire in reverse; a value reply waits behind them.
        """
        waiting: dict[int, defer.Deferred[Any]] = {}

        def handler(request: int) -> Any:
            if request == 3:
                return "now"
            waiting[request] = defer.Deferred()
            return waiting[request]

        protocol, transport = serve(handler)
        protocol.dataReceived(b"".join(frame(pickle.dumps(n)) for n in (1, 2, 3)))
        self.assertEqual(transport.value(), b"")
        waiting[2].callback("two")
        self.assertEqual(transport.value(), b"")
        waiting[1].errback(ValueError("one failed"))
        one, two, three = replies(transport)
        self.assertEqual((type(one), two, three), (ValueError, "two", "now"))

    def test_pendingCap(self) -> None:
        """
        With C{maxPending} requests in progress the connection is paused
        and further frames wait; as replies complete, reading resumes.
        """
        waiting: list[defer.Deferred[Any]] = []

        def handler(request: Any) -> Any:
            waiting.append(defer.Deferred())
            return waiting[-1]

        protocol, transport = serve(handler, maxPending=2)
        protocol.dataReceived(b"".join(frame(pickle.dumps(n)) for n in range(5)))
        self.assertEqual(len(waiting), 2)
        self.assertEqual(transport.producerState, "paused")
        waiting[0].callback(0)
        self.assertEqual(len(waiting), 3)
        for n in range(1, 5):
            waiting[n].callback(n)
        self.assertEqual(replies(transport), [0, 1, 2, 3, 4])
        self.assertEqual(transport.producerState, "producing")

    def test_cancelledOnDisconnect(self) -> None:
        """
        Requests still running when the client goes are cancelled.
        """
        cancelled: list[defer.Deferred[Any]] = []
        waiting: defer.Deferred[Any] = defer.Deferred(cancelled.append)
        protocol, transport = serve(lambda request: waiting)
        protocol.dataReceived(frame(pickle.dumps(1)))
        protocol.connectionLost(None)
        self.assertEqual(cancelled, [waiting])
        self.assertEqual(transport.value(), b"")

    def test_handshakeWrongKey(self) -> None:
        """
        A wrong response gets C{#FAILURE#} and the connection closes;
        nothing after it is unpickled.
        """
        protocol, transport = serve(authkey=b"secret")
        challenge = replies_raw(transport)[0]
        self.assertTrue(challenge.startswith(CHALLENGE + b"{sha256}"))
        response = createResponse(b"wrong", challenge[len(CHALLENGE) :])
        protocol.dataReceived(frame(response) + frame(pickle.dumps(1)))
        self.assertEqual(replies_raw(transport), [FAILURE])
        self.assertTrue(transport.disconnecting)

    def test_handshakeDeadline(self) -> None:
        """
        A client that has not finished the handshake within
        C{handshakeTimeout} seconds is cut off and logged; one that did is
        left alone, and without an authkey there is no deadline.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        protocol, transport = serve(authkey=b"secret")
        self.assertEqual(protocol.factory.handshakeTimeout, 10.0)
        clock = protocol.factory.reactor
        clock.advance(9.9)
        self.assertFalse(transport.disconnected)
        clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertIn(
            "failed the handshake: not done within 10s",
            [formatEvent(event) for event in events][-1],
        )
        protocol.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])

        protocol, transport = serve(authkey=b"secret")
        clock = protocol.factory.reactor
        challenge = replies_raw(transport)[0][len(CHALLENGE) :]
        protocol.dataReceived(frame(createResponse(b"secret", challenge)))
        mine = os.urandom(20)
        protocol.dataReceived(frame(CHALLENGE + mine) + frame(WELCOME))
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(60)
        self.assertFalse(transport.disconnecting)

        protocol, transport = serve()
        self.assertEqual(protocol.factory.reactor.getDelayedCalls(), [])

    def test_handshakeFrameCapped(self) -> None:
        """
        Before authentication a frame over 256 bytes closes the connection.
        """
        protocol, transport = serve(authkey=b"secret")
        transport.clear()
        protocol.dataReceived(struct.pack("!i", 257))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_handshakeLegacyClient(self) -> None:
        """
        A Python 3.11 client (raw HMAC-MD5 response, 20-byte challenge) is
        welcomed, gets a raw HMAC-MD5 answer, and then is served.
        """
        protocol, transport = serve(authkey=b"secret")
        challenge = replies_raw(transport)[0][len(CHALLENGE) :]
        protocol.dataReceived(frame(hmac.new(b"secret", challenge, "md5").digest()))
        self.assertEqual(replies_raw(transport), [WELCOME])
        mine = os.urandom(20)
        protocol.dataReceived(frame(CHALLENGE + mine))
        self.assertEqual(
            replies_raw(transport), [hmac.new(b"secret", mine, "md5").digest()]
        )
        protocol.dataReceived(frame(WELCOME) + frame(pickle.dumps("hi", 4)))
        self.assertEqual(replies(transport), ["hi"])

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.binary(max_size=64),
                st.sampled_from(list(hostilePickles("/nonexistent").values())[:-3]),
                st.builds(pickle.dumps, st.recursive(st.integers(), st.lists)),
            ),
            max_size=6,
        ),
        st.booleans(),
    )
    def test_anyFramesNeverRaise(self, bodies: list[bytes], authkey: bool) -> None:
        """
        Whatever frames a client sends (random bytes, hostile pickles, plain
        ones), the protocol never raises; without an authkey every frame
        gets exactly one reply.
        """
        protocol, transport = serve(authkey=b"k" if authkey else None)
        transport.clear()
        protocol.dataReceived(b"".join(frame(body) for body in bodies))
        if not authkey:
            self.assertEqual(len(replies(transport)), len(bodies))

    def test_builtinException(self) -> None:
        """
        Exceptions that need more arguments fall back to a parent type.
        """
        error = builtinException(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"))
        self.assertIs(type(error), UnicodeError)


def replies_raw(transport: StringTransport) -> list[bytes]:
    """
    Every frame written so far, not unpickled.
    """
    receiver = RecordingReceiver()
    receiver.makeConnection(StringTransport())
    receiver.dataReceived(transport.value())
    transport.clear()
    return receiver.frames


class ClientServerTests(SynchronousTestCase):
    """
    L{ObjectsClientProtocol} against L{ObjectsServerProtocol} in memory.
    """

    def connect(
        self, serverKey: bytes | None, clientKey: bytes | None, handler: Any = None
    ) -> tuple[ObjectsClientProtocol, iosim.IOPump]:
        factory = ObjectsFactory(
            Clock(), handler=handler or (lambda x: x), authkey=serverKey
        )
        client = ObjectsClientProtocol(clientKey)
        _client, _server, pump = iosim.connectedServerAndClient(
            lambda: factory.buildProtocol(None), lambda: client
        )
        return client, pump

    def test_authenticatedCall(self) -> None:
        """
        With the same key the handshake succeeds both ways and calls work.
        """
        client, pump = self.connect(b"key", b"key")
        pump.flush()
        self.assertIs(self.successResultOf(client.ready), client)
        result = client.call((1, "two", [3.0]))
        pump.flush()
        self.assertEqual(self.successResultOf(result), (1, "two", [3.0]))

    def test_wrongKey(self) -> None:
        """
        A wrong key fails C{ready} with L{AuthenticationError}.
        """
        client, pump = self.connect(b"key", b"other")
        pump.flush()
        self.failureResultOf(client.ready, AuthenticationError)

    def test_exceptionReply(self) -> None:
        """
        An exception reply fails the call's Deferred with that exception.
        """
        client, pump = self.connect(None, None, addHandler)
        pump.flush()
        result = client.call((1, "x"))
        pump.flush()
        self.failureResultOf(result, TypeError)


def globalsNamed(data: bytes) -> set[str]:
    """
    The C{module name} of every C{GLOBAL} opcode in a protocol 0-2 pickle.
    """
    return {
        str(argument)
        for opcode, argument, _ in pickletools.genops(data)
        if opcode.name == "GLOBAL"
    }


class ReplyTests(SynchronousTestCase):
    """
    L{encodeReply} and L{replyException}: replies Python 2 can read.
    """

    def test_python2Names(self) -> None:
        """
        In protocols 0 to 2 a reply names only Python 2's modules
        (C{__builtin__}, C{exceptions}), never C{builtins}; Python 3 reads
        it back as the same value.
        """
        value = [{1, 2}, frozenset(), 1 + 2j, b"x", b"", bytearray(b"y"), range(3)]
        for protocol in range(3):
            data = encodeReply(value, protocol)
            names = globalsNamed(data)
            self.assertTrue(names, protocol)
            self.assertEqual(
                {name.split()[0] for name in names} - {"__builtin__", "_codecs"},
                set(),
                (protocol, names),
            )
            self.assertEqual(pickle.loads(data), value)
        self.assertIn(b"builtins", encodeReply({1}, 0) + encodeReply({1}, 3))

    def test_python2Exceptions(self) -> None:
        """
        For protocols up to 2, exceptions Python 2 lacks become the nearest
        one it has, message kept; from protocol 3 on they stay themselves.
        """
        cases = [
            (PermissionError("refused"), OSError),
            (ConnectionResetError("gone"), OSError),
            (RecursionError("deep"), RuntimeError),
            (ModuleNotFoundError("nope"), ImportError),
            (StopAsyncIteration("end"), Exception),
            (ZeroDivisionError("zero"), ZeroDivisionError),
            (UnicodeDecodeError("ascii", b"\xff", 0, 1, "bad"), UnicodeError),
            (PickleRefusedError("global os.system"), OSError),
        ]
        for error, expected in cases:
            for protocol in range(3):
                data = encodeReply(error, protocol)
                loaded = pickle.loads(data)
                self.assertIs(type(loaded), expected, (error, protocol))
                self.assertEqual(str(loaded), str(error))
                for name in globalsNamed(data):
                    self.assertTrue(name.startswith("exceptions "), name)
            nearest = builtinException(error)
            self.assertIs(type(replyException(error, 3)), type(nearest))
            self.assertIs(type(pickle.loads(encodeReply(error, 4))), type(nearest))

    def test_unpicklableReply(self) -> None:
        """
        A reply that cannot be pickled becomes the error pickling raised,
        in a form Python 2 reads for protocol 2.
        """
        loaded = pickle.loads(encodeReply(lambda: None, 2))
        self.assertIsInstance(loaded, Exception)
        self.assertNotIsInstance(loaded, PermissionError)

    def test_python2StringsAreLatin1(self) -> None:
        """
        Python 2's C{str} (the C{STRING} opcodes) is read as Latin-1, so
        Python 2's datetimes load, and any byte is accepted.
        """
        # Python 2.7: pickle.dumps(datetime.datetime(2020, 1, 2, 3, 4, 5), 2)
        # and pickle.dumps('caf\xc3\xa9', 2).
        py2Datetime = bytes.fromhex(
            "8002636461746574696d650a6461746574696d650a7100550a"
            "07e4010203040500000071018571025271032e"
        )
        self.assertEqual(
            loadRestricted(py2Datetime), datetime.datetime(2020, 1, 2, 3, 4, 5)
        )
        self.assertEqual(
            loadRestricted(b"\x80\x02U\x05caf\xc3\xa9q\x00."), "caf\xc3\xa9"
        )
