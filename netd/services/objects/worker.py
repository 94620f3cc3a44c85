# -*- test-case-name: tests.services.objects.test_pool -*-
"""
An objects worker process, as L{netd.services.objects.pool} starts it:

    python -m netd.services.objects.worker CONFIG_JSON

It reads request frames from descriptor 3 and writes one reply frame per
request to descriptor 4, in the frame format of
C{multiprocessing.connection} (L{netd.services.objects.wire}). Its first
frame out is empty: ready. Each reply frame is one flags byte, then, when
the request was refused by the unpickler (flag 1), a 4-byte big-endian
length and that many bytes of UTF-8 reason, then the reply pickle. Flag 2
says that the worker exits after this reply (it ran out of memory).

Limits: C{RLIMIT_AS} of C{memory} bytes for the whole process, and before
each request a soft C{RLIMIT_CPU} of the CPU time used so far plus
C{timeout} and a second (the parent's watchdog normally kills first).
The process ends at the end of descriptor 3 (netd stopped or died).
"""

from __future__ import annotations

import json
import math
import resource
import struct
import sys
from multiprocessing.connection import Connection
from typing import Any

REFUSED = 1
EXITING = 2
FAILED = 4


def limitMemory(limit: int) -> None:
    """
    Set C{RLIMIT_AS} (no more than the hard limit allows).
    """
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def limitCpu(seconds: float) -> None:
    """
    Allow C{seconds} more of CPU time (a soft C{RLIMIT_CPU}: C{SIGXCPU}
    ends the process).
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def encodeOutcome(
    reply: bytes, refusal: str | None, exhausted: bool, failed: bool = False
) -> bytes:
    """
    A reply frame's body, as the parent reads it with L{decodeOutcome}.

    @param failed: whether the reply carries an exception.
    """
    flags = (
        (REFUSED if refusal is not None else 0)
        | (EXITING if exhausted else 0)
        | (FAILED if failed else 0)
    )
    if refusal is None:
        return bytes([flags]) + reply
    reason = refusal.encode("utf-8", "replace")[:1024]
    return bytes([flags]) + struct.pack("!I", len(reason)) + reason + reply


def decodeOutcome(body: bytes) -> tuple[bytes, str | None, bool, bool]:
    """
    The reply, refusal reason, exiting flag and failed flag (the reply
    carries an exception) from a reply frame's body.

    @raise ValueError: for a malformed body.
    """
    if not body:
        raise ValueError("empty reply frame")
    flags = body[0]
    exiting, failed = bool(flags & EXITING), bool(flags & FAILED)
    if not flags & REFUSED:
        return body[1:], None, exiting, failed
    if len(body) < 5:
        raise ValueError("short reply frame")
    (length,) = struct.unpack_from("!I", body, 1)
    reason = body[5 : 5 + length].decode("utf-8", "replace")
    return body[5 + length :], reason, exiting, failed


def main(argv: list[str]) -> int:
    """
    Serve requests until the end of descriptor 3.
    """
    config: dict[str, Any] = json.loads(argv[1])
    requests = Connection(3, writable=False)
    replies = Connection(4, readable=False)
    # A handler's print() must not reach the reply pipe.
    sys.stdout = sys.stderr

    from netd.services.objects.processing import processFrame
    from netd.services.objects.server import HANDLERS
    from netd.services.objects.unpickling import resolveName

    handler = HANDLERS.get(config["handler"]) or resolveName(config["handler"])
    allowed = {tuple(name.split(":", 1)): resolveName(name) for name in config["allow"]}
    maxReply = int(config["maxReplyBytes"])
    timeout = float(config["timeout"])
    maxBytes = int(config["maxBytes"])
    try:
        limitMemory(int(config["memory"]))
    except (OSError, ValueError) as error:
        print(f"cannot limit this worker's memory: {error}", file=sys.stderr)
    replies.send_bytes(b"")
    while True:
        try:
            frame = requests.recv_bytes(maxBytes + 16)
        except (EOFError, OSError):
            return 0
        try:
            limitCpu(timeout)
        except (OSError, ValueError):
            pass
        outcome = processFrame(frame, handler, allowed, maxReply)
        replies.send_bytes(
            encodeOutcome(
                outcome.reply, outcome.refusal, outcome.exhausted, outcome.failed
            )
        )
        if outcome.exhausted:
            return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:
        sys.exit(0)
