# -*- test-case-name: tests.test_objects -*-
"""
The objects service: pickled Python objects over
C{multiprocessing.connection}'s wire format, with its HMAC handshake, and
an unpickler that never runs what a client sends.

Wire format (the standard library's C{Connection.send_bytes}): each frame
is a 4-byte big-endian signed length and that many bytes; a length of C{-1}
is followed by an 8-byte unsigned length (frames over 2 GiB). A request
frame holds one pickle; its reply frame holds one pickle, in a protocol no
higher than the request's.

With an authkey, the server runs C{deliver_challenge} then
C{answer_challenge} exactly as C{Listener.accept} does in Python 3.12 and
3.13: its challenge is C{#CHALLENGE#{sha256}} + 40 random bytes, and it
accepts both the C{{digest}}-prefixed responses of 3.12+ and the raw 16-byte
HMAC-MD5 of Python 3.11 and older; it answers a client's legacy 20-byte
challenge with raw HMAC-MD5 and a prefixed one with that digest. Handshake
frames are capped at 256 bytes, as the standard library caps them.

Why not C{pickle.Unpickler} with a C{find_class} allowlist alone: the C
unpickler lets no subclass see C{REDUCE}, C{BUILD} or C{SETITEM}, so an
allowed class could be mutated through C{BUILD}, an allowed constructor
called with any arguments (C{bytearray(2**40)}), and a pickle naming no
global at all can crash the interpreter (a dict keyed by a tuple nested a
million deep overflows the C stack when hashed). L{RestrictedUnpickler} is
therefore the pure-Python unpickler with every opcode that calls, mutates or
allocates by a declared size checked here.
"""

from __future__ import annotations

import codecs
import collections
import datetime
import decimal
import fractions
import hmac
import io
import os
import pickle
import re
import struct
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.plugin import IGracefulProtocol
from netd.throttledlog import ThrottledLog

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_PENDING = 16
HANDSHAKE_MAX_BYTES = 256

CHALLENGE = b"#CHALLENGE#"
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"
MESSAGE_LENGTH = 40
ALLOWED_DIGESTS = frozenset({b"md5", b"sha256", b"sha384", b"sha3_256", b"sha3_384"})
_MAX_DIGEST_LEN = max(len(name) for name in ALLOWED_DIGESTS)
_MD5ONLY_MESSAGE_LENGTH = 20
_MD5_DIGEST_LEN = 16
_LEGACY_LENGTHS = (_MD5ONLY_MESSAGE_LENGTH, _MD5_DIGEST_LEN)

MAX_TUPLE_DEPTH = 1000
"""Tuples nested deeper are refused: hashing one recurses in C unchecked."""

MAX_ALLOCATIONS = 2_000_000
"""
Containers, marks and memo entries one request may make, each counted in
units of about 64 bytes (an empty set counts 4): one byte of pickle can
allocate 200 bytes (C{EMPTY_SET}), so without this an 8 MiB request could
take gigabytes. About 128 MB at most.
"""

_MAX_NUMBER_TEXT = 10_000
_MAX_FRACTION_BITS = 65_536


class AuthenticationError(Exception):
    """
    A peer failed the C{multiprocessing.connection} handshake.
    """


class _Stopped(Exception):  # noqa: N818
    """
    The C{STOP} opcode: unpickling is done.
    """

    def __init__(self, value: Any) -> None:
        self.value = value


class PickleRefusedError(PermissionError):
    """
    A pickle named a global that is not allowed, or used an allowed one in a
    way that is not.
    """


# The handshake, as Lib/multiprocessing/connection.py (3.12, 3.13) does it.


def digestNameAndPayload(message: bytes) -> tuple[str, bytes]:
    """
    Split a challenge or response into its digest name and payload, as the
    standard library's C{_get_digest_name_and_payload} does.

    @return: C{("", message)} for the legacy (MD5, unprefixed) form.
    @raise AuthenticationError: for a malformed or unsupported prefix.
    """
    if len(message) in _LEGACY_LENGTHS:
        return "", message
    if message.startswith(b"{"):
        curly = message.find(b"}", 1, _MAX_DIGEST_LEN + 2)
        if curly > 0 and message[1:curly] in ALLOWED_DIGESTS:
            return message[1:curly].decode("ascii"), message[curly + 1 :]
    raise AuthenticationError(
        "unsupported message length, missing digest prefix, or unsupported digest"
    )


def createResponse(authkey: bytes, message: bytes) -> bytes:
    """
    The answer to a challenge C{message} (without C{#CHALLENGE#}): raw
    HMAC-MD5 for a legacy challenge, else C{{digest}} + HMAC of that digest.
    The MAC covers the whole message, prefix included.
    """
    name = digestNameAndPayload(message)[0]
    if not name:
        return hmac.new(authkey, message, "md5").digest()
    return b"{%s}%s" % (name.encode("ascii"), hmac.new(authkey, message, name).digest())


def verifyResponse(authkey: bytes, message: bytes, response: bytes) -> None:
    """
    Check a peer's C{response} to our challenge C{message}, as the standard
    library's C{_verify_challenge}: an unprefixed 16-byte response is
    HMAC-MD5 (Python 3.11 and older); a prefixed one names its digest.

    @raise AuthenticationError: when it does not match.
    """
    name, mac = digestNameAndPayload(response)
    expected = hmac.new(authkey, message, name or "md5").digest()
    if len(expected) != len(mac) or not hmac.compare_digest(expected, mac):
        raise AuthenticationError("digest received was wrong")


def newChallenge(digestName: str = "sha256") -> bytes:
    """
    A fresh challenge message (without C{#CHALLENGE#}):
    C{{sha256}} + 40 random bytes, as Python 3.12+ servers send.
    """
    return b"{%s}%s" % (digestName.encode("ascii"), os.urandom(MESSAGE_LENGTH))


def encodeFrameHeader(length: int) -> bytes:
    """
    The length header of a frame, in C{Connection._send_bytes}'s form.
    """
    if length > 0x7FFFFFFF:
        return struct.pack("!iQ", -1, length)
    return struct.pack("!i", length)


# Safe unpickling.


def _allTypes(*types: type) -> Callable[[tuple[Any, ...]], bool]:
    def check(args: tuple[Any, ...]) -> bool:
        return all(type(arg) in types for arg in args)

    return check


def _strict(
    target: Callable[..., Any],
    *accepted: Callable[[tuple[Any, ...]], bool],
    name: str = "",
) -> Callable[..., Any]:
    """
    A constructor that calls C{target} only with arguments one of
    C{accepted} approves of.
    """

    def construct(*args: Any) -> Any:
        if not any(check(args) for check in accepted):
            raise PickleRefusedError(
                f"refusing {name or target.__qualname__} with arguments of types "
                f"{[type(arg).__name__ for arg in args]}"
            )
        return target(*args)

    return construct


def _shapes(*shapes: tuple[type, ...]) -> Callable[[tuple[Any, ...]], bool]:
    def check(args: tuple[Any, ...]) -> bool:
        return any(
            len(args) == len(shape)
            and all(type(arg) is kind for arg, kind in zip(args, shape, strict=True))
            for shape in shapes
        )

    return check


def _latin1(args: tuple[Any, ...]) -> bool:
    return (
        len(args) == 2
        and type(args[0]) is str
        and type(args[1]) is str
        and args[1].lower().replace("-", "") == "latin1"
    )


def _encodeLatin1(text: str, encoding: str) -> bytes:
    return text.encode("latin-1")


def _shortNumberText(args: tuple[Any, ...]) -> bool:
    return (
        len(args) == 1
        and type(args[0]) in (str, int, float)
        and (type(args[0]) is not str or len(args[0]) <= _MAX_NUMBER_TEXT)
    )


_FRACTION_TEXT = re.compile(r"-?\d{1,4300}(/\d{1,4300})?\Z")


def _fractionArgs(args: tuple[Any, ...]) -> bool:
    if len(args) == 1 and type(args[0]) is str:
        return _FRACTION_TEXT.match(args[0]) is not None
    return (
        1 <= len(args) <= 2
        and all(type(arg) is int for arg in args)
        and all(arg.bit_length() <= _MAX_FRACTION_BITS for arg in args)
    )


_DATETIME_ARGUMENT_TYPES = (
    int,
    float,
    str,
    bytes,
    type(None),
    datetime.timezone,
    datetime.timedelta,
)


def _datetimeArgs(args: tuple[Any, ...]) -> bool:
    return len(args) <= 9 and all(type(arg) in _DATETIME_ARGUMENT_TYPES for arg in args)


def _uuidState(state: Any) -> bool:
    return (
        type(state) is dict
        and set(state) <= {"int", "is_safe"}
        and type(state.get("int")) is int
        and 0 <= state["int"] < 1 << 128
        and state.get("is_safe", 0) in (0, -1, None)
    )


_ints = _allTypes(int)
_optionalInts = _allTypes(int, type(None))

# (module, name) -> (the object, what REDUCE may call instead, or None)
_DEFAULT_ALLOWED: dict[tuple[str, str], tuple[Any, Callable[..., Any] | None]] = {
    ("builtins", "int"): (int, None),
    ("builtins", "float"): (float, None),
    ("builtins", "str"): (str, None),
    ("builtins", "bool"): (bool, None),
    ("builtins", "tuple"): (tuple, None),
    ("builtins", "list"): (list, None),
    ("builtins", "dict"): (dict, None),
    ("builtins", "Ellipsis"): (Ellipsis, None),
    ("builtins", "NotImplemented"): (NotImplemented, None),
    ("builtins", "complex"): (
        complex,
        _strict(
            complex,
            _shapes(
                (),
                (float,),
                (int,),
                (float, float),
                (int, int),
                (int, float),
                (float, int),
            ),
        ),
    ),  # fmt: skip # noqa: E501
    ("builtins", "bytes"): (bytes, _strict(bytes, _shapes((), (bytes,)))),
    ("builtins", "bytearray"): (
        bytearray,
        _strict(bytearray, _shapes((), (bytes,)), _latin1),
    ),
    ("builtins", "set"): (set, _strict(set, _shapes((), (list,), (tuple,)))),
    ("builtins", "frozenset"): (
        frozenset,
        _strict(frozenset, _shapes((), (list,), (tuple,))),
    ),
    ("builtins", "range"): (
        range,
        _strict(range, lambda a: 1 <= len(a) <= 3 and _ints(a)),
    ),
    ("builtins", "slice"): (
        slice,
        _strict(slice, lambda a: 1 <= len(a) <= 3 and _optionalInts(a)),
    ),
    # Python 3 pickles bytes this way in protocols 0 to 2.
    ("_codecs", "encode"): (
        codecs.encode,
        _strict(_encodeLatin1, _latin1, name="codecs.encode"),
    ),
    ("codecs", "encode"): (
        codecs.encode,
        _strict(_encodeLatin1, _latin1, name="codecs.encode"),
    ),
    ("decimal", "Decimal"): (
        decimal.Decimal,
        _strict(decimal.Decimal, _shortNumberText),
    ),
    ("fractions", "Fraction"): (
        fractions.Fraction,
        _strict(fractions.Fraction, _fractionArgs),
    ),
    ("collections", "OrderedDict"): (
        collections.OrderedDict,
        _strict(collections.OrderedDict, _shapes(())),
    ),
    ("uuid", "UUID"): (uuid.UUID, None),
    **{
        ("datetime", kind.__name__): (kind, _strict(kind, _datetimeArgs))
        for kind in (
            datetime.date,
            datetime.time,
            datetime.datetime,
            datetime.timedelta,
            datetime.timezone,
        )
    },
}

# Types NEWOBJ may create, and what BUILD may then set on their instances.
_NEWOBJ_TYPES: dict[type, Callable[[tuple[Any, ...]], bool]] = {
    complex: _shapes((float, float), (int, int), (float,), ()),
    uuid.UUID: _shapes(()),
}
_BUILD_STATES: dict[type, Callable[[Any], bool]] = {uuid.UUID: _uuidState}

_APPEND_TARGETS = (list,)
_SETITEM_TARGETS = (dict, collections.OrderedDict)
_ADDITEMS_TARGETS = (set,)


def _opcode(name: str) -> int:
    return getattr(pickle, name)[0]  # type: ignore[no-any-return]


def _spending(load: Callable[[Any], None], units: int) -> Callable[[Any], None]:
    """
    Wrap an opcode's loader so that it counts against L{MAX_ALLOCATIONS}.
    """

    def spendThenLoad(unpickler: Any) -> None:
        unpickler._spend(units)
        load(unpickler)

    return spendThenLoad


class RestrictedUnpickler(pickle._Unpickler):
    """
    Unpickle plain data only: globals come from an allowlist, and every
    opcode that calls, mutates or allocates is checked.

      - C{GLOBAL}/C{STACK_GLOBAL} name only allowed (module, qualname) pairs
        (L{PickleRefusedError} otherwise, the name in its message).
      - C{REDUCE} calls only the allowed callables, and the default ones only
        with the argument types their own pickles use (C{set(list)},
        C{Decimal(str)}, never C{bytearray(2**40)}).
      - C{NEWOBJ} and C{BUILD} work only for C{complex} and C{uuid.UUID}
        (with a checked state) and the operator's extra classes; C{INST},
        C{OBJ}, C{EXT*}, persistent ids and out-of-band buffers are refused.
      - C{APPEND(S)}, C{SETITEM(S)}, C{ADDITEMS} apply only to lists, dicts
        and sets; tuples nest at most L{MAX_TUPLE_DEPTH} deep; C{BYTEARRAY8}
        may not claim more bytes than the pickle holds; containers and memo
        entries are counted against L{MAX_ALLOCATIONS}.

    Extra names from the operator (C{trusted}) are full citizens: they may be
    called, instantiated and have their state set, as plain C{pickle} would.

    @ivar proto: the pickle's protocol, from its C{PROTO} opcode (0 without).
    """

    log = Logger()
    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(
        pickle._Unpickler.dispatch  # type: ignore[attr-defined]
    )
    # What the pure-Python unpickler sets up in load(), for the type checker.
    stack: list[Any]
    append: Callable[[Any], None]
    read: Callable[[int], bytes]
    pop_mark: Callable[[], list[Any]]
    readinto: Callable[[Any], int]
    readline: Callable[[], bytes]
    metastack: list[Any]
    proto: int

    def __init__(
        self,
        data: bytes,
        trusted: Mapping[tuple[str, str], Any] | None = None,
    ) -> None:
        """
        @param data: one whole pickle.
        @param trusted: extra allowed names, C{(module, qualname)} to the
            object, which may be called and built without checks.
        """
        self._data = io.BytesIO(data)
        super().__init__(self._data)
        self._size = len(data)
        self._trusted = dict(trusted or {})
        self._trustedObjects = {id(value): value for value in self._trusted.values()}
        self._tupleDepths: dict[int, tuple[tuple[Any, ...], int]] = {}
        self._allocations = 0

    def load(self) -> Any:
        """
        Read the whole pickle. The data is all in memory, so frames are
        only skipped, not buffered (the stdlib's C{_Unframer} would copy).
        """
        self.read = self._data.read
        self.readinto = self._data.readinto
        self.readline = self._data.readline
        self.metastack = []
        self.stack = []
        self.append = self.stack.append
        self.proto = 0
        read = self.read
        dispatch = self.dispatch
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError("pickle data was truncated")
                dispatch[key[0]](self)
        except _Stopped as stopped:
            return stopped.value

    def load_stop(self) -> None:
        raise _Stopped(self.stack.pop())

    def load_frame(self) -> None:
        if len(self.read(8)) != 8:
            raise pickle.UnpicklingError("pickle data was truncated")

    def find_class(self, module: str, name: str) -> Any:
        """
        Look a global up in the allowlist; never import anything.

        @raise PickleRefusedError: for a name not on it.
        """
        if self.proto < 3:
            from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING

            if (module, name) in NAME_MAPPING:
                module, name = NAME_MAPPING[(module, name)]
            elif module in IMPORT_MAPPING:
                module = IMPORT_MAPPING[module]
        if (module, name) in self._trusted:
            return self._trusted[(module, name)]
        if (module, name) in _DEFAULT_ALLOWED:
            return _DEFAULT_ALLOWED[(module, name)][0]
        raise PickleRefusedError(f"global {module:.100}.{name:.100} is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise PickleRefusedError("persistent ids are not allowed")

    def _isTrusted(self, value: Any) -> bool:
        return self._trustedObjects.get(id(value)) is value

    def _reducer(self, func: Any) -> Callable[..., Any]:
        if self._isTrusted(func):
            return func  # type: ignore[no-any-return]
        for value, reducer in _DEFAULT_ALLOWED.values():
            if value is func and reducer is not None:
                return reducer
        raise PickleRefusedError(f"calling {_describe(func)} is not allowed")

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        if type(args) is not tuple:
            raise PickleRefusedError("REDUCE arguments must be a tuple")
        stack[-1] = self._reducer(stack[-1])(*args)

    def _newobj(self, cls: Any, args: Any, kwargs: Any) -> Any:
        if self._isTrusted(cls) and isinstance(cls, type):
            return cls.__new__(cls, *args, **kwargs)
        check = _NEWOBJ_TYPES.get(cls) if type(cls) is type else None
        if check is None or type(args) is not tuple or kwargs or not check(args):
            raise PickleRefusedError(f"creating {_describe(cls)} is not allowed")
        return cls.__new__(cls, *args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._newobj(cls, args, {}))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._newobj(cls, args, kwargs))

    def load_build(self) -> None:
        state = self.stack[-1]
        inst = self.stack[-2]
        if self._isTrusted(type(inst)) and not isinstance(inst, type):
            super().load_build()  # type: ignore[misc]
            return
        check = _BUILD_STATES.get(type(inst))
        if check is None or not check(state):
            raise PickleRefusedError(
                f"setting the state of {_describe(inst)} is refused"
            )
        self.stack.pop()
        inst.__setstate__(state)

    def _refuse(self) -> None:
        raise PickleRefusedError("opcode not allowed (INST, OBJ, EXT or buffers)")

    def _refusePersistent(self) -> None:
        raise PickleRefusedError("persistent ids are not allowed")

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target(_APPEND_TARGETS).append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target(_APPEND_TARGETS).extend(items)

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._target(_SETITEM_TARGETS)[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target(_SETITEM_TARGETS)
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._target(_ADDITEMS_TARGETS).update(items)

    def _target(self, kinds: tuple[type, ...]) -> Any:
        target = self.stack[-1]
        if type(target) not in kinds and not self._isTrusted(type(target)):
            raise PickleRefusedError(f"cannot add items to {_describe(target)}")
        return target

    def _tuple(self, items: Iterable[Any]) -> tuple[Any, ...]:
        made = tuple(items)
        depth = 1
        for item in made:
            if type(item) is tuple:
                known = self._tupleDepths.get(id(item))
                depth = max(depth, 1 + (known[1] if known is not None else 1))
        if depth > 1:
            if depth > MAX_TUPLE_DEPTH:
                raise RecursionError(
                    f"tuples nested over {MAX_TUPLE_DEPTH} deep are refused"
                )
            self._tupleDepths[id(made)] = (made, depth)
        return made

    def load_tuple(self) -> None:
        items = self.pop_mark()
        self.append(self._tuple(items))

    def load_tuple1(self) -> None:
        self.stack[-1] = self._tuple(self.stack[-1:])

    def load_tuple2(self) -> None:
        self.stack[-2:] = [self._tuple(self.stack[-2:])]

    def load_tuple3(self) -> None:
        self.stack[-3:] = [self._tuple(self.stack[-3:])]

    def load_bytearray8(self) -> None:
        (length,) = struct.unpack("<Q", self.read(8))
        if length > self._size:
            raise pickle.UnpicklingError("BYTEARRAY8 longer than the pickle")
        data = self.read(length)
        if len(data) != length:
            raise pickle.UnpicklingError("pickle exhausted in BYTEARRAY8")
        self.append(bytearray(data))

    def _spend(self, units: int) -> None:
        self._allocations += units
        if self._allocations > MAX_ALLOCATIONS:
            raise MemoryError(
                f"the pickle makes over {MAX_ALLOCATIONS} containers or memo entries"
            )

    for _name, _units in [
        ("EMPTY_LIST", 1),
        ("EMPTY_DICT", 1),
        ("EMPTY_SET", 4),
        ("MARK", 1),
        ("MEMOIZE", 1),
        ("PUT", 1),
        ("LONG_BINPUT", 1),
    ]:
        dispatch[_opcode(_name)] = _spending(dispatch[_opcode(_name)], _units)

    for _name, _method in [
        ("STOP", load_stop),
        ("FRAME", load_frame),
        ("REDUCE", load_reduce),
        ("NEWOBJ", load_newobj),
        ("NEWOBJ_EX", load_newobj_ex),
        ("BUILD", load_build),
        ("APPEND", load_append),
        ("APPENDS", load_appends),
        ("SETITEM", load_setitem),
        ("SETITEMS", load_setitems),
        ("ADDITEMS", load_additems),
        ("TUPLE", load_tuple),
        ("TUPLE1", load_tuple1),
        ("TUPLE2", load_tuple2),
        ("TUPLE3", load_tuple3),
        ("BYTEARRAY8", load_bytearray8),
        ("INST", _refuse),
        ("OBJ", _refuse),
        ("EXT1", _refuse),
        ("EXT2", _refuse),
        ("EXT4", _refuse),
        ("NEXT_BUFFER", _refuse),
        ("READONLY_BUFFER", _refuse),
        ("PERSID", _refusePersistent),
        ("BINPERSID", _refusePersistent),
    ]:
        dispatch[_opcode(_name)] = _method
    del _name, _method, _units


def _describe(value: Any) -> str:
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    name = getattr(value, "__qualname__", None)
    if isinstance(name, str):
        return f"{getattr(value, '__module__', '?')}.{name}"
    return f"a {type(value).__name__}"


def requestProtocol(data: bytes) -> int:
    """
    The protocol a request pickle was written in: its C{PROTO} opcode's
    argument, or 0 when it has none (protocols 0 and 1), at most
    C{pickle.HIGHEST_PROTOCOL}.
    """
    if len(data) >= 2 and data[0] == pickle.PROTO[0]:
        return min(data[1], pickle.HIGHEST_PROTOCOL)
    return 0


def loadRestricted(
    data: bytes, trusted: Mapping[tuple[str, str], Any] | None = None
) -> Any:
    """
    Unpickle C{data} with L{RestrictedUnpickler}.
    """
    return RestrictedUnpickler(data, trusted).load()


def builtinException(error: BaseException) -> Exception:
    """
    The nearest builtin exception to C{error}, with its message, so that
    any client can unpickle it: C{ZeroDivisionError} stays itself, a
    subclass of C{ValueError} from some library becomes a C{ValueError}.
    """
    message = str(error)
    for kind in type(error).__mro__:
        if (
            kind.__module__ == "builtins"
            and isinstance(kind, type)
            and issubclass(kind, Exception)
        ):
            try:
                return kind(message)  # type: ignore[no-any-return]
            except TypeError:
                continue
    return RuntimeError(message)


def resolveName(spec: str) -> Any:
    """
    Import C{MODULE:QUALNAME} and return the object it names.

    @raise ValueError: when it cannot be found, naming it.
    """
    import importlib

    module, sep, qualname = spec.partition(":")
    if not sep or not module or not qualname:
        raise ValueError(f"expected MODULE:QUALNAME, not {spec!r}")
    try:
        value: Any = importlib.import_module(module)
        for part in qualname.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot find {spec!r}: {error}") from error
    return value


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


# Framing.


class FrameReceiver(Protocol):
    """
    Split a stream into C{multiprocessing.connection} frames, however its
    bytes are chunked.

    @ivar maxFrameLength: the largest frame accepted now; a longer header
        calls L{frameTooLong} before any of its body is read.
    """

    maxFrameLength = HANDSHAKE_MAX_BYTES
    transport: Any

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._holding = False
        self._closing = False
        self._delivering = False

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        self._deliverFrames()

    def _deliverFrames(self) -> None:
        if self._delivering:
            return
        self._delivering = True
        buffer = self._buffer
        offset = 0
        try:
            while not self._holding and not self._closing:
                available = len(buffer) - offset
                if available < 4:
                    break
                (length,) = struct.unpack_from("!i", buffer, offset)
                header = 4
                if length == -1:
                    if available < 12:
                        break
                    (length,) = struct.unpack_from("!Q", buffer, offset + 4)
                    header = 12
                elif length < 0:
                    self.badFrame(f"negative frame length {length}")
                    return
                if length > self.maxFrameLength:
                    self.badFrame(
                        f"frame of {length} bytes over the limit of "
                        f"{self.maxFrameLength}"
                    )
                    return
                if available < header + length:
                    break
                frame = bytes(buffer[offset + header : offset + header + length])
                offset += header + length
                self.frameReceived(frame)
        finally:
            del buffer[:offset]
            self._delivering = False

    def holdFrames(self, holding: bool) -> None:
        """
        Stop (C{True}) or restart (C{False}) delivering frames; bytes
        received meanwhile wait in the buffer.
        """
        self._holding = holding
        if not holding:
            self._deliverFrames()

    def sendFrame(self, data: bytes) -> None:
        """
        Send one frame.
        """
        self.transport.write(encodeFrameHeader(len(data)) + data)

    def frameReceived(self, frame: bytes) -> None:
        """
        One whole frame arrived.
        """
        raise NotImplementedError

    def badFrame(self, reason: str) -> None:
        """
        A frame header was negative or over the limit: stop reading and close.
        """
        self._closing = True
        self.transport.loseConnection()


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
            self.sendFrame(CHALLENGE + self._challenge)

    def _ready(self) -> None:
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
        result = self.factory.process(frame, self.peer)
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
    """

    protocol = ObjectsServerProtocol  # type: ignore[assignment]
    noisy = False
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        handler: Callable[[Any], Any] = echoHandler,
        authkey: bytes | None = None,
        allowed: Mapping[tuple[str, str], Any] | None = None,
        maxBytes: int = DEFAULT_MAX_BYTES,
        maxPending: int = DEFAULT_MAX_PENDING,
        threadPool: Any = None,
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
        Pickle a reply in C{protocol}; an exception (raised by the handler or
        by pickling) becomes its nearest builtin exception. Names are not
        mapped to Python 2's (C{fix_imports=False}), so that a
        C{PermissionError} stays one in protocols 0 to 2.
        """
        if isinstance(result, BaseException):
            result = builtinException(result)
        try:
            return pickle.dumps(result, protocol, fix_imports=False)
        except Exception as error:
            return pickle.dumps(builtinException(error), protocol, fix_imports=False)
