"""
End-to-end TLS: C{twistd -n netd} serving C{tls:} endpoints, checked with
C{openssl s_client}, socat and C{netd-client --tls}; bad certificates stop
it with one line.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from tests.common import (
    BIN,
    TWISTD,
    makeCertificates,
    opensslClient,
    projectEnvironment,
    runCommand,
    runNetd,
    waitForOutput,
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


class HalfCloseOutsideClientTests(TestCase):
    """
    Outside clients that send their C{close_notify} right after the
    request (socat when its input ends) or after the reply (C{openssl
    s_client} when its input ends) get every reply byte, over C{tls:} and
    C{ssl:}, TLS 1.2 and 1.3.
    """

    VERSIONS = {
        "TLS 1.2": "openssl-max-proto-version=TLS1.2",
        "TLS 1.3": "openssl-min-proto-version=TLS1.3",
    }

    @defer.inlineCallbacks
    def startNetd(self) -> defer.Generator:
        self.certs = makeCertificates(self)
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.big = os.urandom(1024 * 1024)
        with open(os.path.join(self.root, "big"), "wb") as stream:
            stream.write(self.big)
        netd = yield runNetd(
            self,
            "--services",
            "echo,getfile",
            "--echo-prefix",
            "",
            "--echo",
            self.certs.endpoint(),
            "--echo",
            self.certs.endpoint().replace("tls:", "ssl:", 1),
            "--getfile",
            self.certs.endpoint(),
            "--getfile-root",
            self.root,
            listeners=3,
        )
        return netd

    def socat(self, port: int, version: str, stdin: bytes) -> defer.Deferred:
        # -t: how long socat waits for the reply once its input ended (0.5 s
        # by default); netd closes long before.
        return runCommand(
            "socat",
            "-t",
            "60",
            "-",
            f"OPENSSL:127.0.0.1:{port},cafile={self.certs.ca},{self.VERSIONS[version]}",
            stdin=stdin,
        )

    @defer.inlineCallbacks
    def test_socat(self) -> defer.Generator:
        """
        socat, whose C{close_notify} follows its request at once, gets 6
        bytes, 120 kB and 1 MiB echoed whole and a 1 MiB file from getfile.
        """
        netd = yield self.startNetd()
        echoPorts = [port for name, _, _, port in netd.addresses if name == "echo"]
        self.assertEqual(len(echoPorts), 2)
        for version in self.VERSIONS:
            for port in echoPorts:
                for request in (b"hello\n", self.big[:120_000], self.big):
                    out, err, code = yield self.socat(port, version, request)
                    self.assertEqual(
                        (len(out), code), (len(request), 0), (version, port, err)
                    )
                    self.assertEqual(out, request)
            out, err, code = yield self.socat(netd.port("getfile"), version, b"big\n")
            self.assertEqual((len(out), code), (len(self.big), 0), (version, err))
            self.assertEqual(out, self.big)

    @defer.inlineCallbacks
    def test_sClient(self) -> defer.Generator:
        """
        C{openssl s_client}, whose C{close_notify} (and TCP end) follow its
        request once its input ends, ends an echo connection cleanly: netd
        closes with its own C{close_notify}, and s_client exits.
        """
        netd = yield self.startNetd()
        port = netd.port("echo")
        for version in ("-tls1_2", "-tls1_3"):
            for request in (b"hello\n", self.big):
                client = SClient(request)
                _reactor.spawnProcess(
                    client,
                    "openssl",
                    [
                        "openssl",
                        "s_client",
                        "-connect",
                        f"127.0.0.1:{port}",
                        "-CAfile",
                        self.certs.ca,
                        "-verify_return_error",
                        "-quiet",
                        "-no_ign_eof",
                        "-nocommands",
                        version,
                    ],
                    env=projectEnvironment(),
                )
                code = yield client.ended
                self.assertEqual((code, client.out), (0, request), version)
        output = yield waitForOutput(netd, "closed: ", 4)
        self.assertEqual(output.count(f"closed: {len(self.big)} bytes in, "), 2)


class SClient(ProcessProtocol):
    """
    C{openssl s_client}: write the request to its input, and end its input
    once the whole reply came out, so its C{close_notify} follows the reply.

    @ivar ended: fires with its exit status.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.out = b""
        self.ended: defer.Deferred[int] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if len(self.out) >= len(self.request):
            self.transport.closeStdin()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)
