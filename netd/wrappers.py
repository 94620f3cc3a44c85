# -*- test-case-name: tests.test_policy -*-
"""
A protocol wrapper that hides nothing from the protocol it wraps.

netd stacks several wrappers between an endpoint and a service's protocol
(the access policy, the connection log, the TLS client's handshake wait);
each must be invisible to the service.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import alsoProvides, implementer


@implementer(IHandshakeListener)
class PassThroughWrapper(ProtocolWrapper):
    """
    A L{ProtocolWrapper} that passes on what Twisted's own does not.

    Half-closes reach a wrapped protocol that accepts them (Twisted's
    L{ProtocolWrapper} closes the whole connection instead), and so does
    the end of a TLS handshake (L{IHandshakeListener}). Producer calls pass
    both ways already: C{registerProducer} goes to the real transport, and
    C{pauseProducing}/C{resumeProducing}/C{stopProducing} too.
    """

    wrappedProtocol: Any

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            alsoProvides(self, IHalfCloseableProtocol)

    def readConnectionLost(self) -> None:
        self.wrappedProtocol.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.wrappedProtocol.writeConnectionLost()

    def handshakeCompleted(self) -> None:
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()
