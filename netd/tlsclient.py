# -*- test-case-name: tests.test_tls -*-
"""
The client side's wait for a verified TLS handshake.

Twisted connects a TLS client's protocol before the handshake, so a client
that cannot verify its server would only see a lost connection. Here the
protocol is connected once the handshake succeeded, and a failed handshake
fails the endpoint's C{connect} with the reason.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure

from netd.tls import TLSError, describeOpenSSLError
from netd.wrappers import PassThroughWrapper


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
