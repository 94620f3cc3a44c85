"""
Tests for L{netd.services.getfile.client}: the client protocol, the progress bar, the
command's options, and whole downloads from a real server on loopback.
"""

from __future__ import annotations

import io
import os
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet import reactor as _reactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.cli import Options
from netd.services.getfile.client import (
    Download,
    GetFileClientProtocol,
    GetFileCommand,
    GetFileError,
    ProgressBar,
    remoteName,
)
from netd.services.getfile.server import GetFileFactory


def connected(
    path: str = "a/file.bin", **kwargs: Any
) -> tuple[GetFileClientProtocol, StringTransport, io.BytesIO]:
    output = io.BytesIO()
    client = GetFileClientProtocol(path, output, **kwargs)
    transport = StringTransport()
    client.makeConnection(transport)
    return client, transport, output


class ClientProtocolTests(SynchronousTestCase):
    """
    L{GetFileClientProtocol} over a L{StringTransport}.
    """

    def test_requestLines(self) -> None:
        """
        The extended form sends its offset; the legacy form the path alone.
        """
        _, transport, _ = connected("dir/x y.txt", offset=12)
        self.assertEqual(transport.value(), b"GETFILE/1 12 dir/x y.txt\n")
        _, transport, _ = connected("dir\\x.txt", legacy=True)
        self.assertEqual(transport.value(), b"dir\\x.txt\n")

    def test_complete(self) -> None:
        """
        A header split across chunks, then all the bytes: complete.
        """
        client, _, output = connected()
        for chunk in [b"O", b"K 1", b"0\nabc", b"defghij"]:
            client.dataReceived(chunk)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(output.getvalue(), b"abcdefghij")
        self.assertEqual(self.successResultOf(client.done), Download(10, 10, True))

    def test_short(self) -> None:
        """
        Fewer bytes than SIZE before the close: not complete.
        """
        client, _, _ = connected(offset=4)
        client.dataReceived(b"OK 10\nab")
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(client.done), Download(10, 2, False))

    def test_error(self) -> None:
        """
        C{ERR CODE MESSAGE} fails with the server's message and the path.
        """
        client, transport, output = connected()
        client.dataReceived(b"ERR 404 not found\n")
        self.assertTrue(transport.disconnecting)
        client.connectionLost(Failure(ConnectionDone()))
        error = self.failureResultOf(client.done, GetFileError).value
        self.assertEqual(str(error), "the server refused 'a/file.bin': 404 not found")
        self.assertEqual(output.getvalue(), b"")

    def test_tooMuch(self) -> None:
        """
        Bytes beyond SIZE are not written; the download fails.
        """
        client, transport, output = connected()
        client.dataReceived(b"OK 2\nabc")
        client.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(client.done, GetFileError)
        self.assertEqual(output.getvalue(), b"")

    def test_notGetfile(self) -> None:
        """
        A reply that is not getfile's (or a header that never ends) fails.
        """
        for reply in [b"HTTP/1.1 200 OK\r\n", b"OK ten\n", b"x" * 5000]:
            client, transport, _ = connected()
            client.dataReceived(reply)
            client.connectionLost(Failure(ConnectionDone()))
            self.failureResultOf(client.done, GetFileError)

    def test_closedWithoutReply(self) -> None:
        """
        A server that closes without a header (an old, book-form server
        refusing the extended line) fails.
        """
        client, _, _ = connected()
        client.connectionLost(Failure(ConnectionDone()))
        error = self.failureResultOf(client.done, GetFileError).value
        self.assertIn("without replying", str(error))

    def test_legacy(self) -> None:
        """
        The book form takes every byte; a clean close completes it and a
        broken connection does not.
        """
        client, _, output = connected(legacy=True)
        client.dataReceived(b"OK 5\nraw")
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(output.getvalue(), b"OK 5\nraw")
        self.assertEqual(self.successResultOf(client.done), Download(None, 8, True))
        client, _, _ = connected(legacy=True)
        client.dataReceived(b"raw")
        client.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.successResultOf(client.done), Download(None, 3, False))


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


class ProgressBarTests(SynchronousTestCase):
    """
    L{ProgressBar} draws a throttled bar.
    """

    def test_drawn(self) -> None:
        """
        The bar shows the percentage and sizes, at most every 0.1 s, and
        its last state when finished.
        """
        clock = task.Clock()
        stream = TerminalStream()
        bar = ProgressBar(stream, clock, "x.bin")
        clock.advance(1)
        bar(2**20, 4 * 2**20)
        bar(2 * 2**20, 4 * 2**20)
        self.assertEqual(stream.getvalue().count("\r"), 1)
        self.assertIn(" 25% 1.0/4.0 MiB", stream.getvalue())
        clock.advance(1)
        bar(4 * 2**20, 4 * 2**20)
        bar.finish()
        self.assertTrue(stream.getvalue().endswith("100% 4.0/4.0 MiB 1.5 MiB/s\n"))

    def test_nothingDrawn(self) -> None:
        """
        A bar never drawn does not end a line.
        """
        stream = TerminalStream()
        ProgressBar(stream, task.Clock(), "x").finish()
        self.assertEqual(stream.getvalue(), "")


class OptionsTests(SynchronousTestCase):
    """
    C{netd-client getfile}'s options.
    """

    def parse(self, *argv: str) -> GetFileCommand:
        options = Options()
        options.parseOptions(["getfile", *argv])
        command: GetFileCommand = options.subOptions
        return command

    def test_defaults(self) -> None:
        """
        The file is saved under its own name, from port 50001.
        """
        command = self.parse("dir\\sub/file.txt")
        self.assertEqual(command["port"], 50001)
        self.assertEqual(command["target"], "file.txt")
        self.assertFalse(command["legacy"])

    def test_optionsAfterPath(self) -> None:
        """
        Options may follow PATH, as in C{getfile PATH -o OUT}.
        """
        command = self.parse("file.txt", "-o", "out.txt", "--resume", "-p", "7")
        self.assertEqual(
            (command["path"], command["target"], command["resume"], command["port"]),
            ("file.txt", "out.txt", True, 7),
        )

    def test_outputDirectory(self) -> None:
        """
        An output directory gets the file under its own name.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        command = self.parse("a/b.txt", "-o", directory)
        self.assertEqual(command["target"], os.path.join(directory, "b.txt"))

    def test_refused(self) -> None:
        """
        --legacy with --resume, and a path with no file name, are refused.
        """
        self.assertRaises(UsageError, self.parse, "--legacy", "--resume", "x")
        self.assertRaises(UsageError, self.parse, "/")
        self.assertRaises(UsageError, self.parse, "dir/..")
        self.assertRaises(UsageError, self.parse)

    def test_remoteName(self) -> None:
        """
        The name is the path's last, by either separator.
        """
        self.assertEqual(remoteName("C:\\x\\y.txt"), "y.txt")
        self.assertEqual(remoteName("/a/b/"), "b")


class ShortServer(protocol.Protocol):
    """
    A server that announces 100 bytes and sends 10.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"OK 100\n" + b"0123456789")
        self.transport.loseConnection()


class CommandTests(TestCase):
    """
    Whole downloads with L{GetFileCommand} from a real server on loopback.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.data = os.urandom(2 * 2**20 + 3)
        with open(os.path.join(self.root, "file.bin"), "wb") as stream:
            stream.write(self.data)
        self.port = self.listen(GetFileFactory(_reactor, self.root))
        self.out = os.path.abspath(self.mktemp())
        os.makedirs(self.out)

    def listen(self, factory: Any) -> int:
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def command(self, *argv: str, port: int | None = None) -> GetFileCommand:
        options = Options()
        options.parseOptions(
            ["getfile", "-p", str(port or self.port), "-o", self.out, *argv]
        )
        command: GetFileCommand = options.subOptions
        command.stdout = io.StringIO()
        command.stderr = io.StringIO()
        return command

    def leftovers(self) -> list[str]:
        return sorted(os.listdir(self.out))

    @defer.inlineCallbacks
    def test_download(self) -> defer.Generator:
        """
        The file is saved whole, under its name, with nothing else left.
        """
        command = self.command("file.bin")
        status = yield command.run(_reactor)
        self.assertEqual(status, 0)
        with open(os.path.join(self.out, "file.bin"), "rb") as stream:
            self.assertEqual(stream.read(), self.data)
        self.assertEqual(self.leftovers(), ["file.bin"])
        self.assertIn(f"{len(self.data)} bytes", command.stdout.getvalue())
        self.assertEqual(command.stderr.getvalue(), "")

    @defer.inlineCallbacks
    def test_legacy(self) -> defer.Generator:
        """
        The book form saves the file too.
        """
        yield self.command("--legacy", "file.bin").run(_reactor)
        with open(os.path.join(self.out, "file.bin"), "rb") as stream:
            self.assertEqual(stream.read(), self.data)
        self.assertEqual(self.leftovers(), ["file.bin"])

    @defer.inlineCallbacks
    def test_legacyNothingLeavesNothing(self) -> defer.Generator:
        """
        The book form's close without a byte (a missing file, here) fails,
        saying that the book form cannot tell an error from an empty file,
        and leaves no file behind.
        """
        failure = yield self.assertFailure(
            self.command("--legacy", "missing.bin").run(_reactor), GetFileError
        )
        self.assertIn("cannot tell an error from an empty file", str(failure))
        self.assertEqual(self.leftovers(), [])

    @defer.inlineCallbacks
    def test_errorLeavesNothing(self) -> defer.Generator:
        """
        A refused download fails with the server's message and leaves no
        file, partial or otherwise; an existing file is untouched.
        """
        target = os.path.join(self.out, "missing.bin")
        with open(target, "wb") as stream:
            stream.write(b"old")
        failure = yield self.assertFailure(
            self.command("missing.bin").run(_reactor), GetFileError
        )
        self.assertIn("404 not found", str(failure))
        self.assertEqual(self.leftovers(), ["missing.bin"])
        with open(target, "rb") as stream:
            self.assertEqual(stream.read(), b"old")

    @defer.inlineCallbacks
    def test_shortLeavesNothing(self) -> defer.Generator:
        """
        A short transfer fails, saying so, and leaves no partial file.
        """
        port = self.listen(protocol.Factory.forProtocol(ShortServer))
        failure = yield self.assertFailure(
            self.command("file.bin", port=port).run(_reactor), GetFileError
        )
        self.assertIn("short transfer: 10 of 100 bytes", str(failure))
        self.assertEqual(self.leftovers(), [])

    @defer.inlineCallbacks
    def test_resume(self) -> defer.Generator:
        """
        With --resume a short transfer keeps C{.NAME.part}, and the next
        --resume asks for the rest from its end and completes the file.
        """
        port = self.listen(protocol.Factory.forProtocol(ShortServer))
        failure = yield self.assertFailure(
            self.command("--resume", "file.bin", port=port).run(_reactor),
            GetFileError,
        )
        self.assertIn("--resume", str(failure))
        self.assertEqual(self.leftovers(), [".file.bin.part"])
        partial = os.path.join(self.out, ".file.bin.part")
        with open(partial, "wb") as stream:
            stream.write(self.data[:1000])
        status = yield self.command("--resume", "file.bin").run(_reactor)
        self.assertEqual(status, 0)
        with open(os.path.join(self.out, "file.bin"), "rb") as stream:
            self.assertEqual(stream.read(), self.data)
        self.assertEqual(self.leftovers(), ["file.bin"])

    @defer.inlineCallbacks
    def test_resumeComplete(self) -> defer.Generator:
        """
        Resuming a partial file that is already whole just renames it.
        """
        with open(os.path.join(self.out, ".file.bin.part"), "wb") as stream:
            stream.write(self.data)
        yield self.command("--resume", "file.bin").run(_reactor)
        self.assertEqual(self.leftovers(), ["file.bin"])

    @defer.inlineCallbacks
    def test_resumePastTheEnd(self) -> defer.Generator:
        """
        A partial file longer than the server's is refused (416) and kept.
        """
        with open(os.path.join(self.out, ".file.bin.part"), "wb") as stream:
            stream.write(self.data + b"more")
        failure = yield self.assertFailure(
            self.command("--resume", "file.bin").run(_reactor), GetFileError
        )
        self.assertIn("416", str(failure))
        self.assertEqual(self.leftovers(), [".file.bin.part"])

    @defer.inlineCallbacks
    def test_progressOnTerminal(self) -> defer.Generator:
        """
        A progress bar is drawn on a terminal, and only there.
        """
        command = self.command("file.bin")
        command.stderr = TerminalStream()
        yield command.run(_reactor)
        self.assertIn("100%", command.stderr.getvalue())
