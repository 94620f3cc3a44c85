"""
End-to-end tests of the objects service over loopback: the standard
library's C{multiprocessing.connection.Client} of Python 3.11, 3.12 and 3.13
(as subprocesses) against netd in this process and as C{twistd -n netd}.
"""

from __future__ import annotations

import datetime
import decimal
import fractions
import glob
import os
import pickle
import shutil
import sys
import uuid
from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import SkipTest, TestCase

from netd.services.objects.client import connectObjects
from netd.services.objects.pool import WorkerPool
from netd.services.objects.server import ObjectsFactory, addHandler, echoHandler
from netd.services.objects.unpickling import requestProtocol
from netd.services.objects.wire import CHALLENGE
from tests.common import (
    BIN,
    PROJECT,
    TWISTD,
    CollectUntilClosed,
    runCommand,
    runNetd,
)
from tests.services.objects.test_objects import Reduce, hostilePickles

MPCLIENT = os.path.join(PROJECT, "tests", "services", "objects", "mpclient.py")
PYENV_ROOT = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))


def stdlibPython(version: str) -> str:
    """
    The interpreter of pyenv's Python C{version} (C{"3.12"}); for C{"2.7"},
    also C{python2.7} on C{$PATH} (C{make python2} installs one).
    """
    found = sorted(glob.glob(f"{PYENV_ROOT}/versions/{version}.*/bin/python{version}"))
    if not found and version == "2.7" and shutil.which("python2.7"):
        found = [str(shutil.which("python2.7"))]
    if not found:
        raise SkipTest(
            f"NO PYTHON {version}: pyenv's Python {version} is not installed"
            + (" (make python2 installs it)" if version == "2.7" else "")
        )
    return found[-1]


def deferredSum(request: Any) -> defer.Deferred[Any]:
    """
    A handler that replies a little later, through the reactor.
    """
    return task.deferLater(_reactor, 0.01, addHandler, request)


def slowSquare(request: int) -> int:
    """
    A CPU-bound handler, for worker processes.
    """
    total = 0
    for _ in range(request):
        total += request
    return total


class StdlibClientMixin:
    """
    Run the stdlib client script against a port.
    """

    versions = ("3.11", "3.12", "3.13")
    olderVersions = ("3.6", "3.7", "3.8", "3.9", "3.10")

    def listen(self: Any, factory: ObjectsFactory) -> int:
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @defer.inlineCallbacks
    def stdlibClient(
        self: Any,
        version: str,
        port: int,
        lines: list[str],
        authkey: bytes | None = None,
    ) -> Any:
        """
        Run the stdlib client of Python C{version}; fire with its output
        lines (the first naming its version).
        """
        env = {"PATH": os.environ.get("PATH", "")}
        if authkey is not None:
            env["MPCLIENT_AUTHKEY"] = authkey.hex()
        out, err, code = yield runCommand(
            stdlibPython(version),
            MPCLIENT,
            str(port),
            env=env,
            stdin="".join(line + "\n" for line in lines).encode(),
        )
        self.assertEqual((code, err), (0, b""))
        output = out.decode().splitlines()
        self.assertEqual(output[0], f"python {version}")
        return output[1:]


class StdlibClientTests(StdlibClientMixin, TestCase):
    """
    C{multiprocessing.connection.Client} of three Python versions against
    L{ObjectsFactory} listening in this process.
    """

    @defer.inlineCallbacks
    def test_addWithAuthkey(self) -> defer.Generator:
        """
        Each version passes the mutual handshake and gets sums of lists and
        strings, and a C{TypeError} for a bad pair.
        """
        port = self.listen(ObjectsFactory(_reactor, addHandler, authkey=b"s3cret"))
        for version in self.versions:
            output = yield self.stdlibClient(
                version,
                port,
                ["obj ([1,2,3],[4,5])", "obj ('abc','def')", "obj (1,'x')"],
                authkey=b"s3cret",
            )
            self.assertEqual(output[:2], ["[1, 2, 3, 4, 5]", "'abcdef'"])
            self.assertTrue(output[2].startswith("TypeError: unsupported operand"))

    @defer.inlineCallbacks
    def test_olderVersions(self) -> defer.Generator:
        """
        Python 3.6 to 3.10 (legacy handshake only) are clients too.
        """
        port = self.listen(ObjectsFactory(_reactor, addHandler, authkey=b"s3cret"))
        for version in self.olderVersions:
            output = yield self.stdlibClient(
                version, port, ["obj ([1], [2])"], authkey=b"s3cret"
            )
            self.assertEqual(output, ["[1, 2]"])
            output = yield self.stdlibClient(
                version, port, ["obj ([1], [2])"], authkey=b"wrong"
            )
            self.assertEqual(output, ["connect failed: AuthenticationError"])

    @defer.inlineCallbacks
    def test_wrongAuthkey(self) -> defer.Generator:
        """
        Each version with a wrong key fails with C{AuthenticationError}.
        """
        port = self.listen(ObjectsFactory(_reactor, addHandler, authkey=b"s3cret"))
        for version in self.versions:
            output = yield self.stdlibClient(
                version, port, ["obj (1, 2)"], authkey=b"wrong"
            )
            self.assertEqual(output, ["connect failed: AuthenticationError"])

    @defer.inlineCallbacks
    def test_noAuthkey(self) -> defer.Generator:
        """
        Without an authkey on either side the handshake is skipped; plain
        data of every kind comes back equal.
        """
        port = self.listen(ObjectsFactory(_reactor, echoHandler))
        values = [
            "datetime.datetime(2024, 2, 29, 1, 2, 3, tzinfo=datetime.timezone.utc)",
            "decimal.Decimal('1.10')",
            "fractions.Fraction(1, 3)",
            "uuid.UUID(int=5)",
            "{'a': {1, 2}, 'b': frozenset(), 'c': b'x', 'd': bytearray(b'y')}",
        ]
        for version in self.versions:
            output = yield self.stdlibClient(
                version, port, [f"obj {value}" for value in values]
            )
            names = {"datetime": datetime, "decimal": decimal}
            names.update(fractions=fractions, uuid=uuid)
            self.assertEqual(output, [repr(eval(value, names)) for value in values])

    @defer.inlineCallbacks
    def test_hostilePickles(self) -> defer.Generator:
        """
        Every hostile pickle gets an exception reply, the connection keeps
        serving, and the marker file the payloads would create never appears.
        """
        marker = os.path.abspath(self.mktemp())
        port = self.listen(ObjectsFactory(_reactor, addHandler, authkey=b"k"))
        hostile = hostilePickles(marker)
        output = yield self.stdlibClient(
            "3.12",
            port,
            [f"raw {data.hex()}" for data in hostile.values()] + ["obj (1, 2)"],
            authkey=b"k",
        )
        self.assertEqual(len(output), len(hostile) + 1)
        expected = {
            "deep tuple key": "RecursionError",
            "BYTEARRAY8 bomb": "ValueError",
            "allocation bomb": "MemoryError",
        }
        py2 = {"PermissionError": "OSError", "RecursionError": "RuntimeError"}
        for (name, data), line in zip(hostile.items(), output, strict=False):
            kind = expected.get(name, "PermissionError")
            if requestProtocol(data) <= 2:
                # Python 2 may have sent it: the nearest exception it has.
                kind = py2.get(kind, kind)
            self.assertTrue(line.startswith(f"{kind}: "), (name, line))
        self.assertEqual(output[-1], "3")
        self.assertFalse(os.path.exists(marker))

    @defer.inlineCallbacks
    def test_markerPayloadWorksOnPlainPickle(self) -> defer.Generator:
        """
        The C{os.system} payload does create the marker when given to plain
        C{pickle.loads}: the test above would see it if netd ran it.
        """
        marker = os.path.abspath(self.mktemp())
        payload = hostilePickles(marker)["os.system"]
        yield runCommand(
            sys.executable,
            "-c",
            "import pickle, sys; pickle.loads(bytes.fromhex(sys.argv[1]))",
            payload.hex(),
        )
        self.assertTrue(os.path.exists(marker))

    @defer.inlineCallbacks
    def test_deepListPipelinedAndOversize(self) -> defer.Generator:
        """
        A 100,000-deep list gets a C{RecursionError}; 200 pipelined requests
        come back in order; an over-size frame closes the connection.
        """
        port = self.listen(ObjectsFactory(_reactor, echoHandler, maxBytes=300_000))
        deep = b"\x80\x04" + b"]" * 100_000 + b"a" * 99_999 + b"."
        output = yield self.stdlibClient(
            "3.13",
            port,
            [f"raw {deep.hex()}", "pipe 200", "obj b'x' * 400_000", "obj 1"],
        )
        self.assertEqual(output[0][:16], "RecursionError: ")
        self.assertEqual(output[1:], ["in order", "closed"])

    @defer.inlineCallbacks
    def test_deferredAndPooledHandlers(self) -> defer.Generator:
        """
        A handler returning a Deferred (run in netd's thread), and one run
        in worker processes, both answer.
        """
        port = self.listen(ObjectsFactory(_reactor, deferredSum))
        output = yield self.stdlibClient("3.11", port, ["obj ([1], [2])"])
        self.assertEqual(output, ["[1, 2]"])
        name = "tests.services.objects.test_integration_objects:slowSquare"
        pool = WorkerPool(_reactor, name, size=1)
        self.addCleanup(pool.stop)
        port = self.listen(ObjectsFactory(_reactor, slowSquare, pool=pool))
        output = yield self.stdlibClient("3.11", port, ["obj 300", "pipe 3"])
        self.assertEqual(output, ["90000", "[0, 1, 4]"])
        self.assertEqual(pool.stats["requests"], 4)


class Python2ClientTests(StdlibClientMixin, TestCase):
    """
    Python 2.7's C{multiprocessing.connection.Client}, which pickles in
    protocol 2 and reads only Python 2's names, against L{ObjectsFactory}.
    """

    #: Requests, and the C{repr()} Python 2 prints of each echoed reply.
    echoed = {
        "obj set([1, 2])": "set([1, 2])",
        "obj frozenset([3])": "frozenset([3])",
        "obj frozenset()": "frozenset([])",
        "obj 1+2j": "(1+2j)",
        "obj 'abc'": "u'abc'",
        "obj u'caf\\xe9'": "u'caf\\xe9'",
        "obj bytearray(b'\\x00\\xff')": "bytearray(b'\\x00\\xff')",
        "obj 10**30": "1000000000000000000000000000000L",
        "obj {'a': [1, (2.5, set())], 3: {None: frozenset([True])}}": (
            "{u'a': [1, (2.5, set([]))], 3: {None: frozenset([True])}}"
        ),
        "obj datetime.datetime(2020, 1, 2, 3, 4, 5, 6)": (
            "datetime.datetime(2020, 1, 2, 3, 4, 5, 6)"
        ),
        "obj decimal.Decimal('1.10')": "Decimal('1.10')",
        "obj fractions.Fraction(1, 3)": "Fraction(1, 3)",
        "obj uuid.UUID(int=5)": "UUID('00000000-0000-0000-0000-000000000005')",
    }

    @defer.inlineCallbacks
    def test_echoedTypes(self) -> defer.Generator:
        """
        Sets, frozensets, complex numbers, text, bytes, big numbers, nested
        containers and the allowed library types come back to Python 2
        as what it sent (its C{str} as C{unicode}, as Python 3 reads it),
        with and without an authkey.
        """
        for authkey in (None, b"s3cret"):
            port = self.listen(ObjectsFactory(_reactor, echoHandler, authkey=authkey))
            output = yield self.stdlibClient(
                "2.7", port, list(self.echoed), authkey=authkey
            )
            self.assertEqual(output, list(self.echoed.values()))

    @defer.inlineCallbacks
    def test_bytesReply(self) -> defer.Generator:
        """
        Python 3's C{bytes} reach Python 2 as C{str}, empty ones too.
        """
        port = self.listen(ObjectsFactory(_reactor, bytesHandler, authkey=b"k"))
        output = yield self.stdlibClient(
            "2.7", port, ["obj u'ab'", "obj u''"], authkey=b"k"
        )
        self.assertEqual(output, ["'ab'", "''"])

    @defer.inlineCallbacks
    def test_errorReplies(self) -> defer.Generator:
        """
        Error replies are exceptions Python 2 has, message kept: a refused
        pickle's C{PermissionError} an C{OSError}, a handler's C{TypeError}
        itself, a C{RecursionError} a C{RuntimeError}; the connection goes
        on serving.
        """
        port = self.listen(ObjectsFactory(_reactor, addHandler, authkey=b"k"))
        system = pickle.dumps(Reduce(os.system, "true"), 2)
        deep = b"\x80\x02)" + b"\x85" * 1100 + b"."
        output = yield self.stdlibClient(
            "2.7",
            port,
            [f"raw {system.hex()}", "obj (1, 'x')", f"raw {deep.hex()}", "obj (1, 2)"],
            authkey=b"k",
        )
        self.assertEqual(len(output), 4, output)
        self.assertEqual(output[0], "OSError: global posix.system is not allowed")
        self.assertTrue(output[1].startswith("TypeError: unsupported operand"))
        self.assertTrue(output[2].startswith("RuntimeError: "), output[2])
        self.assertEqual(output[3], "3")

    @defer.inlineCallbacks
    def test_wrongAuthkey(self) -> defer.Generator:
        """
        Python 2 with a wrong key fails with C{AuthenticationError}.
        """
        port = self.listen(ObjectsFactory(_reactor, addHandler, authkey=b"k"))
        output = yield self.stdlibClient("2.7", port, ["obj (1, 2)"], authkey=b"no")
        self.assertEqual(output, ["connect failed: AuthenticationError"])


def bytesHandler(request: str) -> bytes:
    """
    Reply the request's text as UTF-8 bytes.
    """
    return request.encode("utf-8")


class NetdClientTests(TestCase):
    """
    L{netd.services.objects.client} against L{ObjectsFactory} over real TCP.
    """

    @defer.inlineCallbacks
    def test_calls(self) -> defer.Generator:
        """
        The Deferred-based client authenticates, pipelines calls and gets
        exceptions as failures.
        """
        port = _reactor.listenTCP(
            0, ObjectsFactory(_reactor, addHandler, authkey=b"k"), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", port.getHost().port)
        client = yield connectObjects(endpoint, b"k")
        self.addCleanup(client.transport.loseConnection)
        results = yield defer.gatherResults([client.call((n, n)) for n in range(50)])
        self.assertEqual(results, [2 * n for n in range(50)])
        with self.assertRaises(TypeError):
            yield client.call(("a", 1))


class HandshakeDeadlineTests(TestCase):
    """
    A client that never finishes the handshake is cut off, over real TCP.
    """

    @defer.inlineCallbacks
    def test_silentClient(self) -> defer.Generator:
        """
        A client that reads the challenge and answers nothing is closed
        once the handshake deadline passed; a client that answers is served.
        """
        factory = ObjectsFactory(_reactor, addHandler, authkey=b"k")
        factory.handshakeTimeout = 0.5
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", port.getHost().port)
        silent = CollectUntilClosed(halfClose=False)
        yield connectProtocol(endpoint, silent)
        received = yield silent.closed
        self.assertTrue(received[4:].startswith(CHALLENGE), received)
        client = yield connectObjects(endpoint, b"k")
        self.addCleanup(client.transport.loseConnection)
        self.assertEqual((yield client.call((1, 2))), 3)


class TwistdObjectsTests(StdlibClientMixin, TestCase):
    """
    C{twistd -n netd} serving objects.
    """

    @defer.inlineCallbacks
    def test_authkeyFileAndClients(self) -> defer.Generator:
        """
        With an authkey file, a stdlib client and C{netd-client objects}
        (key from C{$NETD_OBJECTS_AUTHKEY}) both reach the C{add} handler.
        """
        keyFile = self.mktemp()
        with open(keyFile, "w") as stream:
            stream.write("file key\n")
        netd = yield runNetd(
            self,
            "--services=objects",
            "--objects=tcp:0:interface=127.0.0.1",
            f"--objects-authkey-file={os.path.abspath(keyFile)}",
            "--objects-handler=add",
        )
        port = netd.port("objects")
        output = yield self.stdlibClient(
            "3.12", port, ["obj ([1,2,3],[4,5])"], authkey=b"file key"
        )
        self.assertEqual(output, ["[1, 2, 3, 4, 5]"])
        env = dict(os.environ, NETD_OBJECTS_AUTHKEY="file key")
        out, err, code = yield runCommand(
            os.path.join(BIN, "netd-client"),
            "objects",
            "--port",
            str(port),
            "('ab', 'cd')",
            env=env,
        )
        self.assertEqual((out, err, code), (b"'abcd'\n", b"", 0))

    @defer.inlineCallbacks
    def test_publicWithoutAuthkeyRefused(self) -> defer.Generator:
        """
        Listening on every interface without an authkey stops start-up with
        one line naming the endpoint, and no traceback.
        """
        env = {k: v for k, v in os.environ.items() if k != "NETD_OBJECTS_AUTHKEY"}
        env["PYTHONPATH"] = PROJECT
        out, err, code = yield runCommand(
            TWISTD,
            "--nodaemon",
            "--pidfile=",
            "netd",
            "--services=objects",
            "--objects=tcp:0",
            env=env,
        )
        self.assertNotEqual(code, 0)
        self.assertIn(b"objects would listen beyond loopback on 'tcp:0'", out + err)
        self.assertNotIn(b"Traceback", out + err)

    @defer.inlineCallbacks
    def test_missingAuthkeyFile(self) -> defer.Generator:
        """
        An unreadable authkey file stops start-up with one line.
        """
        out, err, code = yield runCommand(
            TWISTD,
            "--nodaemon",
            "--pidfile=",
            "netd",
            "--services=objects",
            "--objects=tcp:0:interface=127.0.0.1",
            "--objects-authkey-file=/nonexistent/key",
        )
        self.assertNotEqual(code, 0)
        self.assertIn(b"netd: objects: cannot read authkey file", out + err)
        self.assertNotIn(b"Traceback", out + err)


class KeyMistakeTests(TestCase):
    """
    C{netd-client objects} with the wrong key, or a key where the server has
    none (and the reverse), says so in one line and exits non-zero well
    within its C{--timeout}: no traceback, no hang.
    """

    def listen(self, authkey: bytes | None) -> int:
        factory = ObjectsFactory(_reactor, echoHandler, authkey=authkey)
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @defer.inlineCallbacks
    def client(self, port: int, key: str | None) -> defer.Generator:
        env = {k: v for k, v in os.environ.items() if k != "NETD_OBJECTS_AUTHKEY"}
        if key is not None:
            env["NETD_OBJECTS_AUTHKEY"] = key
        out, err, code = yield runCommand(
            os.path.join(BIN, "netd-client"),
            "objects",
            "--port",
            str(port),
            "--timeout",
            "2",
            "[1, 2]",
            env=env,
        )
        self.assertNotIn(b"Traceback", out + err)
        return out.decode(), err.decode(), code

    @defer.inlineCallbacks
    def test_wrongKey(self) -> defer.Generator:
        """
        The server refuses a digest made with another key: the client says
        that the server rejected its key.
        """
        port = self.listen(b"server key")
        out, err, code = yield self.client(port, "client key")
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            "netd-client: authentication failed: the server rejected our key: "
            "the keys differ\n",
        )

    @defer.inlineCallbacks
    def test_keyForKeylessServer(self) -> defer.Generator:
        """
        A server without a key sends no challenge: the client gives up after
        its handshake wait (here its 2-second C{--timeout}) and says why.
        """
        port = self.listen(None)
        out, err, code = yield self.client(port, "client key")
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            "netd-client: authentication failed: the server sent no challenge "
            "in 2 s: it has no authkey (connect without one) or is not an "
            "objects server\n",
        )

    @defer.inlineCallbacks
    def test_noKeyForKeyedServer(self) -> defer.Generator:
        """
        A client without a key meeting a server's challenge says that the
        server asks for one, instead of taking the challenge for a reply.
        """
        port = self.listen(b"server key")
        out, err, code = yield self.client(port, None)
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            "netd-client: authentication failed: the server asks for an authkey "
            "(give --authkey-file or set $NETD_OBJECTS_AUTHKEY)\n",
        )

    @defer.inlineCallbacks
    def test_rightKey(self) -> defer.Generator:
        """
        The same key on both sides works, and prints the reply.
        """
        port = self.listen(b"same key")
        out, err, code = yield self.client(port, "same key")
        self.assertEqual((out, err, code), ("[1, 2]\n", "", 0))
