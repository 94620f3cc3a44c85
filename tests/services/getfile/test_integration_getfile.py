"""
End-to-end: C{twistd -n netd} serving getfile as a subprocess, and
C{netd-client getfile} as another, over loopback.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from tests.common import BIN, TWISTD, runCommand, runNetd
from tests.services.getfile.test_getfile import Received

CLIENT = os.path.join(BIN, "netd-client")


class TwistdGetFileTests(TestCase):
    """
    netd run by twistd serves getfile from its root; netd-client fetches.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.root, "sub"))
        self.data = os.urandom(5 * 2**20 + 1)
        with open(os.path.join(self.root, "sub", "file.bin"), "wb") as stream:
            stream.write(self.data)
        self.out = os.path.abspath(self.mktemp())
        os.makedirs(self.out)

    def startNetd(self, *arguments: str, path: str | None = None) -> defer.Deferred:
        return runNetd(
            self,
            "--services",
            "getfile",
            "--getfile",
            "tcp:0:interface=127.0.0.1",
            *arguments,
            path=path,
        )

    @defer.inlineCallbacks
    def test_listeningLineNamesRoot(self) -> defer.Generator:
        """
        The listening line says which directory is served: the root given,
        or the directory netd was started in.
        """
        netd = yield self.startNetd("--getfile-root", self.root)
        port = netd.port("getfile")
        self.assertIn(
            f"getfile listening on TCP 127.0.0.1:{port}, serving "
            f"{os.path.realpath(self.root)}\n".encode(),
            netd.output,
        )
        started = os.path.abspath(self.mktemp())
        os.makedirs(started)
        netd = yield self.startNetd(path=started)
        self.assertIn(f"serving {os.path.realpath(started)}\n".encode(), netd.output)

    @defer.inlineCallbacks
    def test_clientDownloads(self) -> defer.Generator:
        """
        C{netd-client getfile} saves a file byte-identical, logged by netd;
        a refused path gives one line and exit status 1.
        """
        netd = yield self.startNetd("--getfile-root", self.root)
        port = str(netd.port("getfile"))
        out, err, code = yield runCommand(
            CLIENT, "getfile", "sub\\file.bin", "-p", port, path=self.out
        )
        self.assertEqual((code, err), (0, b""), out)
        with open(os.path.join(self.out, "file.bin"), "rb") as stream:
            self.assertEqual(stream.read(), self.data)
        self.assertEqual(os.listdir(self.out), ["file.bin"])

        out, err, code = yield runCommand(
            CLIENT, "getfile", "-p", port, "../../etc/passwd", path=self.out
        )
        self.assertEqual(code, 1)
        self.assertEqual(
            err, b"netd-client: the server refused '../../etc/passwd': 403 forbidden\n"
        )
        self.assertEqual(os.listdir(self.out), ["file.bin"])
        self.assertIn(b"'sub\\\\file.bin' (extended form, offset 0): sent", netd.output)

    @defer.inlineCallbacks
    def test_defaultRoot(self) -> defer.Generator:
        """
        Without C{--getfile-root}, netd serves the directory it started in.
        """
        netd = yield self.startNetd(path=self.root)
        client = Received(b"sub/file.bin\n")
        endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", netd.port("getfile"))
        yield connectProtocol(endpoint, client)
        received = yield client.closed
        self.assertEqual(received, self.data)

    @defer.inlineCallbacks
    def test_badRoot(self) -> defer.Generator:
        """
        A root that does not exist stops netd with one line and status 1.
        """
        missing = os.path.join(self.root, "missing")
        out, err, code = yield runCommand(
            TWISTD,
            "--nodaemon",
            "--pidfile=",
            "netd",
            "--services",
            "getfile",
            "--getfile",
            "tcp:0:interface=127.0.0.1",
            "--getfile-root",
            missing,
            path=self.root,
        )
        self.assertEqual(code, 1)
        self.assertIn(
            f"netd: getfile: root {missing!r} is not a directory\n".encode(), err
        )
        self.assertNotIn(b"Traceback", out + err)
