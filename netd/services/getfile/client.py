# -*- test-case-name: tests.services.getfile.test_getfileclient -*-
"""
The getfile client: C{netd-client getfile PATH [-o OUT] [--legacy] [--resume]}.

It speaks the extended form (C{GETFILE/1 OFFSET PATH}) by default, so it
knows the file's size and any error; C{--legacy} speaks the book's form to
servers that know no other. The bytes go to a temporary file beside the
target, renamed into place only when they are all there; with
C{--resume} that file is C{.NAME.part}, kept when a download stops short
and continued from its end by the next C{--resume}.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import IO, Any, NamedTuple

from twisted.internet import defer
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python import usage
from twisted.python.failure import Failure

from netd.cli import ClientCommand
from netd.services.getfile.confinement import MAX_LINE


class GetFileError(Exception):
    """
    A download that failed: refused by the server, or short.
    """


class Download(NamedTuple):
    """
    How a download ended.

    @ivar size: the file's whole size as the server announced it (extended
        form), else L{None}.
    @ivar received: the file's bytes received on this connection.
    @ivar complete: whether every byte arrived (extended form: the count
        matches SIZE; book form: the server closed cleanly).
    """

    size: int | None
    received: int
    complete: bool


class GetFileClientProtocol(Protocol):
    """
    Request one file and write its bytes to a file object.

    @ivar done: fires with a L{Download} when the server closes, or fails
        with L{GetFileError} when the server answers C{ERR} or garbage.
    """

    def __init__(
        self,
        path: str,
        output: IO[bytes],
        offset: int = 0,
        legacy: bool = False,
        progress: Any = None,
    ) -> None:
        """
        @param path: the file's path under the server's root.
        @param output: where the bytes go.
        @param offset: where to start (extended form only).
        @param legacy: speak the book's form (no size, no errors, no offset).
        @param progress: called with C{(bytes so far, size or None)} as bytes
            arrive, counting the offset.
        """
        self.path = path
        self.output = output
        self.offset = offset
        self.legacy = legacy
        self.progress = progress
        self.size: int | None = None
        self.received = 0
        self.done: defer.Deferred[Download] = defer.Deferred()
        self._header = b""
        self._error: GetFileError | None = None

    def requestLine(self) -> bytes:
        """
        The request line this client sends.
        """
        path = self.path.encode("utf-8")
        if self.legacy:
            return path + b"\n"
        return b"GETFILE/1 %d %s\n" % (self.offset, path)

    def connectionMade(self) -> None:
        self.transport.write(self.requestLine())

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        if not self.legacy and self.size is None:
            self._header += data
            newline = self._header.find(b"\n")
            if newline == -1:
                if len(self._header) > MAX_LINE:
                    self._fail(GetFileError("the server's reply is not getfile"))
                return
            line, data = self._header[:newline], self._header[newline + 1 :]
            self._header = b""
            self._readHeader(line)
            if self._error is not None:
                return
        if not data:
            return
        if self.size is not None and self.offset + self.received + len(data) > (
            self.size
        ):
            self._fail(GetFileError("the server sent more bytes than it announced"))
            return
        self.output.write(data)
        self.received += len(data)
        if self.progress is not None:
            self.progress(self.offset + self.received, self.size)

    def _readHeader(self, line: bytes) -> None:
        words = line.rstrip(b"\r").split(b" ", 2)
        if len(words) == 2 and words[0] == b"OK" and words[1].isdigit():
            self.size = int(words[1])
        elif len(words) >= 2 and words[0] == b"ERR":
            message = b" ".join(words[1:]).decode("utf-8", "replace")
            self._fail(GetFileError(f"the server refused {self.path!r}: {message}"))
        else:
            self._fail(GetFileError(f"the server's reply is not getfile: {line!r}"))

    def _fail(self, error: GetFileError) -> None:
        self._error = error
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        if self._error is not None:
            self.done.errback(self._error)
        elif not self.legacy and self.size is None:
            self.done.errback(
                GetFileError("the server closed the connection without replying")
            )
        elif self.legacy:
            self.done.callback(
                Download(None, self.received, reason.check(ConnectionDone) is not None)
            )
        else:
            assert self.size is not None
            self.done.callback(
                Download(
                    self.size,
                    self.received,
                    self.offset + self.received == self.size,
                )
            )


class ProgressBar:
    """
    A one-line progress bar, redrawn at most ten times a second.
    """

    width = 30

    def __init__(self, stream: IO[str], clock: Any, name: str) -> None:
        """
        @param stream: a terminal.
        @param clock: an L{IReactorTime}.
        @param name: what is being downloaded.
        """
        self.stream = stream
        self.clock = clock
        self.name = name
        self.started = clock.seconds()
        self._drawn = 0.0
        self._shown = False
        self._first: int | None = None
        self._last: tuple[int, int | None] = (0, None)

    def __call__(self, done: int, size: int | None, final: bool = False) -> None:
        now = self.clock.seconds()
        self._last = (done, size)
        if self._first is None:
            self._first = done
        if not final and now - self._drawn < 0.1:
            return
        self._drawn = now
        elapsed = max(now - self.started, 1e-6)
        rate = (done - self._first) / elapsed / 2**20
        if size:
            filled = int(self.width * done / size)
            bar = "#" * filled + "." * (self.width - filled)
            line = (
                f"\r{self.name} [{bar}] {100 * done // size:3d}% "
                f"{done / 2**20:.1f}/{size / 2**20:.1f} MiB {rate:.1f} MiB/s"
            )
        else:
            line = f"\r{self.name} {done / 2**20:.1f} MiB {rate:.1f} MiB/s"
        self.stream.write(line)
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        """
        Draw the bar as it ended, and end its line, if one was drawn.
        """
        if self._shown:
            self(*self._last, final=True)
            self.stream.write("\n")
            self.stream.flush()


def remoteName(path: str) -> str:
    """
    The last name of a requested path (C{/} and C{\\} both separate).

    @raise usage.UsageError: when there is none to save a file as.
    """
    names = [name for name in path.replace("\\", "/").split("/") if name]
    if not names or names[-1] in (".", ".."):
        raise usage.UsageError(f"no file name in {path!r}: give -o OUT")
    return names[-1]


class GetFileCommand(ClientCommand):
    """
    C{netd-client getfile [options] PATH}: download one file.
    """

    synopsis = "[options] PATH"
    defaultPort = 50001
    optParameters = [
        [
            "output",
            "o",
            None,
            "Save the file here (a directory: under its own name there) "
            "[default: its name in the current directory].",
        ],
    ]
    optFlags = [
        ["legacy", None, "Speak the book's form (PATH\\n): no size, no errors."],
        ["resume", None, "Continue .NAME.part, and keep it if this one stops short."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.stdout: IO[str] = sys.stdout
        self.stderr: IO[str] = sys.stderr

    def parseOptions(self, options: Any = None) -> None:
        """
        Accept options after PATH too (C{getfile PATH -o OUT}), which the
        getopt under L{usage.Options} would take for more arguments.
        """
        if options is None:
            options = sys.argv[1:]
        flags, arguments = [], []
        tokens = iter(options)
        for token in tokens:
            if token == "--":
                arguments.extend(tokens)
            elif token.startswith("--") and token[2:] + "=" in self.longOpt:
                flags += [token, next(tokens, "")]
            elif (
                token.startswith("-")
                and len(token) == 2
                and token[1] + ":" in (self.shortOpt)
            ):
                flags += [token, next(tokens, "")]
            elif token.startswith("-") and token != "-":
                flags.append(token)
            else:
                arguments.append(token)
        super().parseOptions([*flags, "--", *arguments])

    def parseArgs(self, path: str) -> None:
        self["path"] = path

    def postOptions(self) -> None:
        super().postOptions()
        if self["legacy"] and self["resume"]:
            raise usage.UsageError("--resume needs the extended form, not --legacy")
        name = remoteName(self["path"])
        target = self["output"] or name
        if os.path.isdir(target):
            target = os.path.join(target, name)
        self["target"] = target

    def partialPath(self) -> str:
        """
        Where C{--resume} keeps a download that is not complete yet.
        """
        directory, name = os.path.split(self["target"])
        return os.path.join(directory, f".{name}.part")

    def _openPartial(self) -> tuple[str, IO[bytes]]:
        if self["resume"]:
            partial = self.partialPath()
            return partial, open(partial, "ab")
        directory, name = os.path.split(self["target"])
        fd, partial = tempfile.mkstemp(
            prefix=f".{name}.", suffix=".part", dir=directory or "."
        )
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open() would have made it
        return partial, os.fdopen(fd, "wb")

    @defer.inlineCallbacks
    def run(self, reactor: Any) -> Any:
        partial, output = self._openPartial()
        offset = output.tell()
        progress = None
        if self.stderr.isatty():
            progress = ProgressBar(self.stderr, reactor, self["target"])
        client = GetFileClientProtocol(
            self["path"], output, offset, self["legacy"], progress
        )
        try:
            try:
                yield connectProtocol(self.endpoint(reactor), client)
                download = yield client.done
            finally:
                output.close()
                if progress is not None:
                    progress.finish()
            if not download.complete:
                raise GetFileError(self._shortMessage(download, offset, partial))
            if self["legacy"] and download.received == 0:
                raise GetFileError(
                    "received nothing: the server refused the file or it is "
                    "empty (the book form cannot tell an error from an empty "
                    "file; without --legacy the server says which)"
                )
            os.replace(partial, self["target"])
        except BaseException:
            # --resume keeps what it has, for the next --resume; else nothing
            # is left behind.
            if os.path.exists(partial) and not (
                self["resume"] and os.path.getsize(partial) > 0
            ):
                os.unlink(partial)
            raise
        self.report(download, offset)
        return 0

    def _shortMessage(self, download: Download, offset: int, partial: str) -> str:
        got = offset + download.received
        if download.size is None:
            message = f"the connection broke after {got} bytes"
        else:
            message = f"short transfer: {got} of {download.size} bytes"
        if self["resume"]:
            return f"{message}; kept in {partial}, run again with --resume"
        return message

    def report(self, download: Download, offset: int) -> None:
        """
        Say what was saved.
        """
        size = offset + download.received
        self.stdout.write(f"{self['target']}: {size} bytes\n")
        self.stdout.flush()
