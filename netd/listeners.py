# -*- test-case-name: tests.test_tap -*-
"""
Listening services: one per endpoint, each logging the address it really
listens on, and each turning a failure to listen into a L{StartupError}.

Twisted's C{strports.service} would do for streams, but it hides the port it
listened on, and netd logs every actual address (so that C{tcp:0} is usable
from scripts); UDP has no endpoint type in Twisted at all.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from netd.porthold import explainListenError

#: How many bytes a UDP listener reads of each datagram: enough for the
#: largest, so that none is cut short (65,507 bytes of payload over IPv4,
#: 65,527 over IPv6; Twisted reads 8,192 unless told).
MAX_DATAGRAM_SIZE = 65535


class StartupError(Exception):
    """
    netd cannot start as configured; the message is one line for the operator.
    """


def describeAddress(address: Any) -> str:
    """
    Format an address for logs: C{TCP 127.0.0.1:50007}, C{UDP [::1]:7},
    C{UNIX /run/netd.sock}.
    """
    if isinstance(address, IPv6Address):
        return f"{address.type} [{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.type} {address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        name = address.name
        if isinstance(name, bytes):
            return f"UNIX {name.decode('utf-8', 'replace')}"
        return f"UNIX {name}"
    return str(address)


def _splitEndpoint(description: str) -> list[str]:
    """
    Split an endpoint description on the colons that are not escaped with a
    backslash, unescaping the parts (C{udp:7:interface=\\:\\:1}).
    """
    parts, current, chars = [], [], iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def isDatagramEndpoint(description: str) -> bool:
    """
    Whether C{description} names a UDP endpoint (C{udp:...} or
    C{systemd-udp:...}).
    """
    return description.split(":", 1)[0].lower() in ("udp", "systemd-udp")


def parseInheritedDatagramEndpoint(
    description: str,
) -> tuple[int, str | None, int | None]:
    """
    Parse netd's C{systemd-udp:domain=INET:name=NAME} (or C{index=N})
    endpoint description: a UDP socket handed over by systemd, the datagram
    twin of Twisted's C{systemd:} stream endpoint.

    @return: the address family, and the socket's name or index.
    @raise UsageError: quoting the description when it is malformed.
    """
    kind, *arguments = _splitEndpoint(description)
    if kind.lower() != "systemd-udp":
        raise UsageError(f"expected systemd-udp:..., not {description!r}")
    values: dict[str, str] = {}
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if not equals or key not in ("domain", "name", "index") or key in values:
            raise UsageError(
                f"unknown argument {argument!r} in UDP endpoint {description!r}"
            )
        values[key] = value
    domain = values.get("domain", "INET")
    if domain not in ("INET", "INET6"):
        raise UsageError(f"domain must be INET or INET6 in {description!r}")
    if ("name" in values) == ("index" in values):
        raise UsageError(f"give one of name= or index= in {description!r}")
    index = values.get("index")
    if index is not None and not index.isdigit():
        raise UsageError(f"bad index {index!r} in {description!r}")
    family = socket.AF_INET if domain == "INET" else socket.AF_INET6
    return family, values.get("name"), None if index is None else int(index)


def checkDatagramEndpoint(description: str) -> None:
    """
    Check either form of UDP endpoint description.

    @raise UsageError: quoting the description when it is malformed.
    """
    if description.split(":", 1)[0].lower() == "udp":
        parseDatagramEndpoint(description)
    else:
        parseInheritedDatagramEndpoint(description)


def parseDatagramEndpoint(description: str) -> tuple[int, str]:
    """
    Parse netd's C{udp:PORT[:interface=ADDR]} endpoint description.

    @return: the port and the interface (C{""} for all IPv4 interfaces).
    @raise UsageError: quoting the description when it is malformed.
    """
    kind, *rest = _splitEndpoint(description)
    if kind.lower() != "udp" or not rest:
        raise UsageError(f"expected udp:PORT[:interface=ADDR], not {description!r}")
    portText, *arguments = rest
    interface = ""
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if equals and key == "interface":
            interface = value
        else:
            raise UsageError(
                f"unknown argument {argument!r} in UDP endpoint {description!r}"
            )
    if not portText.isdigit() or int(portText) > 65535:
        raise UsageError(f"bad UDP port {portText!r} in {description!r}")
    return int(portText), interface


class StreamListener(Service):
    """
    Listen on one stream endpoint for one netd service.

    @ivar port: the L{IListeningPort} once listening, else L{None}.
    @ivar note: what the listening line adds after the address, such as
        getfile's root (L{netd.plugin.INetdService.listeningNote}).
    """

    log = Logger()
    note = ""

    def __init__(
        self, serviceName: str, description: str, endpoint: Any, factory: Any
    ) -> None:
        """
        @param serviceName: the netd service, for logs and errors.
        @param description: the endpoint string the operator gave.
        @param endpoint: an L{IStreamServerEndpoint} built from it.
        @param factory: the protocol factory to listen with.
        """
        self.serviceName = serviceName
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self._listening: Deferred[Any] | None = None
        self._observers: list[Deferred[IListeningPort]] = []

    def privilegedStartService(self) -> None:
        """
        Listen now, before twistd drops privileges, so that low ports work;
        a failure that is known at once stops start-up.
        """
        super().privilegedStartService()
        failures: list[Failure] = []
        starting = True

        def failed(failure: Failure) -> None:
            if starting:
                failures.append(failure)
            else:
                self._failedLater(failure)

        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._listened, failed)
        starting = False
        if failures:
            self._listening = None
            reason = explainListenError(failures[0].value, "tcp")
            raise StartupError(
                f"{self.serviceName}: cannot listen on {self.description!r}: "
                f"{reason or failures[0].getErrorMessage()}"
            )

    def startService(self) -> None:
        """
        Listen, unless L{privilegedStartService} did already.
        """
        if self._listening is None and self.port is None:
            self.privilegedStartService()
        super().startService()

    def whenListening(self) -> Deferred[IListeningPort]:
        """
        Fire with the listening port once there is one (at once for the
        endpoints that listen synchronously: C{tcp:}, C{systemd:}...), or
        fail as listening did.
        """
        if self.port is not None:
            return succeed(self.port)
        observer: Deferred[IListeningPort] = Deferred()
        self._observers.append(observer)
        return observer

    def _listened(self, port: IListeningPort) -> None:
        self.port = port
        self.log.info(
            "{service} listening on {address}{note}",
            service=self.serviceName,
            address=describeAddress(port.getHost()),
            note=f", {self.note}" if self.note else "",
        )
        observers, self._observers = self._observers, []
        for observer in observers:
            observer.callback(port)

    def _failedLater(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return  # stopped before it listened
        self.log.failure(
            "{service} cannot listen on {description}",
            failure,
            service=self.serviceName,
            description=self.description,
        )
        observers, self._observers = self._observers, []
        for observer in observers:
            observer.errback(failure)

    def stopService(self) -> Deferred[None] | None:
        """
        Stop listening; connections already made are left alone.
        """
        super().stopService()
        if self._listening is not None:
            self._listening.cancel()
            self._listening = None
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class DatagramListener(Service):
    """
    Listen on one UDP port for one netd service, reading datagrams of any
    size whole (L{MAX_DATAGRAM_SIZE}).

    @ivar port: the UDP port once listening, else L{None}.
    """

    log = Logger()

    def __init__(
        self,
        serviceName: str,
        description: str,
        reactor: Any,
        protocol: Any,
    ) -> None:
        """
        @param serviceName: the netd service, for logs and errors.
        @param description: the C{udp:PORT[:interface=ADDR]} or
            C{systemd-udp:domain=INET:name=NAME} string.
        @param reactor: an L{IReactorUDP}.
        @param protocol: the L{DatagramProtocol} to listen with.
        """
        self.serviceName = serviceName
        self.description = description
        checkDatagramEndpoint(description)
        self.reactor = reactor
        self.protocol = protocol
        self.port: Any = None

    def _listen(self) -> Any:
        if self.description.split(":", 1)[0].lower() == "udp":
            portNumber, interface = parseDatagramEndpoint(self.description)
            return self.reactor.listenUDP(
                portNumber,
                self.protocol,
                interface=interface,
                maxPacketSize=MAX_DATAGRAM_SIZE,
            )
        from netd.systemd import adoptDatagramSocket, inheritedDescriptor

        family, name, index = parseInheritedDatagramEndpoint(self.description)
        descriptor = inheritedDescriptor(name, index)
        return adoptDatagramSocket(
            self.reactor, descriptor, family, self.protocol, MAX_DATAGRAM_SIZE
        )

    def privilegedStartService(self) -> None:
        """
        Bind the UDP port (or adopt the inherited socket) now, before twistd
        drops privileges.
        """
        super().privilegedStartService()
        try:
            self.port = self._listen()
        except Exception as error:
            reason = explainListenError(error, "udp") or error
            raise StartupError(
                f"{self.serviceName}: cannot listen on {self.description!r}: {reason}"
            ) from error
        self.log.info(
            "{service} listening on {address}",
            service=self.serviceName,
            address=describeAddress(self.port.getHost()),
        )

    def startService(self) -> None:
        """
        Bind, unless L{privilegedStartService} did already.
        """
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def whenListening(self) -> Deferred[Any]:
        """
        Fire with the UDP port: binding is synchronous, so once started it
        is there.
        """
        return succeed(self.port)

    def stopService(self) -> Deferred[None] | None:
        """
        Close the UDP port.
        """
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None
