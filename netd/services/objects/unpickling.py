# -*- test-case-name: tests.services.objects.test_objects -*-
"""
The objects service's unpickling policy: an unpickler that never runs what
a client sends, and builds only an allowlist of plain data types.

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
import io
import pickle
import re
import struct
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from twisted.logger import Logger

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
        # Python 2's str (STRING opcodes, which Python 3 never writes) is
        # read as Latin-1, as the stdlib advises for Python 2's datetimes.
        super().__init__(self._data, encoding="latin1")
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
    The message is cut to L{MAX_ERROR_MESSAGE} characters.
    """
    message = boundedMessage(str(error))
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


MAX_ERROR_MESSAGE = 1024
"""Characters of an error reply's message: the rest is cut (a bad 4 MiB
C{FLOAT} line would otherwise come back quoted in a 36 MiB reply)."""


def boundedMessage(message: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """
    C{message}, cut to C{limit} characters, saying how long it was.
    """
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message)} characters in all)"


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
