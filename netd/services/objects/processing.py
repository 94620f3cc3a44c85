# -*- test-case-name: tests.services.objects.test_pool -*-
"""
One objects request, from its frame to its reply frame: decode with
L{RestrictedUnpickler}, call the handler, encode the reply. Used in netd's
worker processes (L{netd.services.objects.worker}) and, for requests
L{isCheap} proves small, in the reactor's thread. Imports no reactor.

Also L{isCheap}: the scan that decides which requests may skip the worker.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable, Mapping
from typing import Any

from netd.services.objects.replies import PYTHON2_PROTOCOL, replyException
from netd.services.objects.unpickling import (
    PickleRefusedError,
    loadRestricted,
    requestProtocol,
)

DEFAULT_MAX_REPLY_BYTES = 16 * 1024 * 1024

INLINE_MAX_BYTES = 4096
"""
Requests up to this size whose opcodes L{isCheap} approves are handled in
the reactor's thread, without the hop to a worker process.
"""


class RequestOutcome:
    """
    What processing one request gave.

    @ivar reply: the reply pickle (a value, or an error as a builtin
        exception).
    @ivar refusal: why the unpickler refused the request (for the log), or
        L{None}.
    @ivar exhausted: whether the request ran out of memory (a worker then
        replaces itself).
    @ivar failed: whether the reply carries an exception.
    """

    __slots__ = ("reply", "refusal", "exhausted", "failed")

    def __init__(
        self,
        reply: bytes,
        refusal: str | None = None,
        exhausted: bool = False,
        failed: bool = False,
    ) -> None:
        self.reply = reply
        self.refusal = refusal
        self.exhausted = exhausted
        self.failed = failed


def encodeReply(
    result: Any,
    protocol: int,
    maxBytes: int = DEFAULT_MAX_REPLY_BYTES,
    unpicklable: Callable[[], None] | None = None,
) -> bytes:
    """
    Pickle a reply in C{protocol}, in a form the requester can read
    (L{netd.services.objects.replies}: for protocol 2 or lower, names and
    exceptions Python 2 has too). An exception, raised by the handler or by
    pickling, becomes L{replyException}'s, its message bounded. A reply over
    C{maxBytes} is replaced by a C{ValueError} saying so.

    @param unpicklable: called when a value (not an exception) cannot be
        pickled and an error is sent instead.
    """
    fixImports = protocol <= PYTHON2_PROTOCOL
    if isinstance(result, BaseException):
        result = replyException(result, protocol)
    try:
        reply = pickle.dumps(result, protocol, fix_imports=fixImports)
    except Exception as failed:
        if unpicklable is not None and not isinstance(result, BaseException):
            unpicklable()
        reply = pickle.dumps(
            replyException(failed, protocol), protocol, fix_imports=fixImports
        )
    if len(reply) > maxBytes:
        tooLarge = ValueError(
            f"the reply of {len(reply)} bytes is over the limit of {maxBytes}"
        )
        reply = pickle.dumps(
            replyException(tooLarge, protocol), protocol, fix_imports=fixImports
        )
    return reply


def processFrame(
    frame: bytes,
    handler: Callable[[Any], Any],
    allowed: Mapping[tuple[str, str], Any],
    maxReplyBytes: int = DEFAULT_MAX_REPLY_BYTES,
    loads: Callable[..., Any] | None = None,
) -> RequestOutcome:
    """
    Turn one request frame into its reply. Never raises (but for
    C{BaseException}s that are not C{Exception}s).

    @param loads: how to unpickle, L{loadRestricted} by default.
    """
    protocol = requestProtocol(frame)
    refusal = None
    exhausted = False
    try:
        if loads is None:
            request = loadRestricted(frame, allowed)
        else:
            request = loads(frame)
    except PickleRefusedError as error:
        refusal = str(error)
        result: Any = error
    except (RecursionError, MemoryError) as error:
        exhausted = isinstance(error, MemoryError)
        result = error
    except Exception as error:
        result = ValueError(f"not a valid pickle: {error}")
    else:
        try:
            result = handler(request)
        except MemoryError as error:
            exhausted = True
            result = error
        except Exception as error:
            result = error
    try:
        reply = encodeReply(result, protocol, maxReplyBytes)
    except MemoryError as error:
        exhausted = True
        reply = encodeReply(error, protocol, maxReplyBytes)
    return RequestOutcome(reply, refusal, exhausted, isinstance(result, BaseException))


# What may skip the worker.

_NO_ARGUMENT = {
    pickle.STOP,
    pickle.MARK,
    pickle.POP,
    pickle.POP_MARK,
    pickle.NONE,
    pickle.NEWTRUE,
    pickle.NEWFALSE,
    pickle.EMPTY_TUPLE,
    pickle.EMPTY_LIST,
    pickle.EMPTY_DICT,
    pickle.EMPTY_SET,
    pickle.TUPLE,
    pickle.TUPLE1,
    pickle.TUPLE2,
    pickle.TUPLE3,
    pickle.APPEND,
    pickle.APPENDS,
    pickle.SETITEM,
    pickle.SETITEMS,
    pickle.ADDITEMS,
    pickle.FROZENSET,
    pickle.MEMOIZE,
}
_FIXED = {
    pickle.PROTO: 1,
    pickle.FRAME: 8,
    pickle.BININT: 4,
    pickle.BININT1: 1,
    pickle.BININT2: 2,
    pickle.BINFLOAT: 8,
    pickle.BINPUT: 1,
}
_SIZED1 = {
    pickle.SHORT_BINUNICODE,
    pickle.SHORT_BINBYTES,
    pickle.SHORT_BINSTRING,
    pickle.LONG1,
}
_SIZED4 = {pickle.BINUNICODE, pickle.BINBYTES, pickle.BINSTRING}

_REFUSED = -9
_ARGUMENT_LENGTH = [_REFUSED] * 256
for _opcodes, _length in (
    (_NO_ARGUMENT, 0),
    (_SIZED1, -1),
    (_SIZED4, -4),
):
    for _opcode in _opcodes:
        _ARGUMENT_LENGTH[_opcode[0]] = _length
for _opcode, _length in _FIXED.items():
    _ARGUMENT_LENGTH[_opcode[0]] = _length
_ARGUMENT_LENGTH[pickle.STOP[0]] = -2
_TABLE = tuple(_ARGUMENT_LENGTH)
del _opcodes, _opcode, _length, _ARGUMENT_LENGTH

_UINT32 = struct.Struct("<I")


def isCheap(frame: bytes, maxBytes: int = INLINE_MAX_BYTES) -> bool:
    """
    Whether unpickling C{frame} with the C{pickle} module's C unpickler,
    echoing it, and pickling the reply is provably cheap, so that it may run
    in the reactor's thread without a worker's time and memory limits.

    It is when the frame is at most C{maxBytes} long and uses only these
    opcodes: C{PROTO}, C{FRAME}, C{STOP}, C{MARK}, C{POP}, C{POP_MARK},
    constants (C{NONE}, booleans), binary ints and floats, C{LONG1} (at most
    255 bytes), length-prefixed str and bytes, the tuple, list, dict, set
    and frozenset opcodes, C{MEMOIZE} and C{BINPUT} (memo index below 256).

    The bound: such a pickle names no global, so nothing but builtin
    containers, numbers and strings is built, and calls nothing; without
    C{GET}, C{DUP} and text opcodes, every object it builds is used at most
    once, so the objects form a tree of at most N nodes for N bytes (no
    shared substructure whose hash or comparison is exponential, no text
    number of quadratic parsing cost). The costliest thing left is hash
    collisions: K colliding keys in a set or dict cost O(K^2) comparisons,
    each at most as long as the smaller key; the keys' total size is at most
    N, so the whole is O(K * N) <= O(N^2) elementary steps: for N = 4 KiB
    under a few milliseconds (measured in the tests' worst case). Tuples
    nest at most N deep; the pickler that writes the reply refuses deeper
    than the recursion limit with a C{RecursionError}.
    """
    size = len(frame)
    if size > maxBytes or not size or frame[-1] != 0x2E:  # STOP
        return False
    table = _TABLE
    offset = 0
    try:
        while True:
            length = table[frame[offset]]
            offset += 1
            if length >= 0:
                offset += length
            elif length == -1:
                offset += 1 + frame[offset]
            elif length == -4:
                offset += 4 + _UINT32.unpack_from(frame, offset)[0]
            elif length == -2:  # STOP
                return offset == size
            else:
                return False
    except (IndexError, struct.error):
        return False
