"""
End-to-end TLS: C{twistd -n netd} serving C{tls:} endpoints, checked with
C{openssl s_client} and C{netd-client --tls}; bad certificates stop it with
one line.
"""

from __future__ import annotations

import datetime
import os

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.common import (
    BIN,
    TWISTD,
    makeCertificates,
    opensslClient,
    runCommand,
    runNetd,
)


class OpenSSLClientTests(TestCase):
    """
    C{openssl s_client} as an outside client of netd's C{tls:} endpoints.
    """

    @defer.inlineCallbacks
    def startNetd(self, clientCA: bool) -> defer.Generator:
        self.certs = makeCertificates(self)
        # s_client waits for the server to close: the idle timeout does.
        netd = yield runNetd(
            self,
            "--services",
            "echo",
            "--echo",
            self.certs.endpoint(clientCA=clientCA),
            "--idle-timeout",
            "1",
        )
        return netd.port("echo")

    def sClient(self, port: int, *options: str) -> defer.Deferred:
        return opensslClient(
            port,
            "-CAfile",
            self.certs.ca,
            "-verify_return_error",
            *options,
            stdin=b"hello",
        )

    @defer.inlineCallbacks
    def test_versions(self) -> defer.Generator:
        """
        TLS 1.2 and 1.3 clients are served; a TLS 1.1 client is refused
        with a protocol version alert.
        """
        port = yield self.startNetd(clientCA=False)
        for version in ("-tls1_2", "-tls1_3"):
            out, err, _ = yield self.sClient(port, version)
            self.assertIn(b"Echo=>hello", out, (version, err))
        out, err, _ = yield self.sClient(
            port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"
        )
        self.assertNotIn(b"Echo=>", out)
        self.assertIn(b"alert protocol version", err)

    @defer.inlineCallbacks
    def test_mutual(self) -> defer.Generator:
        """
        With C{clientCA}, a client presenting a certificate from the CA is
        served; one with none, or one from another CA, is refused.
        """
        port = yield self.startNetd(clientCA=True)
        out, err, _ = yield self.sClient(
            port, "-cert", self.certs.clientCert, "-key", self.certs.clientKey
        )
        self.assertIn(b"Echo=>hello", out, err)
        out, err, _ = yield self.sClient(port)
        self.assertNotIn(b"Echo=>", out)
        self.assertIn(b"alert certificate required", err)
        out, err, _ = yield self.sClient(
            port, "-cert", self.certs.strangerCert, "-key", self.certs.strangerKey
        )
        self.assertNotIn(b"Echo=>", out)
        self.assertIn(b"unknown ca", err)


class ClientCommandTests(TestCase):
    """
    C{netd-client echo --tls} verifies netd's certificate.
    """

    @defer.inlineCallbacks
    def test_verified(self) -> defer.Generator:
        """
        With the CA and a client certificate, netd-client talks to a
        mutual-TLS echo; with a CA that did not sign netd's certificate it
        fails with one line and status 1.
        """
        certs = makeCertificates(self)
        netd = yield runNetd(
            self, "--services", "echo", "--echo", certs.endpoint(clientCA=True)
        )
        client = os.path.join(BIN, "netd-client")
        common = ["echo", "--tls", "--port", str(netd.port("echo"))]
        out, err, code = yield runCommand(
            client,
            *common,
            "--ca",
            certs.ca,
            "--cert",
            certs.clientCert,
            "--key",
            certs.clientKey,
            "hello",
        )
        self.assertEqual((out, code), (b"Client received: b'Echo=>hello'\n", 0), err)
        other = makeCertificates(self)
        out, err, code = yield runCommand(client, *common, "--ca", other.ca, "hello")
        self.assertEqual(code, 1)
        self.assertEqual(err.count(b"\n"), 1, err)
        self.assertIn(b"certificate verify failed", err)


class StartupErrorTests(TestCase):
    """
    A C{tls:} endpoint whose files cannot serve stops netd with one line
    and a non-zero exit.
    """

    @defer.inlineCallbacks
    def assertOneLine(self, endpoint: str, fragment: str) -> defer.Generator:
        out, err, code = yield runCommand(
            TWISTD, "--nodaemon", "--pidfile=", "netd", "--services", "echo",
            "--echo", endpoint, path=self.certs.directory,
        )  # fmt: skip
        self.assertNotEqual(code, 0)
        self.assertNotIn(b"Traceback", out + err)
        lines = err.decode().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("netd: echo: bad endpoint"), lines[0])
        self.assertIn(fragment, lines[0])

    @defer.inlineCallbacks
    def test_badFiles(self) -> defer.Generator:
        """
        A missing key, a key that is not the certificate's, and an expired
        certificate each give one line naming the problem.
        """
        self.certs = certs = makeCertificates(self)
        yield self.assertOneLine(
            f"tls:0:privateKey=missing.key:certKey={certs.serverCert}",
            "cannot read private key 'missing.key'",
        )
        yield self.assertOneLine(
            f"tls:0:privateKey={certs.clientKey}:certKey={certs.serverCert}",
            "does not match certificate",
        )
        past = datetime.datetime(2021, 6, 1, tzinfo=datetime.UTC)
        expired = certs.authority.issue_cert(
            "localhost", not_before=past - datetime.timedelta(days=1), not_after=past
        )
        cert = certs.write("expired.pem", expired.cert_chain_pems[0].bytes())
        key = certs.write("expired.key", expired.private_key_pem.bytes())
        yield self.assertOneLine(
            f"tls:0:privateKey={key}:certKey={cert}", "expired on 2021-06-01"
        )
