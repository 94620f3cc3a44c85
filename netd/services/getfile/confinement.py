# -*- test-case-name: tests.services.getfile.test_getfile -*-
"""
What a getfile request asks for, and whether it may have it: the request
line's two forms, and L{ConfinedRoot}, which opens a file only when its real
path lies inside the real root.

PATH is relative to the root (C{/} and C{\\} both separate names; a leading
separator means the root). Only regular files whose real path lies inside
the real root are served; hidden names (C{.x}, and so C{.} and C{..}) and
NUL are refused. The file is opened one directory at a time from the root
without following links, and non-blocking, so a FIFO never hangs the server.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from typing import NamedTuple

MAX_LINE = 4096
"""The longest request line, in bytes, its C{\\n} included."""

EXTENDED_PREFIX = b"GETFILE/1 "
"""How an extended request line starts."""

_DIGITS = re.compile(rb"[0-9]+")
_SEPARATORS = re.compile(r"[/\\]")


class RequestRefused(Exception):  # noqa: N818 - a refusal is not an error
    """
    A request that will not be served.

    @ivar code: the extended form's error code (400, 403, 404, 416, 503).
    @ivar message: what the client is told; never anything about the
        server's file system.
    @ivar reason: what the log is told.
    """

    def __init__(self, code: int, message: str, reason: str) -> None:
        super().__init__(code, message, reason)
        self.code = code
        self.message = message
        self.reason = reason

    def errorLine(self) -> bytes:
        """
        The extended form's reply: C{ERR CODE MESSAGE\\n}.
        """
        return f"ERR {self.code} {self.message}\n".encode()


class GetFileRequest(NamedTuple):
    """
    A parsed request line.

    @ivar extended: whether it is the extended form (else the book form).
    @ivar offset: where to start, in bytes (always 0 for the book form).
    @ivar path: the requested path, relative to the root.
    """

    extended: bool
    offset: int
    path: str


class OpenedFile(NamedTuple):
    """
    A file opened for a request: its descriptor (the caller closes it) and
    its size when it was opened.
    """

    fd: int
    size: int


def isExtended(line: bytes) -> bool:
    """
    Whether a request line (or its beginning) is in the extended form.
    """
    return line.startswith(EXTENDED_PREFIX)


def parseRequestLine(line: bytes) -> GetFileRequest:
    """
    Parse one request line.

    @param line: the line without its C{\\n}; a trailing C{\\r} is dropped.
    @raise RequestRefused: with code 400 when the line is malformed: not UTF-8, a
        NUL anywhere, or (extended form) an OFFSET that is not decimal digits
        or no PATH at all.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    if b"\x00" in line:
        raise RequestRefused(400, "bad request", "NUL in the request")
    offset = 0
    extended = isExtended(line)
    if extended:
        offsetText, space, rawPath = line[len(EXTENDED_PREFIX) :].partition(b" ")
        if not space or _DIGITS.fullmatch(offsetText) is None:
            raise RequestRefused(400, "bad request", "malformed GETFILE/1 request")
        offset = int(offsetText)
    else:
        rawPath = line
    try:
        path = rawPath.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestRefused(400, "bad request", "the path is not UTF-8") from None
    return GetFileRequest(extended, offset, path)


def requestComponents(path: str) -> list[str]:
    """
    Split a requested path into names, on C{/} and C{\\}, dropping empty ones.

    @raise RequestRefused: with code 403 for a hidden name (one starting with
        C{.}, which includes C{.} and C{..}), 400 for a NUL.
    """
    if "\x00" in path:
        raise RequestRefused(400, "bad request", "NUL in the path")
    components = [name for name in _SEPARATORS.split(path) if name]
    if any(name.startswith(".") for name in components):
        raise RequestRefused(403, "forbidden", "a hidden, '.' or '..' name in the path")
    return components


def _refusalFor(error: OSError) -> RequestRefused:
    """
    What to tell a client whose file could not be opened.
    """
    reason = os.strerror(error.errno) if error.errno else str(error)
    if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
        return RequestRefused(404, "not found", reason)
    if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return RequestRefused(503, "busy", reason)
    return RequestRefused(403, "forbidden", reason)


class ConfinedRoot:
    """
    A directory whose regular files, and nothing else, may be opened.

    A requested path is resolved (symbolic links included) and must lie
    inside the resolved root, by whole path components (C{/srv/data2} is
    not inside C{/srv/data}, unlike Twisted's C{FilePath.preauthChild}
    thinks, its issue 6527). The resolved path is then opened one directory
    at a time from the root with C{O_NOFOLLOW}, so a symbolic link swapped
    in after the check fails to open instead of leading outside. The file
    is checked to be regular before it is opened (opening a device can have
    effects) and again after (its C{fstat} must be the file checked); it is
    opened with C{O_NONBLOCK}, so a FIFO swapped in never blocks.

    @ivar path: the real path of the root.
    """

    _DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    _FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

    def __init__(self, path: str) -> None:
        """
        @param path: the root directory; resolved now.
        """
        self.path = os.path.realpath(path)

    def resolve(self, requestPath: str) -> list[str]:
        """
        Find the names, from the root, of the real file a request names.

        @raise RequestRefused: with code 403 if it lies outside the root or any of
            its names is hidden, or if its links cannot be resolved (a
            chain too long, a loop, a name changed meanwhile); 404 if a name
            vanished meanwhile; 400 if the path holds a NUL.
        """
        components = requestComponents(requestPath)
        try:
            real = os.path.realpath(os.path.join(self.path, *components))
        except RecursionError:
            # A chain of links longer than Python's recursion limit.
            raise _refusalFor(OSError(errno.ELOOP, "")) from None
        except OSError as error:
            # A name that changed while it was resolved (EINVAL: a link
            # replaced by a file between lstat and readlink).
            raise _refusalFor(error) from None
        if os.path.commonpath([self.path, real]) != self.path:
            raise RequestRefused(403, "forbidden", "the path leads outside the root")
        inside = os.path.relpath(real, self.path)
        names = [] if inside == os.curdir else inside.split(os.sep)
        if any(name.startswith(".") for name in names):
            raise RequestRefused(403, "forbidden", "the path leads to a hidden name")
        return names

    def openFile(self, requestPath: str) -> OpenedFile:
        """
        Open the regular file a request names.

        @param requestPath: the path as the client sent it.
        @return: the open file; the caller closes its descriptor.
        @raise RequestRefused: when the file may not or cannot be served.
        """
        names = self.resolve(requestPath)
        if not names:
            raise RequestRefused(403, "forbidden", "the root is a directory")
        try:
            directory = os.open(self.path, self._DIRECTORY)
            try:
                for name in names[:-1]:
                    child = os.open(name, self._DIRECTORY, dir_fd=directory)
                    os.close(directory)
                    directory = child
                checked = os.stat(names[-1], dir_fd=directory, follow_symlinks=False)
                if not stat.S_ISREG(checked.st_mode):
                    raise RequestRefused(403, "forbidden", "not a regular file")
                fd = os.open(names[-1], self._FILE, dir_fd=directory)
            finally:
                os.close(directory)
        except OSError as error:
            raise _refusalFor(error) from None
        try:
            opened = os.fstat(fd)
        except OSError as error:
            os.close(fd)
            raise _refusalFor(error) from None
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
            checked.st_dev,
            checked.st_ino,
        ):
            os.close(fd)
            raise RequestRefused(403, "forbidden", "the file was replaced while opened")
        return OpenedFile(fd, opened.st_size)
