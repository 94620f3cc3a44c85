# -*- test-case-name: tests.services.objects.test_objects -*-
"""
Replies a requester can read: which exceptions and names a reply may carry
(L{netd.services.objects.processing.encodeReply} pickles it).

A request pickled in protocol 2 or lower may come from Python 2 (whose
C{multiprocessing.connection} pickles in protocol 2): its reply is pickled
with C{fix_imports=True}, so that Python 3's names reach it under Python 2's
(C{builtins.set} as C{__builtin__.set}, C{bytes} through C{_codecs.encode}),
and an exception is one Python 2 has (L{replyException}). A Python 3 client
reads such a pickle as well, mapping the names back.
"""

from __future__ import annotations

from netd.services.objects.unpickling import builtinException

#: The builtin exceptions both Python 2.7 and 3 have under the same name.
PYTHON2_EXCEPTIONS = frozenset(
    {
        "ArithmeticError",
        "AssertionError",
        "AttributeError",
        "BufferError",
        "EOFError",
        "Exception",
        "FloatingPointError",
        "ImportError",
        "IndexError",
        "KeyError",
        "LookupError",
        "MemoryError",
        "NameError",
        "NotImplementedError",
        "OSError",
        "OverflowError",
        "ReferenceError",
        "RuntimeError",
        "StopIteration",
        "SyntaxError",
        "SystemError",
        "TypeError",
        "UnboundLocalError",
        "UnicodeError",
        "ValueError",
        "ZeroDivisionError",
    }
)

#: The highest pickle protocol Python 2 reads.
PYTHON2_PROTOCOL = 2


def replyException(error: BaseException, protocol: int) -> Exception:
    """
    The exception a reply carries for C{error}: the nearest builtin one
    (L{builtinException}), message kept; for a protocol Python 2 may have
    sent (2 or lower), the nearest one Python 2 has too, so that
    C{PermissionError} and C{ConnectionResetError} become C{OSError},
    C{RecursionError} a C{RuntimeError}, C{ModuleNotFoundError} an
    C{ImportError}.

    @param error: what the handler raised, or what went wrong before it.
    @param protocol: the reply's pickle protocol.
    """
    nearest = builtinException(error)
    if protocol > PYTHON2_PROTOCOL:
        return nearest
    for kind in type(nearest).__mro__:
        if kind.__name__ in PYTHON2_EXCEPTIONS:
            return kind(str(nearest))  # type: ignore[no-any-return]
    return Exception(str(nearest))
