# -*- test-case-name: tests.test_tls -*-
"""
TLS for netd's servers: the C{tls:} server endpoint type, and certificates
that can be re-read at run time. The clients' verifying endpoint is in
L{netd.tlsclient}.

    tls:PORT:privateKey=KEY[:certKey=CERT][:clientCA=CAFILE][:interface=ADDR][:backlog=N]

is C{ssl:} with TLS 1.2 at least and Twisted's modern cipher defaults, its
files checked at start-up (readable, a key that matches its certificate, a
certificate valid now), and with C{clientCA} a client certificate required
and verified against that CA (mutual TLS). C{certKey} may hold the
certificate's chain after it; it defaults to the C{privateKey} file.

The dropin imports this module for L{tlsServerParser}; everything heavy
(pyOpenSSL, cryptography, the endpoints) is imported when used.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import (
    IOpenSSLContextFactory,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer


class CertificateError(ValueError):
    """
    A key or certificate file cannot be used; the message is one line.
    """


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise CertificateError(
            f"cannot read {what} {path!r}: {error.strerror}"
        ) from error


def loadKeyAndChain(privateKey: str, certKey: str | None = None) -> tuple[Any, list]:
    """
    Read a private key and the certificate chain it belongs to, and check
    them: the key matches the first certificate, which is valid now.

    @param privateKey: a PEM file holding the private key (unencrypted).
    @param certKey: a PEM file holding the certificate, then any
        intermediate certificates; C{privateKey} by default.
    @return: the key and the chain, as C{cryptography} objects.
    @raise CertificateError: saying which file is wrong and how.
    """
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    certKey = certKey or privateKey
    keyData = _read(privateKey, "private key")
    certData = _read(certKey, "certificate")
    try:
        key = load_pem_private_key(keyData, password=None)
    except (ValueError, TypeError) as error:
        raise CertificateError(
            f"no usable private key in {privateKey!r} (an unencrypted PEM key "
            "is needed)"
        ) from error
    try:
        chain = x509.load_pem_x509_certificates(certData)
    except ValueError as error:
        raise CertificateError(f"no certificate in {certKey!r}") from error
    leaf = chain[0]
    now = datetime.now(UTC)
    if leaf.not_valid_after_utc < now:
        raise CertificateError(
            f"certificate {certKey!r} expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
        )
    if leaf.not_valid_before_utc > now:
        raise CertificateError(
            f"certificate {certKey!r} is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d}"
        )

    def spki(publicKey: Any) -> bytes:
        return publicKey.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    if spki(key.public_key()) != spki(leaf.public_key()):
        raise CertificateError(
            f"private key {privateKey!r} does not match certificate {certKey!r}"
        )
    return key, chain


def loadCertificates(path: str, what: str = "CA certificates") -> list:
    """
    Read every certificate of a PEM file (a CA bundle).

    @return: C{cryptography} certificates, at least one.
    @raise CertificateError: when the file is unreadable or holds none.
    """
    from cryptography import x509

    data = _read(path, what)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise CertificateError(f"no certificate in {what} {path!r}") from error


def serverOptions(
    privateKey: str, certKey: str | None = None, clientCA: str | None = None
) -> Any:
    """
    Build netd's server TLS options from files.

    @param privateKey: the key file; see L{loadKeyAndChain}.
    @param certKey: the certificate (and chain) file.
    @param clientCA: when given, a client certificate signed by one of this
        file's CAs is required.
    @return: a L{twisted.internet.ssl.CertificateOptions} allowing TLS 1.2
        and later only.
    @raise CertificateError: naming the bad file.
    """
    from OpenSSL.crypto import X509, PKey
    from OpenSSL.SSL import Error
    from twisted.internet.ssl import CertificateOptions, TLSVersion

    key, chain = loadKeyAndChain(privateKey, certKey)
    authorities = (
        [X509.from_cryptography(ca) for ca in loadCertificates(clientCA)]
        if clientCA
        else None
    )
    options = CertificateOptions(
        privateKey=PKey.from_cryptography_key(key),
        certificate=X509.from_cryptography(chain[0]),
        extraCertChain=[X509.from_cryptography(c) for c in chain[1:]],
        verify=authorities is not None,
        caCerts=authorities,
        requireCertificate=True,
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    try:
        options.getContext()
    except Error as error:
        raise CertificateError(
            f"OpenSSL refuses {privateKey!r}/{certKey!r}: {describeOpenSSLError(error)}"
        ) from error
    return options


def describeOpenSSLError(error: Exception) -> str:
    """
    The reasons of an C{OpenSSL.SSL.Error}, as a short line.
    """
    reasons = [
        entry[-1]
        for entry in (error.args[0] if error.args else [])
        if isinstance(entry, tuple) and entry
    ]
    return "; ".join(reasons) or str(error)


@implementer(IOpenSSLContextFactory)
class ServerCertificates:
    """
    A server's TLS context factory whose files can be re-read at run time.

    Twisted asks it for a context for every new connection, so after
    L{reload} new connections get the new certificate, and connections
    already open keep theirs.

    @ivar privateKey: the key file.
    @ivar certKey: the certificate (and chain) file.
    @ivar clientCA: the CA file client certificates must chain to, or
        L{None} for no client certificates.
    """

    def __init__(
        self, privateKey: str, certKey: str | None = None, clientCA: str | None = None
    ) -> None:
        """
        @raise CertificateError: when the files cannot be used.
        """
        self.privateKey = privateKey
        self.certKey = certKey or privateKey
        self.clientCA = clientCA
        self._options = serverOptions(privateKey, self.certKey, clientCA)

    def reload(self) -> None:
        """
        Re-read the key, certificate and CA files.

        @raise CertificateError: when they cannot be used; the certificate
            in use then stays in use.
        """
        self._options = serverOptions(self.privateKey, self.certKey, self.clientCA)

    def getContext(self) -> Any:
        """
        The OpenSSL context for a new connection.
        """
        return self._options.getContext()


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    Listen for TLS connections over TCP: the endpoint C{tls:} describes.
    A client's C{close_notify} is a half-close (L{netd.tlshalfclose}).

    @ivar certificates: the L{ServerCertificates} it serves.
    """

    def __init__(
        self,
        reactor: Any,
        port: int,
        certificates: ServerCertificates,
        interface: str = "",
        backlog: int = 50,
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.certificates = certificates
        self.interface = interface
        self.backlog = backlog

    def reload(self) -> None:
        """
        Re-read the key, certificate and CA files, for connections made from
        now on (netd's reload calls this on every endpoint that has it).

        @raise CertificateError: when they cannot be used; the certificate
            in use then stays in use.
        """
        self.certificates.reload()

    def listen(self, protocolFactory: Any) -> Any:
        """
        Listen with C{protocolFactory}; see L{IStreamServerEndpoint.listen}.
        """
        from twisted.internet.defer import execute

        from netd.tlshalfclose import listenTLS

        return execute(
            listenTLS,
            self.reactor,
            self.port,
            protocolFactory,
            self.certificates,
            backlog=self.backlog,
            interface=self.interface,
        )


@implementer(IPlugin, IStreamServerEndpointStringParser)
class TLSServerParser:
    """
    The C{tls:} endpoint type, for L{twisted.internet.endpoints.serverFromString}.
    """

    prefix = "tls"

    def parseStreamServer(
        self, reactor: Any, *args: str, **kwargs: str
    ) -> TLSServerEndpoint:
        """
        Parse C{tls:PORT:privateKey=KEY[:certKey=CERT][:clientCA=CA]
        [:interface=ADDR][:backlog=N]} and read its files.

        @raise ValueError: one line saying what is wrong.
        """
        if "privateKey" not in kwargs and args and not str(args[0]).isdigit():
            return twistedTLSEndpoint(reactor, *args, **kwargs)
        known = {"port", "privateKey", "certKey", "clientCA", "interface", "backlog"}
        for name in kwargs:
            if name not in known:
                raise ValueError(f"unknown tls: argument {name!r}")
        if len(args) > 1:
            raise ValueError(f"too many tls: arguments {args[1:]!r}")
        port = args[0] if args else kwargs.get("port", "")
        if not port.isdigit() or int(port) > 65535:
            raise ValueError(f"bad tls: port {port!r}")
        backlog = kwargs.get("backlog", "50")
        if not backlog.isdigit():
            raise ValueError(f"bad tls: backlog {backlog!r}")
        if "privateKey" not in kwargs:
            raise ValueError("tls: needs privateKey=FILE")
        return TLSServerEndpoint(
            reactor,
            int(port),
            ServerCertificates(
                kwargs["privateKey"], kwargs.get("certKey"), kwargs.get("clientCA")
            ),
            interface=kwargs.get("interface", ""),
            backlog=int(backlog),
        )


tlsServerParser = TLSServerParser()


def twistedTLSEndpoint(reactor: Any, *args: str, **kwargs: str) -> Any:
    """
    Twisted's own C{tls:PATH[:port=N]} endpoint (since Twisted 24.10: a
    directory of PEM files served by SNI, re-read when they change).

    Both Twisted and netd register the C{tls:} prefix; netd's parser takes
    Twisted's form too, so that either parser serves either form.
    """
    from netd.twistedprivate import twistedTLSParser

    parser = twistedTLSParser()
    if parser is None:
        raise ValueError("tls: needs privateKey=FILE")
    from netd.tlshalfclose import halfCloseableTwistedTLS

    return halfCloseableTwistedTLS(parser().parseStreamServer(reactor, *args, **kwargs))


def parseTLSEndpoint(reactor: Any, description: str) -> Any:
    """
    Build a C{tls:} endpoint with netd's parser, whichever C{tls:} parser
    L{serverFromString <twisted.internet.endpoints.serverFromString>}
    would pick.

    @raise ValueError: one line saying what is wrong.
    """
    from netd.listeners import _splitEndpoint

    _kind, *parts = _splitEndpoint(description)
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in parts:
        key, equals, value = part.partition("=")
        if equals:
            kwargs[key] = value
        else:
            args.append(part)
    return tlsServerParser.parseStreamServer(reactor, *args, **kwargs)


def peerSubject(transport: Any) -> str | None:
    """
    The subject of the certificate a TLS peer presented and that was
    verified, as an RFC 4514 string (C{CN=client,O=example}); L{None} when
    the transport is not TLS or the peer sent none.
    """
    getPeerCertificate = getattr(transport, "getPeerCertificate", None)
    if getPeerCertificate is None:
        return None
    try:
        certificate = getPeerCertificate()
    except Exception:
        return None
    if certificate is None:
        return None
    return str(certificate.to_cryptography().subject.rfc4514_string())
