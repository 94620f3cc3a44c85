"""
A client made of the standard library's C{multiprocessing.connection} alone,
run by pyenv's python3.11, 3.12 and 3.13 in the integration tests.

    python3.X tests/services/objects/mpclient.py PORT < requests

The authkey comes from C{$MPCLIENT_AUTHKEY} (hex), none when unset. Each
line of standard input is one request: C{obj EXPRESSION} sends that object
with C{Connection.send}, C{raw HEX} sends those bytes with C{send_bytes}
(hostile pickles), C{pipe N} sends the numbers 0 to N-1 before reading any
reply. Each reply is printed on a line: C{repr()} of a value,
C{TYPE: MESSAGE} of an exception; C{closed} when the server closes.
"""

import datetime
import decimal
import fractions
import os
import sys
import uuid
from multiprocessing.connection import Client

NAMES = {
    "datetime": datetime,
    "decimal": decimal,
    "fractions": fractions,
    "uuid": uuid,
}


def show(reply):
    if isinstance(reply, BaseException):
        return f"{type(reply).__name__}: {reply}"
    return repr(reply)


def main():
    port = int(sys.argv[1])
    key = os.environ.get("MPCLIENT_AUTHKEY")
    authkey = bytes.fromhex(key) if key else None
    print(f"python {sys.version_info[0]}.{sys.version_info[1]}", flush=True)
    try:
        conn = Client(("127.0.0.1", port), authkey=authkey)
    except Exception as error:
        print(f"connect failed: {type(error).__name__}", flush=True)
        return
    for line in sys.stdin:
        kind, _, argument = line.strip().partition(" ")
        count = 1
        try:
            if kind == "obj":
                conn.send(eval(argument, NAMES))
            elif kind == "raw":
                conn.send_bytes(bytes.fromhex(argument))
            elif kind == "pipe":
                count = int(argument)
                for n in range(count):
                    conn.send(n)
            replies = [conn.recv() for _ in range(count)]
        except (EOFError, OSError):
            print("closed", flush=True)
            return
        if kind == "pipe":
            print("in order" if replies == list(range(count)) else replies)
        else:
            print(show(replies[0]), flush=True)
    conn.close()


main()
