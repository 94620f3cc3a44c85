# ruff: noqa: UP004, UP010, UP024, UP031 (this file must stay Python 2.7)
"""
A client made of the standard library's C{multiprocessing.connection} alone,
run by pyenv's python2.7 and python3.6 to 3.13 in the integration tests (so
it is written in the Python both read).

    pythonX.Y tests/services/objects/mpclient.py PORT < requests

The authkey comes from C{$MPCLIENT_AUTHKEY} (hex), none when unset. Each
line of standard input is one request: C{obj EXPRESSION} sends that object
with C{Connection.send}, C{raw HEX} sends those bytes with C{send_bytes}
(hostile pickles), C{pipe N} sends the numbers 0 to N-1 before reading any
reply. Each reply is printed on a line: C{repr()} of a value,
C{TYPE: MESSAGE} of an exception; C{closed} when the server closes.
"""

from __future__ import print_function

import binascii
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


def say(text):
    print(text)
    sys.stdout.flush()


def show(reply):
    if isinstance(reply, BaseException):
        return "%s: %s" % (type(reply).__name__, reply)
    return repr(reply)


def main():
    port = int(sys.argv[1])
    key = os.environ.get("MPCLIENT_AUTHKEY")
    authkey = binascii.unhexlify(key) if key else None
    say("python %d.%d" % sys.version_info[:2])
    try:
        conn = Client(("127.0.0.1", port), authkey=authkey)
    except Exception as error:
        say("connect failed: " + type(error).__name__)
        return
    for line in sys.stdin:
        kind, _, argument = line.strip().partition(" ")
        count = 1
        try:
            if kind == "obj":
                conn.send(eval(argument, NAMES))
            elif kind == "raw":
                conn.send_bytes(binascii.unhexlify(argument))
            elif kind == "pipe":
                count = int(argument)
                for n in range(count):
                    conn.send(n)
            replies = [conn.recv() for _ in range(count)]
        except (EOFError, IOError, OSError):
            say("closed")
            return
        if kind == "pipe":
            say("in order" if replies == list(range(count)) else replies)
        else:
            say(show(replies[0]))
    conn.close()


main()
