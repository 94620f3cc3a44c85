# -*- test-case-name: tests.services.getfile.test_getfile -*-
"""
The getfile service: files under a root directory, by the book's protocol
and by an extended one that reports sizes and errors and can resume.

Two request forms, told apart by the first token of the request line:

    - the book form (I{Programming Python}'s getfile.py): C{PATH\\n}; the
      reply is the file's raw bytes, then the server closes; on any error
      the server closes without sending a byte;
    - the extended form: C{GETFILE/1 OFFSET PATH\\n}; the reply is
      C{OK SIZE\\n} and the bytes from OFFSET to SIZE, or
      C{ERR CODE MESSAGE\\n}, then the server closes.

PATH is relative to the root (C{/} and C{\\} both separate names; a leading
separator means the root). Only regular files whose real path lies inside
the real root are served; hidden names (C{.x}, and so C{.} and C{..}) and
NUL are refused. Files are streamed by a pull producer: with C{os.sendfile}
straight from the page cache to the socket on plain TCP and UNIX
connections, and in chunks through the transport otherwise (TLS).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IPullProducer,
    IReactorThreads,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer

from netd.connlog import sourceOf
from netd.listeners import describeAddress
from netd.metrics import NO_GETFILE_METRICS, GetFileMetrics
from netd.plugin import IGracefulProtocol
from netd.services.getfile.confinement import (
    MAX_LINE,
    ConfinedRoot,
    GetFileRequest,
    RequestRefused,
    isExtended,
    parseRequestLine,
)

CHUNK_SIZE = 2**16
"""Bytes read and written at a time when streaming through the transport."""

SENDFILE_BURST = 2**24
"""Bytes sent with C{os.sendfile} before letting other connections run."""


def directSocket(transport: Any) -> tuple[Any, list[ProtocolWrapper]] | None:
    """
    Find the plain socket connection under a protocol's transport, if any.

    Policies and connection logging wrap a protocol in
    L{ProtocolWrapper}s, each the transport of the one inside; TLS is such
    a wrapper too, and provides L{ISSLTransport}.

    @return: the L{tcp.Server} (UNIX servers are ones too) and the wrappers
        above it, outermost first; or L{None} when there is TLS on the way
        or the connection is not a socket the reactor writes to.
    """
    wrappers: list[ProtocolWrapper] = []
    current = transport
    while isinstance(current, ProtocolWrapper):
        if ISSLTransport.providedBy(current):
            return None
        wrappers.append(current)
        current = current.transport
    if not isinstance(current, tcp.Server) or getattr(current, "TLS", False):
        return None
    if ISSLTransport.providedBy(current):
        return None
    return current, wrappers


def reportSentDirectly(wrappers: list[ProtocolWrapper], count: int) -> None:
    """
    Tell the wrappers about bytes sent past them, straight to the socket:
    each that counts bytes (a C{sentDirectly(count)} method, as
    L{netd.connlog.LoggedConnection} has) is told the count, and each that
    watches for idle connections (C{resetTimeout}, as Twisted's
    L{policies.TimeoutProtocol} has) is told there was activity, as a
    C{write} through it would have.
    """
    for wrapper in wrappers:
        # Looked up on the class: a ProtocolWrapper hands unknown attribute
        # names on to its transport, which would count the bytes twice.
        sentDirectly = getattr(type(wrapper), "sentDirectly", None)
        if sentDirectly is not None:
            sentDirectly(wrapper, count)
        resetTimeout = getattr(type(wrapper), "resetTimeout", None)
        if resetTimeout is not None:
            resetTimeout(wrapper)


@implementer(IPullProducer)
class FileTransfer:
    """
    Send a byte range of an open file through a transport, a chunk each
    time the transport asks for more, and never past the range's end.

    @ivar position: the offset of the next byte to send.
    @ivar end: the offset after the last byte to send.
    @ivar sent: how many bytes were sent so far.
    """

    chunkSize = CHUNK_SIZE

    def __init__(
        self,
        fd: int,
        start: int,
        end: int,
        consumer: Any,
        finished: Callable[[bool], None],
    ) -> None:
        """
        @param fd: the open file; this transfer closes it.
        @param start: the first byte's offset.
        @param end: the offset after the last byte (the announced size).
        @param consumer: the transport to write to.
        @param finished: called once, with C{True} when every byte up to
            C{end} was sent, or with C{False} and why not: the file ended
            early (it shrank), could not be read, or the client went away.
            Not called when the transfer is stopped from outside.
        """
        self.fd: int | None = fd
        self.position = start
        self.end = end
        self.sent = 0
        self.consumer = consumer
        self._finished: Callable[..., None] | None = finished
        self._registered = False

    def start(self) -> None:
        """
        Begin: register with the consumer, which asks for the first chunk.
        """
        if self.position >= self.end:
            self._finish(True)
        else:
            self._registered = True
            self.consumer.registerProducer(self, False)

    def resumeProducing(self) -> None:
        """
        The transport's buffer is empty: send the next chunk.
        """
        if self.fd is None:
            return
        try:
            chunk = os.pread(
                self.fd, min(self.chunkSize, self.end - self.position), self.position
            )
        except OSError as error:
            self._finish(False, f"the file could not be read: {error.strerror}")
            return
        if not chunk:
            self._finish(False, FILE_ENDED)
            return
        self.position += len(chunk)
        self.sent += len(chunk)
        self.consumer.write(chunk)
        if self.position >= self.end:
            self._finish(True)

    def stopProducing(self) -> None:
        """
        The connection is gone: close the file.
        """
        self._finished = None
        self.close()

    def close(self) -> None:
        """
        Close the file; nothing more will be sent. Safe to call again.
        """
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def _finish(self, complete: bool, why: str | None = None) -> None:
        self.close()
        finished, self._finished = self._finished, None
        if self._registered:
            self._registered = False
            self.consumer.unregisterProducer()
        if finished is not None:
            if complete:
                finished(True)
            else:
                finished(False, why or FILE_ENDED)


#: Why a transfer stopped short: the file shrank after its size was sent.
FILE_ENDED = "the file ended early"
#: Why a transfer stopped short: the client closed or reset the connection.
CLIENT_GONE = "the client went away"
_PEER_ERRORS = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN}
)


def sendBurst(
    socketFd: int, fd: int, position: int, count: int
) -> tuple[int, str | None]:
    """
    Send up to C{count} bytes of a file from C{position} to a non-blocking
    socket with C{os.sendfile}, until the socket's buffer is full.

    @return: how many bytes were sent, and why the transfer cannot go on
        (L{None} when it can): the file ended before C{count} bytes
        (L{FILE_ENDED}), the client went away (L{CLIENT_GONE}: C{EPIPE},
        C{ECONNRESET}), or the file could not be read.
    """
    sent = 0
    try:
        while sent < count:
            try:
                now = os.sendfile(socketFd, fd, position + sent, count - sent)
            except BlockingIOError:
                return sent, None
            if now == 0:
                return sent, FILE_ENDED
            sent += now
    except OSError as error:
        if error.errno in _PEER_ERRORS:
            return sent, CLIENT_GONE
        return sent, f"the file could not be sent: {error.strerror}"
    return sent, None


class SendfileTransfer(FileTransfer):
    """
    Send a byte range of an open file with C{os.sendfile}, straight from the
    page cache to the socket, whenever the reactor finds the socket writable.

    The socket is the reactor's non-blocking L{tcp.Server}: this producer is
    registered with it as a pull producer, so the transport asks for more
    only once everything written before (the C{OK SIZE} line) is sent.
    Then each burst (L{sendBurst}, until C{EAGAIN} or L{SENDFILE_BURST}
    bytes) runs in the reactor's thread pool, so that a file that is not in
    the page cache yet is read from disk without stopping the reactor, and
    several transfers use several cores; when it is over, the reactor thread
    asks the transport to wake the transfer once the socket is writable
    again (C{startWriting}). The thread works on its own duplicate of the
    socket's descriptor, released only once no burst is under way, so a
    connection closed meanwhile never lets it write to a reused number.

    The bytes bypass the wrappers between the protocol and the socket;
    those that count bytes are told through L{reportSentDirectly}.
    """

    burst = SENDFILE_BURST

    def __init__(
        self,
        fd: int,
        start: int,
        end: int,
        consumer: Any,
        finished: Callable[[bool], None],
        socketTransport: Any,
        wrappers: list[ProtocolWrapper],
        threads: Any,
    ) -> None:
        """
        @param socketTransport: the L{tcp.Server} found by L{directSocket}.
        @param wrappers: the wrappers above it, told about the bytes sent.
        @param threads: an L{IReactorThreads} to run bursts with.
        """
        super().__init__(fd, start, end, consumer, finished)
        self.socketTransport = socketTransport
        self.wrappers = wrappers
        self.threads = threads
        self._socketFd: int | None = os.dup(socketTransport.fileno())
        self._registering = False
        self._inFlight = False
        self._pendingFd: int | None = None

    def start(self) -> None:
        """
        Begin: register, and wait for the transport to empty its buffer.
        """
        self._registering = True
        try:
            super().start()
        finally:
            self._registering = False

    def resumeProducing(self) -> None:
        """
        The socket is writable and the transport's buffer is empty: send a
        burst in a thread.
        """
        if self.fd is None or self._inFlight:
            return
        if self._registering:
            # Called from registerProducer: whatever was written before may
            # still be buffered. The transport asks again once it is sent.
            self.socketTransport.startWriting()
            return
        self._inFlight = True
        self.threads.callInThread(
            self._burstInThread,
            self._socketFd,
            self.fd,
            self.position,
            min(self.end - self.position, self.burst),
        )

    def _burstInThread(self, socketFd: int, fd: int, position: int, count: int) -> None:
        try:
            sent, ended = sendBurst(socketFd, fd, position, count)
        except Exception as error:
            sent, ended = 0, f"the file could not be sent: {error}"
        self.threads.callFromThread(self._burstDone, sent, ended)

    def _burstDone(self, sent: int, ended: str | None) -> None:
        self._inFlight = False
        if self.fd is None:
            # Stopped while the burst was under way.
            self._closeSocket()
            return
        if sent:
            self.position += sent
            self.sent += sent
            reportSentDirectly(self.wrappers, sent)
        if self.position >= self.end:
            self._finish(True)
        elif ended is not None:
            self._finish(False, ended)
        else:
            self.socketTransport.startWriting()

    def close(self) -> None:
        """
        Close the file and the duplicate socket, or, while a burst is under
        way, mark them to be closed when it ends. Safe to call again.
        """
        if self._inFlight:
            fd, self.fd = self.fd, None
            if fd is not None:
                self._pendingFd = fd
            return
        super().close()
        self._closeSocket()

    def _closeSocket(self) -> None:
        pending, self._pendingFd = self._pendingFd, None
        if pending is not None:
            os.close(pending)
        socketFd, self._socketFd = self._socketFd, None
        if socketFd is not None:
            os.close(socketFd)


@implementer(IHalfCloseableProtocol, IGracefulProtocol)
class GetFileProtocol(Protocol):
    """
    Serve one request: read the request line, then send the file or refuse.

    The request line must be complete within the factory's
    C{requestTimeout} and at most L{MAX_LINE} bytes long. Anything the
    client sends after it is ignored; a client that half-closes after its
    request still gets the whole file.

    @ivar factory: the L{GetFileFactory}.
    @ivar request: the parsed request, once there is one.
    @ivar transfer: the L{FileTransfer} under way, if any.
    """

    log = Logger()
    factory: GetFileFactory
    transport: Any

    def __init__(self) -> None:
        self._buffer = b""
        self._timeout: Any = None
        self._answered = False
        self.request: GetFileRequest | None = None
        self.transfer: FileTransfer | None = None
        self._size = 0
        self._outcome = ""
        self._source: str | None = None
        self._stallCheck: Any = None
        self._lastSent = 0

    def connectionMade(self) -> None:
        self._timeout = self.factory.clock.callLater(
            self.factory.requestTimeout, self._timedOut
        )

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        self._buffer += data
        newline = self._buffer.find(b"\n", 0, MAX_LINE)
        if newline == -1:
            if len(self._buffer) >= MAX_LINE:
                self._refuse(RequestRefused(400, "bad request", "line too long"))
            return
        line, self._buffer = self._buffer[:newline], b""
        self._answer(line)

    def _timedOut(self) -> None:
        self._timeout = None
        self._refuse(RequestRefused(400, "bad request", "no request line in time"))

    def readConnectionLost(self) -> None:
        """
        The client half-closed: fine once it sent its request, else refused.
        """
        if not self._answered:
            self._refuse(
                RequestRefused(400, "bad request", "end of input in the request")
            )

    def writeConnectionLost(self) -> None:
        """
        The client cannot read any more: give up.
        """
        self.transport.loseConnection()

    def stopGracefully(self) -> None:
        """
        netd is stopping: finish a transfer under way, then close (as it
        does); close at once a connection still waiting for its request.
        (netd's C{IGracefulProtocol}.)
        """
        if not self._answered:
            self._answered = True
            self._cancelTimeout()
            self._outcome = "closed: the server is stopping"
            self.transport.loseConnection()

    def _answer(self, line: bytes) -> None:
        self._answered = True
        self._cancelTimeout()
        self._buffer = line
        try:
            self.request = request = parseRequestLine(line)
            if len(self.factory.transfers) >= self.factory.maxTransfers:
                raise RequestRefused(503, "busy", "too many transfers under way")
            source = self._sourceAddress()
            if self.factory.sourceIsBusy(source):
                raise RequestRefused(
                    503, "busy", "too many transfers under way to this address"
                )
            opened = self.factory.root.openFile(request.path)
        except RequestRefused as refused:
            self._refuse(refused)
            return
        self._buffer = b""
        if request.offset > opened.size:
            os.close(opened.fd)
            self._refuse(
                RequestRefused(416, "offset past the end", "offset past the end")
            )
            return
        self._size = opened.size
        try:
            transfer = self.factory.makeTransfer(
                self.transport, opened.fd, request.offset, opened.size, self._finished
            )
        except OSError as error:
            # No descriptor left to duplicate the socket for sendfile.
            os.close(opened.fd)
            self._refuse(RequestRefused(503, "busy", os.strerror(error.errno or 0)))
            return
        if request.extended:
            self.transport.write(b"OK %d\n" % (opened.size,))
        self.factory.addTransfer(self, source)
        self._source = source
        self.transfer = transfer
        self._lastSent = 0
        if self.factory.stallTimeout > 0:
            self._stallCheck = self.factory.clock.callLater(
                self.factory.stallTimeout, self._checkProgress
            )
        transfer.start()

    def _sourceAddress(self) -> str | None:
        return sourceOf(self.transport.getPeer())

    def _checkProgress(self) -> None:
        """
        Close a transfer that sent nothing since the last check: its client
        stopped reading (or reads too slowly to matter).
        """
        self._stallCheck = None
        transfer = self.transfer
        if transfer is None:
            return
        if transfer.sent == self._lastSent:
            self._outcome = f"stalled: nothing sent for {self.factory.stallTimeout:g}s"
            self.transport.abortConnection()
            return
        self._lastSent = transfer.sent
        self._stallCheck = self.factory.clock.callLater(
            self.factory.stallTimeout, self._checkProgress
        )

    def _finished(self, complete: bool, why: str = FILE_ENDED) -> None:
        self._outcome = "sent" if complete else why
        self.transport.loseConnection()

    def _refuse(self, refused: RequestRefused) -> None:
        """
        Refuse the request: the extended form (known from the request, or
        from the beginning of the line so far) is told why.
        """
        self._answered = True
        self._cancelTimeout()
        self._outcome = f"refused: {refused.code} {refused.reason}"
        self.factory.metrics.refused(refused.code)
        if self.request is not None:
            extended = self.request.extended
        else:
            extended = isExtended(self._buffer)
        if extended:
            self.transport.write(refused.errorLine())
        self._buffer = b""
        self.transport.loseConnection()

    def _cancelTimeout(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        if self._stallCheck is not None:
            self._stallCheck.cancel()
            self._stallCheck = None

    def connectionLost(self, reason: Any) -> None:
        self._cancelTimeout()
        self.factory.removeTransfer(self, self._source)
        transfer, self.transfer = self.transfer, None
        if transfer is not None:
            transfer.close()
            if not self._outcome:
                self._outcome = "the client went away"
        if self.request is None:
            if self._outcome:
                self.log.info(
                    "getfile {peer} {outcome}", outcome=self._outcome, peer=self._peer()
                )
            return
        if transfer is None:
            self.log.info(
                "getfile {peer} {path!r} ({form} form): {outcome}",
                path=self.request.path,
                form="extended" if self.request.extended else "book",
                outcome=self._outcome or "closed",
                peer=self._peer(),
            )
            return
        self.factory.metrics.transferEnded(self._outcome == "sent")
        self.log.info(
            "getfile {peer} {path!r} ({form} form, offset {offset}): {outcome}, "
            "{sent} of {size} bytes",
            path=self.request.path,
            offset=self.request.offset,
            form="extended" if self.request.extended else "book",
            outcome=self._outcome,
            sent=transfer.sent,
            size=self._size,
            peer=self._peer(),
        )

    def _peer(self) -> str:
        return describeAddress(self.transport.getPeer())


class GetFileFactory(Factory):
    """
    Make L{GetFileProtocol}s for one root.

    @ivar clock: an L{IReactorTime}, for the request timeout; sendfile is
        used only when it is also an L{IReactorThreads} (a real reactor).
    @ivar root: the L{ConfinedRoot} files are served from.
    @ivar requestTimeout: seconds a client has to send its request line.
    @ivar maxTransfers: transfers at once; more are refused as busy.
    @ivar sendfile: whether to use C{os.sendfile} where it applies.
    @ivar maxPerSource: transfers at once to one client address (0: no
        limit); more are refused as busy.
    @ivar stallTimeout: seconds a transfer may send nothing before it is
        closed (0: never).
    @ivar transfers: the protocols whose transfer is under way.
    @ivar perSource: how many transfers each client address has under way.
    @ivar metrics: what transfers and refusals are reported to.
    """

    protocol = GetFileProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        clock: Any,
        root: str,
        requestTimeout: float = 10.0,
        maxTransfers: int = 64,
        sendfile: bool = True,
        maxPerSource: int = 8,
        stallTimeout: float = 60.0,
        metrics: GetFileMetrics = NO_GETFILE_METRICS,
    ) -> None:
        """
        @param root: the directory to serve; resolved now.
        """
        self.metrics = metrics
        self.clock = clock
        self.root = ConfinedRoot(root)
        self.requestTimeout = requestTimeout
        self.maxTransfers = maxTransfers
        self.sendfile = sendfile
        self.maxPerSource = maxPerSource
        self.stallTimeout = stallTimeout
        self.transfers: set[GetFileProtocol] = set()
        self.perSource: dict[str, int] = {}

    def sourceIsBusy(self, source: str | None) -> bool:
        """
        Whether C{source} has as many transfers under way as it may.
        """
        return source is not None and 0 < self.maxPerSource <= self.perSource.get(
            source, 0
        )

    def addTransfer(self, protocol: GetFileProtocol, source: str | None) -> None:
        """
        Count a transfer that starts.
        """
        self.transfers.add(protocol)
        if source is not None:
            self.perSource[source] = self.perSource.get(source, 0) + 1

    def removeTransfer(self, protocol: GetFileProtocol, source: str | None) -> None:
        """
        Stop counting a transfer (safe for one never counted).
        """
        if protocol not in self.transfers:
            return
        self.transfers.discard(protocol)
        if source is not None:
            left = self.perSource.pop(source, 1) - 1
            if left > 0:
                self.perSource[source] = left

    def makeTransfer(
        self,
        transport: Any,
        fd: int,
        start: int,
        end: int,
        finished: Callable[[bool], None],
    ) -> FileTransfer:
        """
        Choose how to send a file: C{os.sendfile} when the connection is a
        plain socket under any number of non-TLS wrappers, else chunks
        written through the transport.
        """
        direct = directSocket(transport)
        if direct is None:
            return FileTransfer(fd, start, end, transport, finished)
        socketTransport, wrappers = direct
        if self.sendfile and IReactorThreads.providedBy(self.clock):
            return SendfileTransfer(
                fd,
                start,
                end,
                transport,
                finished,
                socketTransport,
                wrappers,
                self.clock,
            )
        return FileTransfer(fd, start, end, transport, finished)
