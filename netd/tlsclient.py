# -*- test-case-name: tests.test_tls -*-
"""
TLS for netd's clients: an endpoint that verifies the server's certificate
and host name, and connects its protocol only once the handshake succeeded.

Twisted connects a TLS client's protocol before the handshake, so a client
that cannot verify its server would only see a lost connection. Here the
protocol is connected once the handshake succeeded, and a failed handshake
fails the endpoint's C{connect} with the reason.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from netd.tls import (
    CertificateError,
    describeOpenSSLError,
    loadCertificates,
    loadKeyAndChain,
)
from netd.wrappers import PassThroughWrapper


class TLSError(ConnectionError):
    """
    A TLS connection could not be made or verified; one line for the user.
    """


def describeHandshakeFailure(failure: Failure, where: str) -> str:
    """
    One line saying why a TLS connection to C{where} failed.
    """
    from OpenSSL.SSL import Error
    from service_identity import VerificationError

    error = failure.value
    if isinstance(error, VerificationError):
        return (
            f"the certificate of {where} is not valid for that host name or "
            "address (a name mismatch)"
        )
    if isinstance(error, Error):
        return f"TLS with {where} failed: {describeOpenSSLError(error)}"
    return f"TLS with {where} failed: {failure.getErrorMessage()}"


class HandshakeWaitingProtocol(PassThroughWrapper):
    """
    Connect the wrapped protocol only once the TLS handshake is done.
    """

    factory: HandshakeWaitingFactory
    _handshaken = False
    _timeout: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connected = True
        self._timeout = self.factory.endpoint.clock.callLater(
            self.factory.endpoint.timeout, self._timedOut
        )

    def _timedOut(self) -> None:
        self._timeout = None
        self.factory.failed(
            TLSError(f"TLS with {self.factory.endpoint.where} timed out")
        )
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        self._handshaken = True
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        super().makeConnection(self.transport)
        super().handshakeCompleted()
        self.factory.handshake.callback(self.wrappedProtocol)

    def connectionLost(self, reason: Failure) -> None:
        if self._handshaken:
            super().connectionLost(reason)
            return
        self.connected = False
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        self.factory.failed(
            TLSError(describeHandshakeFailure(reason, self.factory.endpoint.where))
        )


class HandshakeWaitingFactory(WrappingFactory):
    """
    Wrap a client's factory; L{handshake} fires with its protocol once
    connected and verified, or fails with a L{TLSError}.
    """

    protocol = HandshakeWaitingProtocol
    noisy = False

    def __init__(self, wrappedFactory: Any, endpoint: Any) -> None:
        super().__init__(wrappedFactory)
        self.endpoint = endpoint
        self.handshake: Deferred[Any] = Deferred()

    def failed(self, error: Exception) -> None:
        """
        Fail L{handshake}, unless it fired already.
        """
        if not self.handshake.called:
            self.handshake.errback(error)


def clientEndpoint(
    reactor: Any,
    host: str,
    port: int,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    timeout: float = 30.0,
) -> Any:
    """
    A client endpoint that connects with TLS 1.2 or later and verifies the
    server's certificate and host name (with C{service_identity}).

    Its C{connect} fires only once the handshake succeeded, with the
    protocol connected; a server that cannot be verified makes it fail with
    a L{TLSError} saying why.

    @param host: the server's host name or IP address, checked against its
        certificate.
    @param ca: a PEM file of the CAs to trust; the system's by default.
    @param cert: a PEM file with the client certificate to present (mutual
        TLS); it may hold the key too.
    @param key: the client certificate's key file; C{cert} by default.
    @param timeout: seconds to wait for the connection and the handshake.
    @raise CertificateError: when a file cannot be used.
    """
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
    from twisted.internet.ssl import (
        Certificate,
        KeyPair,
        PrivateCertificate,
        TLSVersion,
        optionsForClientTLS,
        platformTrust,
        trustRootFromCertificates,
    )

    trustRoot: Any = platformTrust()
    if ca is not None:
        from OpenSSL.crypto import X509

        trustRoot = trustRootFromCertificates(
            [Certificate(X509.from_cryptography(c)) for c in loadCertificates(ca)]
        )
    clientCertificate = None
    if cert is not None or key is not None:
        if cert is None:
            raise CertificateError("a client key needs its certificate (--cert)")
        from OpenSSL.crypto import X509, PKey

        privateKey, chain = loadKeyAndChain(key or cert, cert)
        clientCertificate = PrivateCertificate.fromCertificateAndKeyPair(
            Certificate(X509.from_cryptography(chain[0])),
            KeyPair(PKey.from_cryptography_key(privateKey)),
        )
    options = optionsForClientTLS(
        host,
        trustRoot=trustRoot,
        clientCertificate=clientCertificate,
        extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
    )
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return VerifiedTLSEndpoint(
        wrapClientTLS(options, HostnameEndpoint(reactor, host, port, timeout=timeout)),
        reactor,
        where,
        timeout,
    )


@implementer(IStreamClientEndpoint)
class VerifiedTLSEndpoint:
    """
    Wrap a TLS client endpoint so that C{connect} waits for the handshake.
    """

    def __init__(
        self, tlsEndpoint: Any, clock: Any, where: str, timeout: float
    ) -> None:
        self.tlsEndpoint = tlsEndpoint
        self.clock = clock
        self.where = where
        self.timeout = timeout

    def connect(self, protocolFactory: Any) -> Any:
        """
        Connect; fire with the protocol once the server is verified.
        """
        waiting = HandshakeWaitingFactory(protocolFactory, self)
        connecting = self.tlsEndpoint.connect(waiting)
        connecting.addCallback(lambda _: waiting.handshake)
        return connecting
