"""
Tests for L{netd.tls}: the C{tls:} endpoint's checks, TLS and mutual TLS
over loopback, the verifying client, and certificate reloads.
"""

from __future__ import annotations

import datetime
import os
import shutil
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.policy import Policy, PolicyFactory
from netd.services.echo.server import EchoFactory
from netd.tls import (
    CertificateError,
    TLSServerEndpoint,
    parseTLSEndpoint,
)
from netd.tlsclient import TLSError
from tests.common import (
    Certificates,
    CollectUntilClosed,
    exchange,
    makeCertificates,
    tlsClientEndpoint,
)


def issue(certificates: Certificates, name: str, *identities: str, **kw: Any) -> tuple:
    """
    Write a certificate from the test CA for C{identities}; return the
    certificate and key paths.
    """
    leaf = certificates.authority.issue_cert(*identities, **kw)
    return (
        certificates.write(f"{name}.pem", leaf.cert_chain_pems[0].bytes()),
        certificates.write(f"{name}.key", leaf.private_key_pem.bytes()),
    )


class EndpointCheckTests(SynchronousTestCase):
    """
    A C{tls:} endpoint whose files cannot serve is refused with one line.
    """

    def setUp(self) -> None:
        self.certs = makeCertificates(self)

    def parse(self, description: str) -> Any:
        return parseTLSEndpoint(MemoryReactorClock(), description)

    def assertRefused(self, description: str, *fragments: str) -> None:
        error = self.assertRaises(ValueError, self.parse, description)
        message = str(error)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_good(self) -> None:
        """
        A key and its certificate make a L{TLSServerEndpoint} for the port
        and interface given.
        """
        endpoint = self.parse(self.certs.endpoint(port=4433, interface="::1"))
        self.assertIsInstance(endpoint, TLSServerEndpoint)
        self.assertEqual((endpoint.port, endpoint.interface), (4433, "::1"))
        self.assertIsNone(endpoint.certificates.clientCA)

    def test_missingKey(self) -> None:
        """
        A key file that does not exist is named.
        """
        self.assertRefused(
            f"tls:0:privateKey=/nonexistent.key:certKey={self.certs.serverCert}",
            "cannot read private key '/nonexistent.key'",
            "No such file",
        )

    def test_unreadableCertificate(self) -> None:
        """
        A certificate path that cannot be read (a directory) is named.
        """
        self.assertRefused(
            f"tls:0:privateKey={self.certs.serverKey}:certKey={self.certs.directory}",
            "cannot read certificate",
        )

    def test_malformedKey(self) -> None:
        """
        A key file that holds no PEM key is refused.
        """
        broken = self.certs.write("broken.key", b"-----BEGIN PRIVATE KEY-----\nxx")
        self.assertRefused(
            f"tls:0:privateKey={broken}:certKey={self.certs.serverCert}",
            f"no usable private key in {broken!r}",
        )

    def test_noCertificate(self) -> None:
        """
        A certificate file without a certificate is refused.
        """
        self.assertRefused(
            f"tls:0:privateKey={self.certs.serverKey}:certKey={self.certs.serverKey}",
            "no certificate in",
        )

    def test_keyMismatch(self) -> None:
        """
        A key that is not the certificate's is refused, naming both files.
        """
        self.assertRefused(
            f"tls:0:privateKey={self.certs.clientKey}:certKey={self.certs.serverCert}",
            "does not match certificate",
            self.certs.clientKey,
        )

    def test_expired(self) -> None:
        """
        An expired certificate is refused with its expiry date.
        """
        past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        cert, key = issue(
            self.certs,
            "expired",
            "localhost",
            not_before=past - datetime.timedelta(days=30),
            not_after=past,
        )
        self.assertRefused(
            f"tls:0:privateKey={key}:certKey={cert}", "expired on 2020-01-01"
        )

    def test_notYetValid(self) -> None:
        """
        A certificate valid only in the future is refused.
        """
        future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
        cert, key = issue(
            self.certs,
            "future",
            "localhost",
            not_before=future,
            not_after=future + datetime.timedelta(days=30),
        )
        self.assertRefused(f"tls:0:privateKey={key}:certKey={cert}", "not valid before")

    def test_badClientCA(self) -> None:
        """
        A missing client CA file is named.
        """
        self.assertRefused(
            self.certs.endpoint() + ":clientCA=/nonexistent.pem",
            "cannot read CA certificates '/nonexistent.pem'",
        )

    def test_badArguments(self) -> None:
        """
        A bad port, an unknown argument or no key is refused, quoting it.
        """
        self.assertRefused("tls:http:privateKey=x", "bad tls: port 'http'")
        self.assertRefused(self.certs.endpoint() + ":colour=red", "'colour'")
        self.assertRefused("tls:443", "needs privateKey=FILE")

    def test_combinedFile(self) -> None:
        """
        Without C{certKey}, the key file holds the certificate too.
        """
        with open(self.certs.serverKey, "rb") as key:
            with open(self.certs.serverCert, "rb") as cert:
                both = self.certs.write("both.pem", key.read() + cert.read())
        endpoint = self.parse(f"tls:0:privateKey={both}")
        self.assertEqual(endpoint.certificates.certKey, both)


class Hello(Protocol):
    """
    A client protocol that does nothing; the test inspects its transport.
    """


class LoopbackTests(TestCase):
    """
    TLS over real loopback connections, with netd's client.
    """

    def setUp(self) -> None:
        self.certs = makeCertificates(self)

    def listen(self, description: str) -> tuple[int, TLSServerEndpoint]:
        endpoint = parseTLSEndpoint(_reactor, description)
        self.echo = NotifyingEchoFactory()
        factory = PolicyFactory("echo", self.echo, Policy(), _reactor)
        listening = endpoint.listen(factory)
        port = self.successResultOf(listening)
        self.addCleanup(port.stopListening)
        return port.getHost().port, endpoint

    @defer.inlineCallbacks
    def test_echo(self) -> defer.Generator:
        """
        A verifying client talks to echo over TLS, by IPv4 address.
        """
        port, _ = self.listen(self.certs.endpoint())
        received = yield exchange(
            tlsClientEndpoint(self.certs, port), b"hello", until=11
        )
        self.assertEqual(received, b"Echo=>hello")

    @defer.inlineCallbacks
    def test_echoIPv6(self) -> defer.Generator:
        """
        The same over IPv6, the certificate naming ::1.
        """
        port, _ = self.listen(self.certs.endpoint(interface="::1"))
        received = yield exchange(
            tlsClientEndpoint(self.certs, port, host="::1"), b"x", until=7
        )
        self.assertEqual(received, b"Echo=>x")

    @defer.inlineCallbacks
    def test_mutual(self) -> defer.Generator:
        """
        With C{clientCA}, a client with a certificate from that CA is
        served and its subject is in the connection log.
        """
        port, _ = self.listen(self.certs.endpoint(clientCA=True))
        with capturedLogs() as events:
            received = yield exchange(
                tlsClientEndpoint(self.certs, port, client=True), b"hi", until=8
            )
            yield defer.gatherResults(self.echo.ended)
        self.assertEqual(received, b"Echo=>hi")
        subjects = [e["subject"] for e in events if "subject" in e]
        self.assertEqual(len(subjects), 1)
        self.assertIn("CN=netd test client", subjects[0])

    @defer.inlineCallbacks
    def test_mutualWithoutCertificate(self) -> defer.Generator:
        """
        With C{clientCA}, a client without a certificate gets nothing
        echoed, and the log says why.
        """
        port, _ = self.listen(self.certs.endpoint(clientCA=True))
        with capturedLogs() as events:
            try:
                received = yield exchange(
                    tlsClientEndpoint(self.certs, port), b"hi", until=8
                )
            except TLSError:
                received = b""
            yield defer.gatherResults(self.echo.ended)
        self.assertEqual(received, b"")
        outcomes = [str(e.get("outcome")) for e in events if "outcome" in e]
        self.assertTrue(any("certificate" in outcome for outcome in outcomes), outcomes)

    @defer.inlineCallbacks
    def test_hostNameMismatch(self) -> defer.Generator:
        """
        A server whose certificate does not name the host connected to
        fails the client's connect with a L{TLSError} saying so.
        """
        cert, key = issue(self.certs, "elsewhere", "example.org")
        port, _ = self.listen(
            f"tls:0:privateKey={key}:certKey={cert}:interface=127.0.0.1"
        )
        with self.assertRaises(TLSError) as caught:
            yield connectProtocol(tlsClientEndpoint(self.certs, port), Hello())
        self.assertIn("is not valid for", str(caught.exception))
        self.assertIn("127.0.0.1", str(caught.exception))

    @defer.inlineCallbacks
    def test_untrustedServer(self) -> defer.Generator:
        """
        A server whose certificate comes from a CA the client does not
        trust fails the connect with a L{TLSError}.
        """
        port, _ = self.listen(self.certs.endpoint())
        other = Certificates(self.mktemp())
        with self.assertRaises(TLSError) as caught:
            yield connectProtocol(tlsClientEndpoint(other, port), Hello())
        self.assertIn("certificate verify failed", str(caught.exception))

    def test_clientFiles(self) -> None:
        """
        A client certificate that cannot be used is a L{CertificateError}
        before any connection.
        """
        from netd.tlsclient import clientEndpoint

        self.assertRaises(
            CertificateError,
            clientEndpoint,
            _reactor,
            "127.0.0.1",
            1,
            ca=self.certs.ca,
            cert=self.certs.clientCert,
            key=self.certs.serverKey,
        )
        self.assertRaises(
            CertificateError, clientEndpoint, _reactor, "127.0.0.1", 1, ca="/nope"
        )

    @defer.inlineCallbacks
    def serial(self, port: int) -> defer.Generator:
        client = CollectUntilClosed(halfClose=False)
        yield connectProtocol(tlsClientEndpoint(self.certs, port), client)
        serial = client.transport.getPeerCertificate().get_serial_number()
        client.transport.loseConnection()
        yield client.closed
        return serial

    @defer.inlineCallbacks
    def test_reload(self) -> defer.Generator:
        """
        After the files change, L{ServerCertificates.reload} makes new
        connections get the new certificate; files that cannot be used
        leave the old one in place.
        """
        port, endpoint = self.listen(self.certs.endpoint())
        before = yield self.serial(port)
        cert, key = issue(self.certs, "renewed", "127.0.0.1")
        shutil.copy(cert, self.certs.serverCert)
        shutil.copy(key, self.certs.serverKey)
        endpoint.certificates.reload()
        after = yield self.serial(port)
        self.assertNotEqual(before, after)
        os.remove(self.certs.serverKey)
        self.assertRaises(CertificateError, endpoint.certificates.reload)
        self.assertEqual((yield self.serial(port)), after)


class NotifyingEchoFactory(EchoFactory):
    """
    An echo factory whose protocols say when their connection ended.

    @ivar ended: one Deferred per connection, fired a reactor turn after
        it ended, when its connection has been logged.
    """

    def __init__(self) -> None:
        super().__init__(_reactor)
        self.ended: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        ended: defer.Deferred[None] = defer.Deferred()
        self.ended.append(ended)
        lost = protocol.connectionLost

        def connectionLost(reason: Any) -> None:
            lost(reason)
            _reactor.callLater(0, ended.callback, None)

        protocol.connectionLost = connectionLost
        return protocol


class ReloadCertificatesTests(SynchronousTestCase):
    """
    netd's reload re-reads the files of every C{tls:} listener.
    """

    def test_reloadAll(self) -> None:
        """
        Every C{tls:} listener (also behind C{haproxy:}) is reloaded; a
        listener whose files fail keeps its certificate, in one log line.
        """
        from netd.tap import Options, makeService

        certs = makeCertificates(self)
        options = Options()
        options.parseOptions(
            [
                "--services",
                "echo",
                "--echo",
                certs.endpoint(),
                "--echo",
                "haproxy:" + certs.endpoint(),
            ]
        )
        root = makeService(options, reactor=MemoryReactorClock())
        with capturedLogs() as events:
            self.assertTrue(root.reload())
        lines = [formatEvent(event) for event in events]
        self.assertEqual(sum("reloaded" in line for line in lines), 2, lines)
        os.remove(certs.serverCert)
        with capturedLogs() as events:
            self.assertTrue(root.reload())
        failed = [
            formatEvent(e) for e in events if "kept its old files" in formatEvent(e)
        ]
        self.assertEqual(len(failed), 2)
        self.assertIn("cannot read certificate", failed[0])


class HandshakeTimeoutTests(TestCase):
    """
    The verifying client gives up on a server that never answers TLS.
    """

    @defer.inlineCallbacks
    def test_silentServer(self) -> defer.Generator:
        """
        A server that accepts but never completes a handshake fails the
        connect with a L{TLSError} once the timeout passes.
        """
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
        from twisted.internet.protocol import Factory
        from twisted.internet.ssl import optionsForClientTLS
        from twisted.internet.task import Clock

        from netd.tlsclient import VerifiedTLSEndpoint

        connected: defer.Deferred[None] = defer.Deferred()

        class Client(Factory):
            def buildProtocol(self, addr: Any) -> Protocol:
                # Built as TCP connects; connected a moment later.
                _reactor.callLater(0, connected.callback, None)
                return Protocol()

        port = _reactor.listenTCP(
            0, Factory.forProtocol(Protocol), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        clock = Clock()
        endpoint = VerifiedTLSEndpoint(
            wrapClientTLS(
                optionsForClientTLS("127.0.0.1"),
                HostnameEndpoint(_reactor, "127.0.0.1", port.getHost().port),
            ),
            clock,
            "127.0.0.1",
            5.0,
        )
        connecting = endpoint.connect(Client())
        yield connected
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(5.0)
        with self.assertRaises(TLSError) as caught:
            yield connecting
        self.assertIn("timed out", str(caught.exception))

    def test_twistedForm(self) -> None:
        """
        Twisted's own C{tls:DIRECTORY:port=N} form still works through
        netd's parser.
        """
        certs = makeCertificates(self)
        endpoint = parseTLSEndpoint(
            MemoryReactorClock(), f"tls:{certs.directory}:port=0"
        )
        self.assertNotIsInstance(endpoint, TLSServerEndpoint)
        self.assertTrue(callable(endpoint.listen))
