# -*- test-case-name: tests.test_systemd -*-
"""
What netd needs from systemd, without libsystemd: readiness notification
(C{sd_notify(3)} over C{$NOTIFY_SOCKET}) and the datagram sockets a socket
unit hands over (C{sd_listen_fds(3)}, looked up by C{FileDescriptorName=}).

Stream sockets need nothing here: Twisted's C{systemd:domain=INET:name=NAME}
endpoint adopts them.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from twisted.logger import Logger

from netd.twistedprivate import systemdListenFDs


class Notifier:
    """
    Send state changes to the service manager, as C{sd_notify(3)} does.

    Without a socket (netd not started by systemd with C{Type=notify}) every
    call does nothing. A failure to send is logged, never raised: the
    service manager's view of netd must not stop netd from serving.

    @ivar address: the C{AF_UNIX} address messages go to, or L{None}.
    """

    log = Logger()

    def __init__(
        self,
        address: str | None,
        monotonic: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        """
        @param address: C{$NOTIFY_SOCKET}: a path, or C{@NAME} for an
            abstract socket; L{None} or C{""} to send nothing.
        @param monotonic: C{CLOCK_MONOTONIC} in nanoseconds, for
            C{MONOTONIC_USEC}.
        """
        self.address: str | None = None
        if address:
            self.address = "\0" + address[1:] if address[0] == "@" else address
        self.monotonic = monotonic

    @classmethod
    def fromEnvironment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """
        A notifier for C{$NOTIFY_SOCKET}, if it is set.
        """
        environ = os.environ if environ is None else environ
        return cls(environ.get("NOTIFY_SOCKET"))

    def notify(self, **fields: str) -> bool:
        """
        Send one message of C{KEY=VALUE} lines (C{READY="1"}).

        @return: whether a message was sent.
        """
        if self.address is None or not fields:
            return False
        message = "".join(
            f"{key}={value.replace(chr(10), ' ')}\n" for key, value in fields.items()
        )
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                sender.sendto(message.encode("utf-8"), self.address)
        except OSError as error:
            self.log.warn(
                "cannot notify the service manager at {address!r}: {error}",
                address=self.address,
                error=error,
            )
            return False
        return True

    def ready(self, status: str) -> bool:
        """
        netd serves on every listener (again, after a reload).
        """
        return self.notify(READY="1", STATUS=status)

    def reloading(self) -> bool:
        """
        netd is re-reading its configuration; C{MONOTONIC_USEC} tells
        systemd 253 and later which reload this is (older ones ignore it).
        """
        return self.notify(
            RELOADING="1",
            STATUS="reloading the configuration",
            MONOTONIC_USEC=str(self.monotonic() // 1000),
        )

    def stopping(self) -> bool:
        """
        netd is shutting down.
        """
        return self.notify(STOPPING="1", STATUS="stopping")


def inheritedNames() -> str:
    """
    The names of the sockets handed over by the service manager, for
    messages: C{"echo, echo-udp"}, or C{"none"}.
    """
    return ", ".join(sorted(systemdListenFDs().inheritedNamedDescriptors())) or "none"


def inheritedDescriptor(name: str | None, index: int | None) -> int:
    """
    The file descriptor of a socket handed over by the service manager.

    Twisted's C{systemd:} endpoint parser reads C{LISTEN_FDS} once (and then
    removes it from the environment, as C{sd_listen_fds(3)} does), so this
    asks the very same record, keeping C{systemd:} and C{systemd-udp:}
    endpoints in agreement.

    @param name: the socket's C{FileDescriptorName=}, or L{None}.
    @param index: its position among the inherited sockets, or L{None}.
    @raise LookupError: with a message for the operator, when there is no
        such socket.
    """
    inherited = systemdListenFDs()
    if name is not None:
        named = inherited.inheritedNamedDescriptors()
        if name not in named:
            raise LookupError(
                f"no inherited socket named {name!r} (inherited: {inheritedNames()})"
            )
        return named[name]
    assert index is not None
    descriptors = inherited.inheritedDescriptors()
    if not 0 <= index < len(descriptors):
        raise LookupError(
            f"no inherited socket number {index} ({len(descriptors)} inherited)"
        )
    return descriptors[index]


def inheritedHost(descriptor: int) -> str | None:
    """
    The host an inherited socket is bound to (C{"127.0.0.1"}, C{"::"}), or
    L{None} for a UNIX socket, which has no host.
    """
    with socket.socket(fileno=os.dup(descriptor)) as probe:
        if probe.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        host: str = probe.getsockname()[0]
        return host


def familyMismatch(descriptor: int, family: int) -> str | None:
    """
    Why an inherited socket does not fit the address family the operator
    declared (Twisted would adopt it anyway, and report nonsense addresses).

    @return: a message for the operator, or L{None} when it fits.
    """
    with socket.socket(fileno=os.dup(descriptor)) as probe:
        actual = probe.family
    if actual == family:
        return None
    domain = {socket.AF_INET: "INET", socket.AF_INET6: "INET6"}.get(actual)
    advice = f": use domain={domain}" if domain else ""
    return (
        f"the inherited socket is {socket.AddressFamily(actual).name}, "
        f"not {socket.AddressFamily(family).name}{advice}"
    )


def adoptDatagramSocket(
    reactor: Any, descriptor: int, family: int, protocol: Any, maxPacketSize: int
) -> Any:
    """
    Serve C{protocol} on an inherited UDP socket, and close the inherited
    descriptor (the reactor keeps its own duplicate).

    @param family: the address family the operator declared (C{AF_INET} for
        both IPv4 and IPv6 sockets of C{domain=INET}).
    @param maxPacketSize: how many bytes to read of each datagram.
    @raise ValueError: when the descriptor is not a datagram socket.
    @return: the listening port.
    """
    with socket.socket(fileno=os.dup(descriptor)) as probe:
        if probe.type != socket.SOCK_DGRAM:
            raise ValueError("the inherited socket is not a datagram socket")
        actual = probe.family
    if family == socket.AF_INET and actual == socket.AF_INET6:
        family = actual
    elif family != actual:
        raise ValueError(
            f"the inherited socket is {socket.AddressFamily(actual).name}, "
            f"not {socket.AddressFamily(family).name}"
        )
    os.set_blocking(descriptor, False)
    port = reactor.adoptDatagramPort(descriptor, family, protocol, maxPacketSize)
    os.close(descriptor)
    return port
