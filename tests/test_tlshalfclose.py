"""
Tests for L{netd.tlshalfclose}: a client's TLS C{close_notify} is a
half-close, over real TLS on loopback, for every TCP service; and the parts
of Twisted it relies on are still what it relies on.
"""

from __future__ import annotations

import ast
import inspect
import os
import pickle
import struct
import textwrap
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from netd.tap import Options, makeService
from netd.tls import parseTLSEndpoint, serverOptions
from netd.tlshalfclose import (
    TWISTED_PRIVATE_NAMES,
    TWISTED_SNI_ENDPOINT_NAMES,
    HalfCloseableTLSEndpoint,
    HalfCloseableTLSFactory,
    listenTLS,
)
from tests.common import Certificates, makeCertificates

TLS_VERSIONS = {"TLS 1.2": SSL.TLS1_2_VERSION, "TLS 1.3": SSL.TLS1_3_VERSION}

#: The code (comments and docstring left out) of Twisted's
#: C{TLSMemoryBIOProtocol._flushReceiveBIO}, from which
#: L{netd.tlshalfclose.HalfCloseableTLSProtocol._flushReceiveBIO} was written.
TWISTED_FLUSH_RECEIVE = """\
while not self._lostTLSConnection:
    try:
        bytes = self._tlsConnection.recv(2 ** 15)
    except WantReadError:
        break
    except ZeroReturnError:
        self._shutdownTLS()
        self._tlsShutdownFinished(None)
    except Error:
        failure = Failure()
        self._tlsShutdownFinished(failure)
    else:
        if not self._aborted:
            ProtocolWrapper.dataReceived(self, bytes)
self._flushSendBIO()"""

MiB = 1024 * 1024


class CloseNotifyClient(Protocol):
    """
    A TLS client (pyOpenSSL over a memory BIO, on a real TCP connection)
    that sends its request and its C{close_notify} at once, as socat does
    when its input ends, then reads until the server closes.

    @ivar closeNotify: whether the server's C{close_notify} came.
    @ivar done: fires with every byte received once the connection is gone.
    """

    def __init__(self, ca: str, version: int, request: bytes) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(version)
        context.set_max_proto_version(version)
        context.load_verify_locations(ca)
        context.set_verify(SSL.VERIFY_PEER, lambda _c, _x, _e, _d, ok: bool(ok))
        self.tls = SSL.Connection(context, None)
        self.tls.set_connect_state()
        self.request = request
        self.handshakeDone = False
        self.closeNotify = False
        self.version = ""
        self.received: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self._handshake()

    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        self.handshakeDone = True
        self.version = self.tls.get_protocol_version_name()
        self.handshakeCompleted()

    def handshakeCompleted(self) -> None:
        """
        Send the request, then C{close_notify}.
        """
        view = memoryview(self.request)
        while view:
            sent = self.tls.send(view[: 2**14])
            view = view[sent:]
            self._flush()
        self.tls.shutdown()
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        self.tls.bio_write(data)
        if not self.handshakeDone:
            self._handshake()
            if not self.handshakeDone:
                return
        while not self.closeNotify:
            try:
                self.received.append(self.tls.recv(2**16))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.closeNotify = True
        self._flush()

    def _flush(self) -> None:
        while True:
            try:
                data = self.tls.bio_read(2**16)
            except SSL.WantReadError:
                return
            self.transport.write(data)

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(b"".join(self.received))


@defer.inlineCallbacks
def closeNotifyExchange(
    port: int, ca: str, version: int, request: bytes
) -> defer.Generator:
    """
    Send C{request} then C{close_notify} to 127.0.0.1:C{port} over TLS
    C{version}; return the client once the server has closed.
    """
    client = CloseNotifyClient(ca, version, request)
    yield connectProtocol(TCP4ClientEndpoint(_reactor, "127.0.0.1", port), client)
    yield client.done
    return client


def objectsFrame(value: Any) -> bytes:
    """
    A C{multiprocessing.connection} frame holding C{value} pickled.
    """
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return struct.pack("!i", len(data)) + data


@implementer(IHalfCloseableProtocol)
class LateReply(Protocol):
    """
    Collect what comes; on the end of input, send it all back, one write
    per chunk, then close: every reply byte is written after the client's
    C{close_notify}.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def readConnectionLost(self) -> None:
        for chunk in self.chunks:
            self.transport.write(chunk)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class ClosesAtOnce(Protocol):
    """
    A protocol that does not take half-closes: it answers every chunk with
    its length.
    """

    def connectionMade(self) -> None:
        self.lost: defer.Deferred[Any] = self.factory.lost  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"%d\n" % (len(data),))

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(reason.type)


class HalfCloseTests(TestCase):
    """
    A C{close_notify} over real TLS on loopback, straight after the request.
    """

    def setUp(self) -> None:
        self.certs = makeCertificates(self)
        self.options = serverOptions(self.certs.serverKey, self.certs.serverCert)

    def listen(self, protocol: type[Protocol]) -> int:
        factory = Factory.forProtocol(protocol)
        factory.lost = defer.Deferred()  # type: ignore[attr-defined]
        self.factory = factory
        port = listenTLS(_reactor, 0, factory, self.options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port
        return number

    @defer.inlineCallbacks
    def test_replyAfterCloseNotify(self) -> defer.Generator:
        """
        A half-closeable protocol is told the input ended, and every byte
        it writes after that reaches the client, followed by the server's
        own C{close_notify}: small and 1 MiB replies, TLS 1.2 and 1.3.
        """
        port = self.listen(LateReply)
        for name, version in TLS_VERSIONS.items():
            for request in [b"hello!", os.urandom(MiB)]:
                client = yield closeNotifyExchange(
                    port, self.certs.ca, version, request
                )
                received = b"".join(client.received)
                self.assertEqual(client.version, name.replace(" ", "v"))
                self.assertEqual(len(received), len(request), name)
                self.assertEqual(received, request, name)
                self.assertTrue(client.closeNotify, name)

    @defer.inlineCallbacks
    def test_notHalfCloseable(self) -> defer.Generator:
        """
        A protocol that does not take half-closes is closed as on TCP, and
        what it wrote before (still in Twisted's write aggregation) goes
        out first.
        """
        port = self.listen(ClosesAtOnce)
        client = yield closeNotifyExchange(
            port, self.certs.ca, SSL.TLS1_3_VERSION, b"12345"
        )
        self.assertEqual(b"".join(client.received), b"5\n")
        self.assertTrue(client.closeNotify)
        lost = yield self.factory.lost
        self.assertIs(lost, ConnectionDone)

    @defer.inlineCallbacks
    def test_truncated(self) -> defer.Generator:
        """
        A TCP end of input without a C{close_notify} (the stream may have
        been cut short) drops the connection, as Twisted does.
        """
        port = self.listen(LateReply)

        class Truncating(CloseNotifyClient):
            def handshakeCompleted(self) -> None:
                self.tls.send(b"cut")
                self._flush()
                self.transport.loseWriteConnection()

        client = Truncating(self.certs.ca, SSL.TLS1_3_VERSION, b"")
        yield connectProtocol(TCP4ClientEndpoint(_reactor, "127.0.0.1", port), client)
        received = yield client.done
        self.assertEqual(received, b"")
        self.assertFalse(client.closeNotify)


class ServiceTests(TestCase):
    """
    Every TCP service of netd, built by the tap, over C{tls:} and C{ssl:}:
    the client's C{close_notify} straight after its request loses nothing.
    """

    def setUp(self) -> None:
        self.certs: Certificates = makeCertificates(self)
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.big = os.urandom(MiB + 7)
        with open(os.path.join(self.root, "big"), "wb") as stream:
            stream.write(self.big)

    def sslEndpoint(self) -> str:
        return self.certs.endpoint().replace("tls:", "ssl:", 1)

    @defer.inlineCallbacks
    def startNetd(self, *arguments: str) -> defer.Generator:
        options = Options()
        options.parseOptions(["--grace", "0", *arguments])
        netd = makeService(options, reactor=_reactor)
        netd.startService()
        self.addCleanup(netd.stopService)
        ports = []
        for listener in netd:
            port = yield listener.whenListening()
            ports.append(port.getHost().port)
        return ports

    @defer.inlineCallbacks
    def check(self, port: int, request: bytes, expected: bytes) -> defer.Generator:
        for name, version in TLS_VERSIONS.items():
            client = yield closeNotifyExchange(port, self.certs.ca, version, request)
            received = b"".join(client.received)
            self.assertEqual(len(received), len(expected), (name, port))
            self.assertEqual(received, expected, (name, port))
            self.assertTrue(client.closeNotify, (name, port))

    @defer.inlineCallbacks
    def test_echo(self) -> defer.Generator:
        """
        Echo with the RFC 862 prefix: 6 bytes and 1 MiB come back whole.
        """
        tls, ssl = yield self.startNetd(
            "--services",
            "echo",
            "--echo-prefix",
            "",
            "--echo",
            self.certs.endpoint(),
            "--echo",
            self.sslEndpoint(),
        )
        for port in (tls, ssl):
            for request in (b"hello!", self.big):
                yield self.check(port, request, request)

    @defer.inlineCallbacks
    def test_getfile(self) -> defer.Generator:
        """
        getfile, both forms, with and without sendfile (which falls back to
        chunks under TLS): a 1 MiB file arrives whole, and so does a
        refusal.
        """
        for sendfile in ([], ["--getfile-no-sendfile"]):
            tls, ssl = yield self.startNetd(
                "--services",
                "getfile",
                "--getfile-root",
                self.root,
                "--getfile",
                self.certs.endpoint(),
                "--getfile",
                self.sslEndpoint(),
                *sendfile,
            )
            for port in (tls, ssl):
                yield self.check(port, b"big\n", self.big)
                header = b"OK %d\n" % (len(self.big),)
                yield self.check(port, b"GETFILE/1 5 big\n", header + self.big[5:])
                # Refused before the close_notify is read: netd has sent its
                # own already, and closes once the client's comes.
                yield self.check(port, b"GETFILE/1 0 missing\n", b"ERR 404 not found\n")

    @defer.inlineCallbacks
    def test_clock(self) -> defer.Generator:
        """
        daytime and time answer a client that closes at once.
        """
        daytime, time = yield self.startNetd(
            "--services",
            "daytime,time",
            "--daytime",
            self.certs.endpoint(),
            "--time",
            self.sslEndpoint(),
        )
        for name, version in TLS_VERSIONS.items():
            client = yield closeNotifyExchange(daytime, self.certs.ca, version, b"")
            self.assertRegex(b"".join(client.received), rb"^\w{3} .* \d{4}\r?\n$")
            self.assertTrue(client.closeNotify, name)
            client = yield closeNotifyExchange(time, self.certs.ca, version, b"")
            self.assertEqual(len(b"".join(client.received)), 4, name)
            self.assertTrue(client.closeNotify, name)

    @defer.inlineCallbacks
    def test_objects(self) -> defer.Generator:
        """
        objects (which does not take half-closes, as on TCP) sends the
        reply to a request it has read, small or 1 MiB, before it closes,
        under TLS 1.2 and 1.3.
        """
        tls, ssl = yield self.startNetd(
            "--services",
            "objects",
            "--objects",
            self.certs.endpoint(),
            "--objects",
            self.sslEndpoint(),
        )
        for port in (tls, ssl):
            for value in ([1, "two", 3.0], self.big):
                for version in TLS_VERSIONS.values():
                    client = yield closeNotifyExchange(
                        port, self.certs.ca, version, objectsFrame(value)
                    )
                    received = b"".join(client.received)
                    (length,) = struct.unpack("!i", received[:4])
                    self.assertEqual(len(received), 4 + length)
                    self.assertEqual(pickle.loads(received[4:]), value)
                    self.assertTrue(client.closeNotify)


class TwistedAssumptionsTests(SynchronousTestCase):
    """
    What L{netd.tlshalfclose} relies on in Twisted's TLS code is still
    there: if one of these fails, Twisted changed, and
    L{netd.tlshalfclose.HalfCloseableTLSProtocol} must be checked against
    the new code.
    """

    def test_privateNames(self) -> None:
        """
        Every private name used exists on a connected
        L{BufferingTLSTransport}.
        """
        from twisted.internet.testing import StringTransport

        certs = makeCertificates(self)
        factory = HalfCloseableTLSFactory(
            serverOptions(certs.serverKey, certs.serverCert),
            False,
            Factory.forProtocol(Protocol),
            _reactor,
        )
        protocol = factory.buildProtocol(None)
        self.assertIsInstance(protocol, BufferingTLSTransport)
        protocol.makeConnection(StringTransport())
        self.addCleanup(protocol.connectionLost, None)
        missing = [
            name for name in TWISTED_PRIVATE_NAMES if not hasattr(protocol, name)
        ]
        self.assertEqual(missing, [])

    def test_flushReceiveUnchanged(self) -> None:
        """
        Twisted's C{_flushReceiveBIO}, which netd replaces, is the code
        netd's replacement was written from.
        """
        source = textwrap.dedent(
            inspect.getsource(TLSMemoryBIOProtocol._flushReceiveBIO)
        )
        function = ast.parse(source).body[0]
        assert isinstance(function, ast.FunctionDef)
        body = function.body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        self.assertEqual(
            ast.unparse(ast.Module(body=body, type_ignores=[])),
            TWISTED_FLUSH_RECEIVE,
            "Twisted's TLSMemoryBIOProtocol._flushReceiveBIO changed: compare "
            "it with netd.tlshalfclose.HalfCloseableTLSProtocol._flushReceiveBIO",
        )

    def test_twistedTLSEndpoint(self) -> None:
        """
        Twisted's own C{tls:PATH} endpoint still has the attributes netd
        reads to build the same listener with half-closes.
        """
        from twisted.internet import endpoints

        if not hasattr(endpoints, "_TLSServerEndpointParser"):
            raise self.skipTest("this Twisted has no tls:PATH endpoint")
        certs = makeCertificates(self)
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "localhost.pem"), "wb") as pem:
            for path in (certs.serverKey, certs.serverCert):
                with open(path, "rb") as part:
                    pem.write(part.read())
        endpoint = parseTLSEndpoint(_reactor, f"tls:{directory}:port=0")
        self.assertIsInstance(endpoint, HalfCloseableTLSEndpoint)
        original = endpoints._TLSServerEndpointParser().parseStreamServer(
            _reactor, directory, port="0"
        )
        self.assertEqual(
            [type(getattr(original, name)) for name in TWISTED_SNI_ENDPOINT_NAMES],
            [type(endpoint.endpoint), type(endpoint.contextFactory), type(None)],
        )
