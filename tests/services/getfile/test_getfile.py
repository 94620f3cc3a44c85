"""
Tests for L{netd.services.getfile.server}: the request parser, the confined root, the
protocol over fake transports, and downloads over real loopback sockets.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, protocol, ssl, task, threads
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper, TimeoutFactory, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.connlog import ConnectionLoggingFactory
from netd.listeners import StartupError
from netd.services.getfile.confinement import (
    MAX_LINE,
    ConfinedRoot,
    GetFileRequest,
    RequestRefused,
    parseRequestLine,
    requestComponents,
)
from netd.services.getfile.plugin import GetFileService
from netd.services.getfile.server import (
    FILE_ENDED,
    FileTransfer,
    GetFileFactory,
    GetFileProtocol,
    SendfileTransfer,
    directSocket,
    reportSentDirectly,
)
from netd.wrappers import PassThroughWrapper
from tests.common import exchange

BIG = 3 * 2**20 + 17


def makeTree(testCase: Any) -> tuple[str, str]:
    """
    Make a root to serve and, beside it, things that must never be served.

    @return: the root and the directory holding it.
    """
    base = os.path.abspath(testCase.mktemp())
    root = os.path.join(base, "data")
    for directory in ("sub/deeper", ".hidden-dir", "dir"):
        os.makedirs(os.path.join(root, directory))
    os.makedirs(os.path.join(base, "outside"))
    os.makedirs(os.path.join(base, "data2"))
    files = {
        "text.txt": b"Hello network world\n" * 3,
        "empty": b"",
        "one": b"\x00",
        "k1024": bytes(range(256)) * 4,
        "big.bin": os.urandom(BIG),
        "with space.txt": b"spaces",
        "sub/deeper/inner.txt": b"inner",
        ".secret": b"hidden secret",
        ".hidden-dir/x": b"hidden dir",
        "../outside/secret": b"outside secret",
        "../data2/secret": b"sibling secret",
        "../top-secret": b"above the root",
    }
    for name, content in files.items():
        with open(os.path.join(root, name), "wb") as stream:
            stream.write(content)
    links = {
        "link-in": "text.txt",
        "sub/link-up": "../text.txt",
        "link-out": "../outside/secret",
        "link-dir-out": "../outside",
        "link-sibling": "../data2",
        "link-abs": os.path.join(base, "top-secret"),
        "link-hidden": ".secret",
        "zero": "/dev/zero",
        "loop": "loop",
    }
    for name, target in links.items():
        os.symlink(target, os.path.join(root, name))
    os.mkfifo(os.path.join(root, "fifo"))
    return root, base


def content(root: str, name: str) -> bytes:
    with open(os.path.join(root, name), "rb") as stream:
        return stream.read()


def makeLinkChain(directory: str, prefix: str, length: int, target: str) -> None:
    """
    Make C{PREFIX0} -> C{PREFIX1} -> ... -> C{PREFIX<length-1>} -> C{target}
    in C{directory}.
    """
    for index in range(length):
        following = f"{prefix}{index + 1}" if index + 1 < length else target
        os.symlink(following, os.path.join(directory, f"{prefix}{index}"))


ESCAPES = [
    "..",
    "../top-secret",
    "a/../../top-secret",
    "sub/../../top-secret",
    "..\\top-secret",
    "..\\..\\top-secret",
    "sub\\..\\..\\top-secret",
    "./text.txt",
    "/../top-secret",
    ".secret",
    "sub/../.secret",
    ".hidden-dir/x",
    ".hidden-dir\\x",
    "link-out",
    "link-dir-out/secret",
    "link-sibling/secret",
    "../data2/secret",
    "link-abs",
    "link-hidden",
    "dir",
    "sub",
    "",
    "/",
    "zero",
    "fifo",
    "loop",
    "/etc/passwd",
    "//etc/passwd",
    "\\etc\\passwd",
    "C:\\Windows\\win.ini",
    "nothere",
]
"""Requests that must never give a byte: out of the root, hidden, or not a
regular file (or simply missing)."""


class ParseRequestLineTests(SynchronousTestCase):
    """
    L{parseRequestLine} tells the two forms apart and refuses bad lines.
    """

    def test_bookForm(self) -> None:
        """
        A line that does not start with C{GETFILE/1 } is a path, whole.
        """
        self.assertEqual(
            parseRequestLine(b"dir/a file.txt"),
            GetFileRequest(False, 0, "dir/a file.txt"),
        )

    def test_extendedForm(self) -> None:
        """
        C{GETFILE/1 OFFSET PATH}: the path is the rest of the line, spaces
        included.
        """
        self.assertEqual(
            parseRequestLine(b"GETFILE/1 42 a b  c"),
            GetFileRequest(True, 42, "a b  c"),
        )

    def test_carriageReturn(self) -> None:
        """
        A C{\\r} before the newline, as from a Windows client, is dropped.
        """
        self.assertEqual(
            parseRequestLine(b"x.txt\r"), GetFileRequest(False, 0, "x.txt")
        )
        self.assertEqual(
            parseRequestLine(b"GETFILE/1 0 x.txt\r"), GetFileRequest(True, 0, "x.txt")
        )

    def test_utf8(self) -> None:
        """
        Paths are UTF-8.
        """
        self.assertEqual(
            parseRequestLine("GETFILE/1 0 café.txt".encode()).path, "café.txt"
        )

    def test_malformed(self) -> None:
        """
        A bad OFFSET, a missing PATH, a NUL or bytes that are not UTF-8 are
        refused with 400.
        """
        for line in [
            b"GETFILE/1 -1 x",
            b"GETFILE/1 +1 x",
            b"GETFILE/1 1e3 x",
            b"GETFILE/1 0x10 x",
            b"GETFILE/1  x",
            b"GETFILE/1 12",
            b"GETFILE/1 ",
            "GETFILE/1 \u0663 x".encode(),
            b"x\x00y",
            b"GETFILE/1 0 x\x00/../../etc/passwd",
            b"\xff\xfe",
            b"GETFILE/1 0 \xc3",
        ]:
            with self.assertRaises(RequestRefused, msg=repr(line)) as raised:
                parseRequestLine(line)
            self.assertEqual(raised.exception.code, 400, line)

    @given(st.integers(min_value=0, max_value=10**30), st.text())
    def test_extendedRoundTrip(self, offset: int, path: str) -> None:
        """
        Any offset and any path without NUL or newline (and not ending in
        C{\\r}) come back as they were sent.
        """
        path = path.replace("\x00", "").replace("\n", "").rstrip("\r")
        line = b"GETFILE/1 %d %s" % (offset, path.encode("utf-8"))
        self.assertEqual(parseRequestLine(line), GetFileRequest(True, offset, path))

    @given(st.binary(max_size=200).filter(lambda line: b"\n" not in line))
    def test_anyBytes(self, line: bytes) -> None:
        """
        Any line parses, or is refused with 400: nothing else escapes.
        """
        try:
            request = parseRequestLine(line)
        except RequestRefused as refused:
            self.assertEqual(refused.code, 400)
        else:
            self.assertNotIn("\x00", request.path)
            self.assertGreaterEqual(request.offset, 0)

    @given(
        st.lists(
            st.sampled_from(["a", "..", ".", "b c", ".x", "", "é", "\\", "/"]),
            max_size=12,
        )
    )
    def test_componentsNeverHidden(self, pieces: list[str]) -> None:
        """
        The names of a path, split on both separators, are never empty,
        hidden, C{.} or C{..}: such a path is refused with 403.
        """
        path = "/".join(pieces)
        try:
            names = requestComponents(path)
        except RequestRefused as refused:
            self.assertEqual(refused.code, 403)
        else:
            for name in names:
                self.assertTrue(name)
                self.assertFalse(name.startswith("."))
                self.assertNotIn("/", name)
                self.assertNotIn("\\", name)


class ConfinedRootTests(SynchronousTestCase):
    """
    L{ConfinedRoot} opens regular files under the root and nothing else.
    """

    def setUp(self) -> None:
        self.root, self.base = makeTree(self)
        self.confined = ConfinedRoot(self.root)

    def opened(self, path: str) -> bytes:
        fd, size = self.confined.openFile(path)
        try:
            data = os.pread(fd, size + 1, 0)
        finally:
            os.close(fd)
        self.assertEqual(len(data), size)
        return data

    def test_files(self) -> None:
        """
        Files under the root open, by either separator, with or without a
        leading separator, through symbolic links that stay inside.
        """
        self.assertEqual(self.opened("text.txt"), content(self.root, "text.txt"))
        self.assertEqual(self.opened("/text.txt"), content(self.root, "text.txt"))
        self.assertEqual(self.opened("sub\\deeper\\inner.txt"), b"inner")
        self.assertEqual(self.opened("sub//deeper/inner.txt"), b"inner")
        self.assertEqual(self.opened("link-in"), content(self.root, "text.txt"))
        self.assertEqual(self.opened("sub/link-up"), content(self.root, "text.txt"))
        self.assertEqual(self.opened("with space.txt"), b"spaces")

    def test_escapes(self) -> None:
        """
        Every escape attempt is refused with a code and a message that say
        nothing of the server's file system.
        """
        for path in ESCAPES:
            with self.assertRaises(RequestRefused, msg=path) as raised:
                self.confined.openFile(path)
            refused = raised.exception
            self.assertIn(refused.code, (403, 404), path)
            self.assertIn(refused.message, ("forbidden", "not found"), path)

    def test_refusalCodes(self) -> None:
        """
        Missing files are 404; hidden names, links out, directories and
        special files are 403.
        """
        codes = {}
        for path in ["nothere", "sub/nothere/x", "text.txt/x", "/etc/passwd"]:
            codes[path] = 404
        for path in [".secret", "..", "link-out", "link-sibling/secret", "dir"]:
            codes[path] = 403
        for path in ["fifo", "zero", "link-hidden", "loop"]:
            codes[path] = 403
        for path, code in codes.items():
            with self.assertRaises(RequestRefused, msg=path) as raised:
                self.confined.openFile(path)
            self.assertEqual(raised.exception.code, code, path)

    def test_siblingWithTheRootsName(self) -> None:
        """
        A sibling directory whose name starts with the root's (C{data2}
        beside C{data}) is outside, unlike C{FilePath.preauthChild} thinks
        (Twisted issue 6527).
        """
        self.assertEqual(os.path.basename(self.root), "data")
        self.assertRaises(RequestRefused, self.confined.openFile, "link-sibling/secret")

    def test_devices(self) -> None:
        """
        With C{/dev} as the root, devices are not regular files: refused
        (and never opened, which for some devices has effects).
        """
        devices = ConfinedRoot("/dev")
        for name in ("null", "zero", "urandom"):
            with self.assertRaises(RequestRefused) as raised:
                devices.openFile(name)
            self.assertEqual(raised.exception.code, 403)

    def test_linkSwappedAfterTheCheck(self) -> None:
        """
        A directory swapped for a symbolic link out of the root after the
        path was resolved (the race a check-then-open has) does not lead
        outside: it is opened without following links.
        """
        names = self.confined.resolve("sub/deeper/inner.txt")
        os.rename(
            os.path.join(self.root, "sub", "deeper"),
            os.path.join(self.root, "sub", "moved"),
        )
        os.makedirs(os.path.join(self.base, "outside", "deeper"))
        with open(os.path.join(self.base, "outside", "deeper", "inner.txt"), "wb") as f:
            f.write(b"outside")
        os.symlink(
            os.path.join(self.base, "outside", "deeper"),
            os.path.join(self.root, "sub", "deeper"),
        )
        resolve = self.confined.resolve
        self.patch(self.confined, "resolve", lambda path: names)
        with self.assertRaises(RequestRefused):
            self.confined.openFile("sub/deeper/inner.txt")
        self.assertRaises(RequestRefused, resolve, "sub/deeper/inner.txt")

    def test_fileSwappedAfterTheCheck(self) -> None:
        """
        A file swapped for a FIFO after the path was resolved is refused
        without blocking (it is opened non-blocking and checked again).
        """
        names = self.confined.resolve("text.txt")
        os.unlink(os.path.join(self.root, "text.txt"))
        os.mkfifo(os.path.join(self.root, "text.txt"))
        self.patch(self.confined, "resolve", lambda path: names)
        with self.assertRaises(RequestRefused) as raised:
            self.confined.openFile("text.txt")
        self.assertEqual(raised.exception.code, 403)

    def test_longLinkChain(self) -> None:
        """
        A chain of 1,200 symbolic links (deeper than Python's recursion
        limit) is refused with 403, not a L{RecursionError}.
        """
        makeLinkChain(self.root, "chain", 1200, "text.txt")
        with self.assertRaises(RequestRefused) as raised:
            self.confined.openFile("chain0")
        self.assertEqual(raised.exception.code, 403)
        self.assertIn("symbolic links", raised.exception.reason)

    def test_linkLoop(self) -> None:
        """
        Links that lead to each other are refused with 403, and a path
        through them with 403 or 404.
        """
        os.symlink("loop-b", os.path.join(self.root, "loop-a"))
        os.symlink("loop-a", os.path.join(self.root, "loop-b"))
        os.symlink("loop-a/x", os.path.join(self.root, "loop-through"))
        for name, codes in (("loop-a", (403,)), ("loop-through", (403, 404))):
            with self.assertRaises(RequestRefused, msg=name) as raised:
                self.confined.openFile(name)
            self.assertIn(raised.exception.code, codes, name)

    def test_linkReplacedWhileResolved(self) -> None:
        """
        A link replaced by a regular file between resolving's C{lstat} and
        its C{readlink} (C{EINVAL}) is refused with 403; one removed
        meanwhile (C{ENOENT}) with 404.
        """
        link = os.path.join(self.root, "racing")
        realLstat = os.lstat

        for replace, code in ((self.replaceByFile, 403), (os.unlink, 404)):
            os.symlink("text.txt", link)
            raced: list[str] = []

            def lstat(
                path: Any,
                *args: Any,
                raced: list[str] = raced,
                replace: Any = replace,
                **kwargs: Any,
            ) -> Any:
                result = realLstat(path, *args, **kwargs)
                if path == link and not raced:
                    raced.append(path)
                    replace(link)
                return result

            self.patch(os, "lstat", lstat)
            with self.assertRaises(RequestRefused) as raised:
                self.confined.openFile("racing")
            self.assertEqual(raced, [link])
            self.assertEqual(raised.exception.code, code)
            if os.path.lexists(link):
                os.unlink(link)

    @staticmethod
    def replaceByFile(path: str) -> None:
        os.unlink(path)
        with open(path, "wb") as stream:
            stream.write(b"now a file")

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [
                    "..",
                    ".",
                    "sub",
                    "deeper",
                    "link-up",
                    "link-out",
                    "link-dir-out",
                    "link-sibling",
                    "secret",
                    "top-secret",
                    "text.txt",
                    "outside",
                    "data",
                    "data2",
                    "",
                ]
            ),
            max_size=6,
        ),
        st.sampled_from(["/", "\\"]),
    )
    def test_nothingOutside(self, pieces: list[str], separator: str) -> None:
        """
        Whatever path is asked for, an opened file is a regular file whose
        real path is inside the root.
        """
        try:
            fd, _size = self.confined.openFile(separator.join(pieces))
        except RequestRefused:
            return
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
            self.assertTrue(stat.S_ISREG(os.fstat(fd).st_mode))
        finally:
            os.close(fd)
        self.assertEqual(os.path.commonpath([real, self.root]), self.root)


class ServicePluginTests(SynchronousTestCase):
    """
    The getfile plugin builds its factory from its options.
    """

    def options(self, **overrides: Any) -> dict[str, Any]:
        options = {
            "root": None,
            "request-timeout": 10.0,
            "max-transfers": 64,
            "max-per-source": 8,
            "stall-timeout": 60.0,
            "no-sendfile": False,
        }
        options.update(overrides)
        return options

    def test_defaultRootIsTheWorkingDirectory(self) -> None:
        """
        Without C{root}, the directory netd starts in is served.
        """
        factory = GetFileService().makeFactory(self.options(), task.Clock())
        self.assertEqual(factory.root.path, os.path.realpath(os.getcwd()))
        self.assertTrue(factory.sendfile)

    def test_badRoot(self) -> None:
        """
        A root that is missing or not a directory is a one-line start-up
        error naming it.
        """
        missing = os.path.abspath(self.mktemp())
        with self.assertRaises(StartupError) as raised:
            GetFileService().makeFactory(self.options(root=missing), task.Clock())
        self.assertIn(repr(missing), str(raised.exception))
        with open(missing, "w"):
            pass
        self.assertRaises(
            StartupError,
            GetFileService().makeFactory,
            self.options(root=missing),
            task.Clock(),
        )

    def test_reconfigure(self) -> None:
        """
        On reload, every getfile option applies to the requests after; a
        root that is no directory is not applied.
        """
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        service = GetFileService()
        factory = service.makeFactory(self.options(), task.Clock())
        options = self.options(
            root=root,
            **{
                "request-timeout": 3.0,
                "max-transfers": 2,
                "max-per-source": 1,
                "stall-timeout": 5.0,
            },
        )
        options["no-sendfile"] = True
        changed = [
            "root",
            "request-timeout",
            "max-transfers",
            "max-per-source",
            "stall-timeout",
            "no-sendfile",
        ]
        applied = service.reconfigure(options, [*changed, "other"], factory, [])
        self.assertEqual(sorted(applied), sorted(changed))
        self.assertEqual(
            (factory.root.path, factory.requestTimeout, factory.maxTransfers),
            (os.path.realpath(root), 3.0, 2),
        )
        self.assertEqual((factory.maxPerSource, factory.stallTimeout), (1, 5.0))
        self.assertFalse(factory.sendfile)
        missing = self.options(root=os.path.join(root, "missing"))
        self.assertEqual(service.reconfigure(missing, ["root"], factory, []), [])
        self.assertEqual(factory.root.path, os.path.realpath(root))
        self.assertEqual(service.reconfigure(options, ["root"], None, []), ())

    def test_validate(self) -> None:
        """
        A timeout or transfer limit that is not positive is a usage error
        quoting it.
        """
        from twisted.python.usage import UsageError

        with self.assertRaises(UsageError) as raised:
            GetFileService().validate(self.options(**{"request-timeout": 0.0}))
        self.assertIn("0.0", str(raised.exception))
        with self.assertRaises(UsageError) as raised:
            GetFileService().validate(self.options(**{"max-transfers": 0}))
        self.assertIn("0", str(raised.exception))


class ProtocolTests(SynchronousTestCase):
    """
    L{GetFileProtocol} over a L{StringTransport}, with a fake clock.
    """

    def setUp(self) -> None:
        self.root, _base = makeTree(self)
        self.clock = task.Clock()
        self.factory = GetFileFactory(self.clock, self.root, requestTimeout=5.0)

    def connect(self) -> tuple[GetFileProtocol, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.addCleanup(proto.connectionLost, None)
        return proto, transport

    def drain(self, transport: StringTransport) -> bytes:
        """
        Play the transport's part for a pull producer: ask for chunks
        until it unregisters.
        """
        while transport.producer is not None:
            transport.producer.resumeProducing()
        return transport.value()

    def test_bookForm(self) -> None:
        """
        The book form gets the raw bytes, then the server closes.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"k1024\r\n")
        self.assertEqual(self.drain(transport), content(self.root, "k1024"))
        self.assertTrue(transport.disconnecting)

    def test_extendedInPieces(self) -> None:
        """
        A request line in many pieces is answered once complete, with
        C{OK SIZE} and the bytes from the offset.
        """
        proto, transport = self.connect()
        for byte in b"GETFILE/1 5 text.txt\n":
            proto.dataReceived(bytes([byte]))
        data = content(self.root, "text.txt")
        self.assertEqual(self.drain(transport), b"OK %d\n" % len(data) + data[5:])
        self.assertTrue(transport.disconnecting)

    def test_dataAfterTheRequestIgnored(self) -> None:
        """
        Bytes after the request line do not start another request.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"one\nGETFILE/1 0 text.txt\n")
        proto.dataReceived(b"more")
        self.assertEqual(self.drain(transport), b"\x00")

    def test_refusedForms(self) -> None:
        """
        The extended form is told why in an C{ERR} line; the book form gets
        no byte at all; both are closed.
        """
        for path in ESCAPES:
            proto, transport = self.connect()
            proto.dataReceived(b"GETFILE/1 0 " + path.encode() + b"\n")
            self.assertRegex(
                transport.value(), rb"^ERR 40[34] (forbidden|not found)\n$", path
            )
            self.assertTrue(transport.disconnecting)
            proto, transport = self.connect()
            proto.dataReceived(path.encode() + b"\n")
            self.assertEqual(transport.value(), b"", path)
            self.assertTrue(transport.disconnecting)

    def test_malformed(self) -> None:
        """
        A malformed extended request gets C{ERR 400}; a malformed book one
        (a NUL, not UTF-8) is closed without a byte.
        """
        for line in [b"GETFILE/1 x y", b"GETFILE/1 0", b"GETFILE/1 0 a\x00b"]:
            proto, transport = self.connect()
            proto.dataReceived(line + b"\n")
            self.assertEqual(transport.value(), b"ERR 400 bad request\n", line)
            self.assertTrue(transport.disconnecting)
        for line in [b"a\x00b", b"\xff"]:
            proto, transport = self.connect()
            proto.dataReceived(line + b"\n")
            self.assertEqual(transport.value(), b"", line)
            self.assertTrue(transport.disconnecting)

    def test_offsets(self) -> None:
        """
        Offset 0 sends all, the middle the rest, the end nothing (but
        C{OK SIZE}), past the end C{ERR 416}.
        """
        data = content(self.root, "k1024")
        for offset, expected in [
            (0, b"OK 1024\n" + data),
            (512, b"OK 1024\n" + data[512:]),
            (1024, b"OK 1024\n"),
            (1025, b"ERR 416 offset past the end\n"),
            (10**40, b"ERR 416 offset past the end\n"),
        ]:
            proto, transport = self.connect()
            proto.dataReceived(b"GETFILE/1 %d k1024\n" % offset)
            self.assertEqual(self.drain(transport), expected, offset)
            self.assertTrue(transport.disconnecting)

    def test_neverFinishedLine(self) -> None:
        """
        A request line that is not complete within the timeout is refused:
        with C{ERR 400} in the extended form, silently in the book form.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"GETFILE/1 0 text")
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertEqual(transport.value(), b"ERR 400 bad request\n")
        self.assertTrue(transport.disconnecting)
        proto, transport = self.connect()
        proto.dataReceived(b"text")
        self.clock.advance(5)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

    def test_silentClientTimesOut(self) -> None:
        """
        A client that sends nothing is closed after the timeout, and the
        timer is gone.
        """
        proto, transport = self.connect()
        self.clock.advance(5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answeredBeforeTimeout(self) -> None:
        """
        Once the request is answered, the timeout no longer applies (only
        the transfer's stall check is pending).
        """
        proto, transport = self.connect()
        proto.dataReceived(b"GETFILE/1 0 big.bin\n")
        [check] = self.clock.getDelayedCalls()
        self.assertEqual(check.getTime(), self.factory.stallTimeout)

    def test_overLongLine(self) -> None:
        """
        A line of more than 4096 bytes is refused as soon as 4096 bytes
        came without a newline; one of exactly 4096 with its newline is read.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"GETFILE/1 0 " + b"a" * (MAX_LINE - 13))
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"a")
        self.assertEqual(transport.value(), b"ERR 400 bad request\n")
        self.assertTrue(transport.disconnecting)

        proto, transport = self.connect()
        proto.dataReceived(b"x" * 100000)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

        proto, transport = self.connect()
        proto.dataReceived(b"GETFILE/1 0 " + b"a" * (MAX_LINE - 13) + b"\n")
        self.assertEqual(transport.value(), b"ERR 404 not found\n")

    def test_stopGracefully(self) -> None:
        """
        Stopping gracefully closes a connection still waiting for its
        request (and reads none after), and lets a transfer under way end.
        """
        waiting, waitingTransport = self.connect()
        waiting.stopGracefully()
        self.assertTrue(waitingTransport.disconnecting)
        waiting.dataReceived(b"GETFILE/1 0 text.txt\n")
        self.assertEqual(waitingTransport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        sending, sendingTransport = self.connect()
        sending.dataReceived(b"k1024\n")
        sending.stopGracefully()
        self.assertFalse(sendingTransport.disconnecting)
        self.assertEqual(self.drain(sendingTransport), content(self.root, "k1024"))
        self.assertTrue(sendingTransport.disconnecting)

    def test_halfCloseBeforeTheLine(self) -> None:
        """
        A client that ends its input before a whole line is refused.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"GETFILE/1 0 text.txt")
        proto.readConnectionLost()
        self.assertEqual(transport.value(), b"ERR 400 bad request\n")
        self.assertTrue(transport.disconnecting)

    def test_halfCloseAfterTheLine(self) -> None:
        """
        A client that ends its input after its request still gets the file.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"text.txt\n")
        proto.readConnectionLost()
        self.assertEqual(self.drain(transport), content(self.root, "text.txt"))

    def test_busy(self) -> None:
        """
        Beyond C{maxTransfers} transfers under way, requests are refused
        with 503 until one ends.
        """
        self.factory.maxTransfers = 2
        first, _ = self.connect()
        first.dataReceived(b"big.bin\n")
        second, _ = self.connect()
        second.dataReceived(b"big.bin\n")
        proto, transport = self.connect()
        proto.dataReceived(b"GETFILE/1 0 text.txt\n")
        self.assertEqual(transport.value(), b"ERR 503 busy\n")
        first.connectionLost(None)
        proto, transport = self.connect()
        proto.dataReceived(b"GETFILE/1 0 one\n")
        self.assertEqual(self.drain(transport), b"OK 1\n\x00")

    def connectFrom(self, host: str) -> tuple[GetFileProtocol, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 4000))
        proto.makeConnection(transport)
        self.addCleanup(proto.connectionLost, None)
        return proto, transport

    def test_busySource(self) -> None:
        """
        Beyond C{maxPerSource} transfers under way to one address, its
        requests are refused with 503; other addresses are served, and a
        slot freed is taken again.
        """
        self.factory.maxPerSource = 2
        first, _ = self.connectFrom("192.0.2.1")
        first.dataReceived(b"big.bin\n")
        second, _ = self.connectFrom("192.0.2.1")
        second.dataReceived(b"big.bin\n")
        proto, transport = self.connectFrom("192.0.2.1")
        proto.dataReceived(b"GETFILE/1 0 text.txt\n")
        self.assertEqual(transport.value(), b"ERR 503 busy\n")
        proto, transport = self.connectFrom("192.0.2.2")
        proto.dataReceived(b"GETFILE/1 0 one\n")
        self.assertEqual(self.drain(transport), b"OK 1\n\x00")
        proto.connectionLost(None)
        self.assertEqual(self.factory.perSource, {"192.0.2.1": 2})
        first.connectionLost(None)
        proto, transport = self.connectFrom("192.0.2.1")
        proto.dataReceived(b"GETFILE/1 0 one\n")
        self.assertEqual(self.drain(transport), b"OK 1\n\x00")
        proto.connectionLost(None)
        second.connectionLost(None)
        self.assertEqual(self.factory.perSource, {})

    def test_stalled(self) -> None:
        """
        A transfer that sends nothing for C{stallTimeout} seconds (its
        client does not read) is aborted and logged as stalled; one that
        makes progress is left alone.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.factory.stallTimeout = 30.0
        moving, movingTransport = self.connect()
        moving.dataReceived(b"big.bin\n")
        stuck, stuckTransport = self.connect()
        stuck.dataReceived(b"big.bin\n")
        movingTransport.producer.resumeProducing()
        self.clock.advance(29.9)
        self.assertFalse(stuckTransport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(stuckTransport.disconnected)
        stuck.connectionLost(None)
        [event] = [e for e in events if e.get("path") == "big.bin"]
        self.assertEqual(event["outcome"], "stalled: nothing sent for 30s")
        self.assertEqual(self.factory.transfers, {moving})
        for _ in range(3):
            movingTransport.producer.resumeProducing()
            self.clock.advance(30.0)
            self.assertFalse(movingTransport.disconnected)
        self.clock.advance(30.0)
        self.assertTrue(movingTransport.disconnected)

    def test_noDescriptorForSendfile(self) -> None:
        """
        When the socket cannot be duplicated for sendfile (no descriptor
        left), the request is refused as busy and the file closed.
        """
        opened: list[int] = []
        openFile = self.factory.root.openFile

        def recordingOpenFile(path: str) -> Any:
            result = openFile(path)
            opened.append(result.fd)
            return result

        def noDescriptor(*args: Any) -> Any:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        self.patch(self.factory.root, "openFile", recordingOpenFile)
        self.patch(self.factory, "makeTransfer", noDescriptor)
        proto, transport = self.connect()
        proto.dataReceived(b"GETFILE/1 0 text.txt\n")
        self.assertEqual(transport.value(), b"ERR 503 busy\n")
        self.assertRaises(OSError, os.fstat, opened[0])
        self.assertEqual(self.factory.transfers, set())

    def test_disconnectClosesTheFile(self) -> None:
        """
        A client that goes away mid-transfer leaves no file open.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"big.bin\n")
        transfer = proto.transfer
        assert transfer is not None
        fd = transfer.fd
        assert fd is not None
        os.fstat(fd)
        transport.producer.resumeProducing()
        proto.connectionLost(None)
        self.assertIsNone(transfer.fd)
        self.assertRaises(OSError, os.fstat, fd)
        self.assertEqual(self.factory.transfers, set())

    def test_logsTheOutcome(self) -> None:
        """
        Each request is logged with the path asked for and its outcome.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proto, transport = self.connect()
        proto.dataReceived(b"../top-secret\n")
        proto.connectionLost(None)
        [event] = [
            e
            for e in events
            if e.get("log_namespace") == "netd.services.getfile.server.GetFileProtocol"
        ]
        self.assertEqual(event["path"], "../top-secret")
        self.assertIn("403", event["outcome"])

    def test_linkTroubleLoggedOnce(self) -> None:
        """
        A 1,200-link chain and a loop get C{ERR 403} (the book form: a close
        without a byte) and one log line each, never a traceback.
        """
        makeLinkChain(self.root, "chain", 1200, "text.txt")
        os.symlink("loop-b", os.path.join(self.root, "loop-a"))
        os.symlink("loop-a", os.path.join(self.root, "loop-b"))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for name in (b"chain0", b"loop-a"):
            for form, expected in (
                (b"GETFILE/1 0 ", b"ERR 403 forbidden\n"),
                (b"", b""),
            ):
                del events[:]
                proto, transport = self.connect()
                proto.dataReceived(form + name + b"\n")
                self.assertEqual(transport.value(), expected)
                self.assertTrue(transport.disconnecting)
                proto.connectionLost(None)
                self.assertEqual(len(events), 1, events)
                self.assertNotIn("log_failure", events[0])
                self.assertIn("403", events[0]["outcome"])


class FileTransferTests(SynchronousTestCase):
    """
    L{FileTransfer} sends exactly its byte range, however the file changes.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        with open(self.path, "wb") as stream:
            stream.write(b"a" * 1000)
        self.fd = os.open(self.path, os.O_RDONLY)
        self.transport = StringTransport()
        self.results: list[tuple[object, ...]] = []
        self.finished = lambda *outcome: self.results.append(outcome)

    def transfer(self) -> FileTransfer:
        transfer = FileTransfer(self.fd, 0, 1000, self.transport, self.finished)
        transfer.chunkSize = 300
        transfer.start()
        return transfer

    def test_grows(self) -> None:
        """
        A file that grows during the transfer is sent up to its size then.
        """
        transfer = self.transfer()
        transfer.resumeProducing()
        with open(self.path, "ab") as stream:
            stream.write(b"b" * 1000)
        while self.transport.producer is not None:
            transfer.resumeProducing()
        self.assertEqual(self.transport.value(), b"a" * 1000)
        self.assertEqual(self.results, [(True,)])
        self.assertIsNone(transfer.fd)

    def test_shrinks(self) -> None:
        """
        A file truncated during the transfer ends it short, reported as such.
        """
        transfer = self.transfer()
        transfer.resumeProducing()
        os.truncate(self.path, 100)
        while self.transport.producer is not None:
            transfer.resumeProducing()
        self.assertEqual(self.transport.value(), b"a" * 300)
        self.assertEqual(self.results, [(False, FILE_ENDED)])
        self.assertIsNone(transfer.fd)

    def test_stopped(self) -> None:
        """
        A transfer stopped by its transport closes the file and reports
        nothing.
        """
        transfer = self.transfer()
        transfer.stopProducing()
        self.assertIsNone(transfer.fd)
        self.assertEqual(self.results, [])


class ManualThreads:
    """
    An L{IReactorThreads} stand-in: calls for threads wait in a list, calls
    back from them run at once.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []

    def callInThread(self, f: Any, *args: Any) -> None:
        self.calls.append((f, args))

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)

    def runAll(self) -> None:
        calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)


class FakeSocketTransport:
    """
    What L{SendfileTransfer} needs of a L{tcp.Server}: a descriptor and
    C{startWriting}.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writing = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def startWriting(self) -> None:
        self.writing += 1


class PullingTransport(StringTransport):
    """
    A L{StringTransport} that, like Twisted's socket transports, asks a
    pull producer for data as soon as it is registered.
    """

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        super().registerProducer(producer, streaming)
        if not streaming:
            producer.resumeProducing()


class CountingWrapper(ProtocolWrapper):
    sentCount = 0

    def sentDirectly(self, count: int) -> None:
        self.sentCount += count


class SendfileTransferTests(SynchronousTestCase):
    """
    L{SendfileTransfer} with its thread calls run by hand, over a real
    socket pair.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        with open(self.path, "wb") as stream:
            stream.write(b"f" * 5000)
        self.fd = os.open(self.path, os.O_RDONLY)
        self.near, self.far = socket.socketpair()
        self.near.setblocking(False)
        self.addCleanup(self.near.close)
        self.addCleanup(self.far.close)
        self.threads = ManualThreads()
        self.consumer = PullingTransport()
        self.socketTransport = FakeSocketTransport(self.near)
        self.wrapper = CountingWrapper(
            WrappingFactory(protocol.Factory()), protocol.Protocol()
        )
        self.results: list[tuple[object, ...]] = []
        self.finished = lambda *outcome: self.results.append(outcome)
        self.transfer = SendfileTransfer(
            self.fd,
            1000,
            5000,
            self.consumer,
            self.finished,
            self.socketTransport,
            [self.wrapper],
            self.threads,
        )
        self.transfer.start()
        self.dup = self.transfer._socketFd

    def assertClosed(self, *fds: int | None) -> None:
        for fd in fds:
            assert fd is not None
            self.assertRaises(OSError, os.fstat, fd)

    def test_waitsForTheBuffer(self) -> None:
        """
        Registering sends nothing: the transport's buffer may hold the
        C{OK SIZE} line. The first burst goes when the transport asks.
        """
        self.assertEqual(self.threads.calls, [])
        self.assertEqual(self.socketTransport.writing, 1)
        self.consumer.producer.resumeProducing()
        self.threads.runAll()
        self.assertEqual(self.results, [(True,)])
        self.assertEqual(self.far.recv(10000), b"f" * 4000)
        self.assertEqual(self.wrapper.sentCount, 4000)
        self.assertIsNone(self.consumer.producer)
        self.assertClosed(self.fd, self.dup)

    def test_shrunk(self) -> None:
        """
        A file that ends before its size ends the transfer short.
        """
        os.truncate(self.path, 3000)
        self.transfer.resumeProducing()
        self.threads.runAll()
        self.assertEqual(self.results, [(False, FILE_ENDED)])
        self.assertEqual(self.transfer.sent, 2000)
        self.assertClosed(self.fd, self.dup)

    def test_closedDuringBurst(self) -> None:
        """
        Closed (twice, as the transport and the protocol both do) while a
        burst runs, the transfer keeps its descriptors until the burst
        returns, then closes them all.
        """
        self.transfer.resumeProducing()
        self.transfer.stopProducing()
        self.transfer.close()
        os.fstat(self.fd)
        os.fstat(self.dup)
        self.threads.runAll()
        self.assertClosed(self.fd, self.dup)
        self.assertEqual(self.results, [])


class WrapperCountingTests(SynchronousTestCase):
    """
    L{directSocket} finds a plain socket only when no TLS is on the way;
    L{reportSentDirectly} tells the wrappers on the way what was sent.
    """

    def test_reported(self) -> None:
        """
        A wrapper that counts bytes gets the count once (not also through
        the wrapper outside it, which hands unknown names on); an idle
        timeout is pushed back as a write would.
        """
        clock = task.Clock()
        timeouts = TimeoutFactory(protocol.Factory.forProtocol(protocol.Protocol), 10)
        timeouts.callLater = clock.callLater  # type: ignore[method-assign]
        timeout = timeouts.buildProtocol(None)
        counting = CountingWrapper(
            WrappingFactory(protocol.Factory()), protocol.Protocol()
        )
        outer = ProtocolWrapper(WrappingFactory(protocol.Factory()), counting)
        outer.transport = counting
        timeout.makeConnection(StringTransport())
        clock.advance(9)
        reportSentDirectly([outer, counting, timeout], 100)
        self.assertEqual(counting.sentCount, 100)
        clock.advance(9)
        self.assertFalse(timeout.transport.disconnecting)
        clock.advance(1)
        self.assertTrue(timeout.transport.disconnecting)

    def test_notASocket(self) -> None:
        """
        A transport that is not a reactor socket gets no sendfile.
        """
        self.assertIsNone(directSocket(StringTransport()))
        wrapper = ProtocolWrapper(
            WrappingFactory(protocol.Factory()), protocol.Protocol()
        )
        wrapper.makeConnection(StringTransport())
        self.assertIsNone(directSocket(wrapper))


def openDescriptors() -> list[str]:
    """
    What each of this process's open file descriptors refers to
    (C{/proc/self/fd}: a path, or C{socket:[INODE]}).
    """
    targets = []
    for name in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass  # the descriptor that listed the directory, closed since
    return targets


class Received(protocol.Protocol):
    """
    Collect a download; optionally stop reading after the first bytes.

    @ivar closed: fires with everything received when the connection ends.
    @ivar started: fires when the first bytes arrive.
    """

    def __init__(self, request: bytes, pauseAfterFirst: bool = False) -> None:
        self.request = request
        self.pauseAfterFirst = pauseAfterFirst
        self.chunks: list[bytes] = []
        self.started: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        if not self.started.called:
            if self.pauseAfterFirst:
                self.transport.pauseProducing()
            self.started.callback(None)

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(b"".join(self.chunks))


class NotifyingProtocol(GetFileProtocol):
    """
    A server protocol that tells its factory when its connection is gone.
    """

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.factory.lost.append(self)
        waiting, self.factory.waiting = self.factory.waiting, []
        for deferred in waiting:
            deferred.callback(self)


class NotifyingFactory(GetFileFactory):
    protocol = NotifyingProtocol  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost: list[GetFileProtocol] = []
        self.waiting: list[defer.Deferred[GetFileProtocol]] = []

    def nextLost(self) -> defer.Deferred[GetFileProtocol]:
        deferred: defer.Deferred[GetFileProtocol] = defer.Deferred()
        self.waiting.append(deferred)
        return deferred


class LoopbackTests(TestCase):
    """
    Downloads over real loopback sockets, through the connection logger as
    in netd, with C{os.sendfile} and with the producer alone.
    """

    sendfile = True

    def setUp(self) -> None:
        self.root, self.base = makeTree(self)
        self.factory = NotifyingFactory(_reactor, self.root, sendfile=self.sendfile)
        self.logged = ConnectionLoggingFactory("getfile", self.factory, _reactor)
        self.port = self.listen(self.logged)

    def listen(self, factory: Any) -> int:
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def fetch(
        self, request: bytes, port: int | None = None, **kwargs: Any
    ) -> defer.Deferred[bytes]:
        client = Received(request, **kwargs)
        endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", port or self.port)
        return connectProtocol(endpoint, client).addCallback(lambda _: client.closed)

    def recordTransfers(self) -> list[type]:
        """
        Record the kind of each transfer the factory makes from now on.
        """
        chosen: list[type] = []
        makeTransfer = self.factory.makeTransfer

        def recordingMakeTransfer(*args: Any) -> Any:
            transfer = makeTransfer(*args)
            chosen.append(type(transfer))
            return transfer

        self.patch(self.factory, "makeTransfer", recordingMakeTransfer)
        return chosen

    @defer.inlineCallbacks
    def pausedDownload(self, name: str, fill: bytes, size: int) -> defer.Generator:
        """
        Make a file of C{size} bytes C{fill} and start downloading it with a
        client that stops reading once the first bytes arrived.

        @return: a Deferred firing with the file's path and the client.
        """
        path = os.path.join(self.root, name)
        with open(path, "wb") as stream:
            stream.write(fill * size)
        client = Received(b"GETFILE/1 0 %s\n" % name.encode(), pauseAfterFirst=True)
        endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", self.port)
        yield connectProtocol(endpoint, client)
        yield client.started
        return path, client

    @defer.inlineCallbacks
    def test_identical(self) -> defer.Generator:
        """
        Text and binary files of 0, 1, 1024 bytes and several MiB arrive
        byte-identical by both forms.
        """
        for name in ["text.txt", "empty", "one", "k1024", "big.bin", "with space.txt"]:
            data = content(self.root, name)
            book = yield self.fetch(name.encode() + b"\n")
            self.assertEqual(book, data, name)
            extended = yield self.fetch(b"GETFILE/1 0 " + name.encode() + b"\r\n")
            self.assertEqual(extended, b"OK %d\n" % len(data) + data, name)

    @defer.inlineCallbacks
    def test_bytesCounted(self) -> defer.Generator:
        """
        The connection log counts every byte sent, sendfile's included.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        lost = self.factory.nextLost()
        yield self.fetch(b"GETFILE/1 0 big.bin\n")
        yield lost
        [event] = [e for e in events if "bytesOut" in e]
        self.assertEqual(event["bytesOut"], len(b"OK %d\n" % BIG) + BIG)

    @defer.inlineCallbacks
    def test_fourConcurrent(self) -> defer.Generator:
        """
        Four downloads at once all arrive whole.
        """
        data = content(self.root, "big.bin")
        results = yield defer.gatherResults(
            [self.fetch(b"GETFILE/1 %d big.bin\n" % (i * 1000)) for i in range(4)]
        )
        for i, result in enumerate(results):
            self.assertEqual(result, b"OK %d\n" % BIG + data[i * 1000 :])

    @defer.inlineCallbacks
    def test_offsets(self) -> defer.Generator:
        """
        Offsets 0, middle, end and past the end.
        """
        data = content(self.root, "big.bin")
        middle = BIG // 2
        for offset, expected in [
            (0, b"OK %d\n" % BIG + data),
            (middle, b"OK %d\n" % BIG + data[middle:]),
            (BIG, b"OK %d\n" % BIG),
            (BIG + 1, b"ERR 416 offset past the end\n"),
        ]:
            received = yield self.fetch(b"GETFILE/1 %d big.bin\n" % offset)
            self.assertEqual(received, expected, offset)

    @defer.inlineCallbacks
    def test_escapes(self) -> defer.Generator:
        """
        Every escape attempt gets no byte of any file, in both forms.
        """
        for path in ESCAPES:
            book = yield self.fetch(path.encode() + b"\n")
            self.assertEqual(book, b"", path)
            extended = yield self.fetch(b"GETFILE/1 0 " + path.encode() + b"\n")
            self.assertRegex(extended, rb"^ERR 40[34] (forbidden|not found)\n$", path)
        received = yield self.fetch(b"text.txt\x00.jpg\n")
        self.assertEqual(received, b"")
        received = yield self.fetch(b"GETFILE/1 0 text.txt\x00\n")
        self.assertEqual(received, b"ERR 400 bad request\n")

    @defer.inlineCallbacks
    def test_overLongLine(self) -> defer.Generator:
        """
        A client streaming an endless line is cut off after 4096 bytes.
        """
        received = yield self.fetch(b"GETFILE/1 0 " + b"x" * 70000)
        self.assertEqual(received, b"ERR 400 bad request\n")

    @defer.inlineCallbacks
    def test_stalledClient(self) -> defer.Generator:
        """
        A client that stops reading is cut off once its transfer made no
        progress for C{stallTimeout} seconds; it gets less than the file.
        """
        self.factory.stallTimeout = 0.5
        lost = self.factory.nextLost()
        _path, client = yield self.pausedDownload("stall", b"s", 64 * 2**20)
        server = yield lost
        self.assertEqual(server._outcome, "stalled: nothing sent for 0.5s")
        self.assertEqual(self.factory.transfers, set())
        client.transport.resumeProducing()
        received = yield client.closed
        self.assertLess(len(received), 64 * 2**20)

    @defer.inlineCallbacks
    def test_busySource(self) -> defer.Generator:
        """
        With one transfer per address, a second request from 127.0.0.1
        while its first is under way gets C{ERR 503}; 127.0.0.2 is served.
        """
        self.factory.maxPerSource = 1
        _path, client = yield self.pausedDownload("held", b"h", 64 * 2**20)
        self.addCleanup(client.transport.abortConnection)
        for source, expected in (
            ("127.0.0.1", b"ERR 503 busy\n"),
            ("127.0.0.2", b"OK 1\n\x00"),
        ):
            endpoint = TCP4ClientEndpoint(
                _reactor, "127.0.0.1", self.port, bindAddress=(source, 0)
            )
            received = yield exchange(endpoint, b"GETFILE/1 0 one\n")
            self.assertEqual(received, expected, source)

    @defer.inlineCallbacks
    def test_disconnectMidTransfer(self) -> defer.Generator:
        """
        A client that goes away mid-transfer leaves no open file or socket.
        """
        path, client = yield self.pausedDownload("huge", b"h", 64 * 2**20)
        [server] = self.factory.transfers
        transfer = server.transfer
        serverSocket = server.transport.transport.fileno()
        gone = [
            os.path.realpath(path),
            f"socket:[{os.fstat(serverSocket).st_ino}]",
            f"socket:[{os.fstat(client.transport.fileno()).st_ino}]",
        ]
        during = openDescriptors()
        # The file, both ends, and for sendfile the duplicate of the
        # server's socket that its bursts use.
        held = 4 if isinstance(transfer, SendfileTransfer) else 3
        self.assertEqual(sum(during.count(target) for target in gone), held)
        lost = self.factory.nextLost()
        client.transport.abortConnection()
        yield client.closed
        yield lost
        self.assertIsNone(server.transfer)
        self.assertEqual(self.factory.transfers, set())
        for _ in range(10000):
            if not getattr(transfer, "_inFlight", False):
                break
            # A burst under way in a thread releases its descriptors when
            # it returns, within a few turns of the reactor.
            yield task.deferLater(_reactor, 0, lambda: None)
        after = openDescriptors()
        self.assertEqual([target for target in gone if target in after], [])
        self.assertLessEqual(len(after), len(during) - held)

    @defer.inlineCallbacks
    def test_truncatedDuringTransfer(self) -> defer.Generator:
        """
        A file truncated mid-transfer ends the transfer early: the client
        gets fewer bytes than announced, and never more.

        Through the producer, every byte is the file's. With sendfile, the
        bytes already handed to the kernel but not yet sent are the file's
        pages at the time they leave (zero copy): past the new end of the
        file they may read as zeros. The short count is what tells the
        client the download is bad.
        """
        size = 64 * 2**20
        path, client = yield self.pausedDownload("shrinking", b"s", size)
        os.truncate(path, 2**20)
        client.transport.resumeProducing()
        received = yield client.closed
        header = b"OK %d\n" % size
        self.assertTrue(received.startswith(header))
        body = received[len(header) :]
        self.assertLess(len(body), size)
        self.assertEqual(body[: 2**20], b"s" * 2**20)
        if not self.sendfile:
            self.assertEqual(body, b"s" * len(body))

    @defer.inlineCallbacks
    def test_grownDuringTransfer(self) -> defer.Generator:
        """
        A file that grows mid-transfer is sent up to its announced size.
        """
        size = 16 * 2**20
        path, client = yield self.pausedDownload("growing", b"g", size)
        with open(path, "ab") as stream:
            stream.write(b"X" * size)
        client.transport.resumeProducing()
        received = yield client.closed
        self.assertEqual(received, b"OK %d\n" % size + b"g" * size)

    @defer.inlineCallbacks
    def test_bookClient(self) -> defer.Generator:
        """
        A client written the way the book's getfile.py is (send the name
        and a newline, read until the server closes) gets the file.
        """

        def bookClient(port: int, filename: str) -> bytes:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.connect(("127.0.0.1", port))
            sock.send((filename + "\n").encode())
            chunks = []
            while True:
                data = sock.recv(1024)
                if not data:
                    break
                chunks.append(data)
            sock.close()
            return b"".join(chunks)

        received = yield threads.deferToThread(bookClient, self.port, "big.bin")
        self.assertEqual(received, content(self.root, "big.bin"))
        received = yield threads.deferToThread(bookClient, self.port, "../top-secret")
        self.assertEqual(received, b"")

    @defer.inlineCallbacks
    def test_netcat(self) -> defer.Generator:
        """
        C{nc -N}, which half-closes after sending the request, gets the
        whole file.
        """
        from tests.common import runCommand

        out, err, code = yield runCommand(
            "/usr/bin/env",
            "nc",
            "-N",
            "127.0.0.1",
            str(self.port),
            stdin=b"GETFILE/1 0 k1024\n",
        )
        self.assertEqual((out, code), (b"OK 1024\n" + content(self.root, "k1024"), 0))

    @defer.inlineCallbacks
    def test_tls(self) -> defer.Generator:
        """
        Over TLS the file goes through the producer, never sendfile, and
        arrives byte-identical.
        """
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        serverOptions = ssl.PrivateCertificate.loadPEM(
            cert.private_key_and_cert_chain_pem.bytes()
        ).options()
        port = self.listen(TLSMemoryBIOFactory(serverOptions, False, self.logged))
        clientOptions = ssl.optionsForClientTLS(
            "127.0.0.1", ssl.Certificate.loadPEM(ca.cert_pem.bytes())
        )
        chosen = self.recordTransfers()
        client = Received(b"GETFILE/1 0 big.bin\n")
        endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", port)
        yield connectProtocol(wrapClientTLS(clientOptions, endpoint), client)
        received = yield client.closed
        self.assertEqual(received, b"OK %d\n" % BIG + content(self.root, "big.bin"))
        self.assertEqual(chosen, [FileTransfer])

    @defer.inlineCallbacks
    def test_transferKind(self) -> defer.Generator:
        """
        On plain TCP, sendfile is used unless it was turned off.
        """
        chosen = self.recordTransfers()
        yield self.fetch(b"k1024\n")
        self.assertEqual(chosen, [SendfileTransfer if self.sendfile else FileTransfer])


class ProducerLoopbackTests(LoopbackTests):
    """
    The same downloads with C{os.sendfile} turned off.
    """

    sendfile = False


class EagerWriterMixin:
    """
    Put netd's eager-writing L{PassThroughWrapper} right on the socket, and
    the connection log inside it (as in netd's own stack, with the policy's
    wrapper outermost).
    """

    timeout = 60

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        eager = WrappingFactory(self.logged)  # type: ignore[attr-defined]
        eager.protocol = PassThroughWrapper
        self.port = self.listen(eager)  # type: ignore[attr-defined]


class EagerProducerLoopbackTests(EagerWriterMixin, ProducerLoopbackTests):
    """
    The producer's downloads under a wrapper that writes eagerly: the
    transfer still hears when to send more.
    """


class EagerSendfileLoopbackTests(EagerWriterMixin, LoopbackTests):
    """
    The sendfile downloads under a wrapper that writes eagerly.
    """
