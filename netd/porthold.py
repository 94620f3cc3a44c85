# -*- test-case-name: tests.test_porthold -*-
"""
Who holds a port: when listening fails with "address in use", name the
program that holds the port, where Linux's C{/proc} shows it.

The sockets bound to a port are read from C{/proc/net/tcp}, C{tcp6},
C{udp} and C{udp6} (their inodes), and their holder from the links in
C{/proc/PID/fd} (C{socket:[INODE]}) and C{/proc/PID/comm}. Root sees every
process; another user only its own, and for the rest gets the socket
owner's user from C{/proc/net}. Everything here is best effort: on another
system, or when C{/proc} says nothing, the answer is simply less precise,
and no exception escapes.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import pwd
from typing import Any, NamedTuple

from twisted.internet.error import CannotListenError

#: C{/proc/net/tcp}'s state code for a listening socket.
_TCP_LISTEN = "0A"


class BoundSocket(NamedTuple):
    """
    A socket bound to a local port, as C{/proc/net/*} lists it.

    @ivar address: the local address it is bound to.
    @ivar listening: for TCP, whether it listens (otherwise it is a
        connection: most often an outgoing one that the kernel gave this
        port from its ephemeral range); always true for UDP.
    @ivar uid: its owner's user id.
    @ivar inode: its inode, which C{/proc/PID/fd} links name.
    """

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    listening: bool
    uid: int
    inode: int


def _decodeAddress(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """
    Decode C{/proc/net}'s hexadecimal address: 32-bit words in host order
    (little-endian on the machines netd runs on).
    """
    raw = bytes.fromhex(text)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return ipaddress.IPv4Address(words)
    return ipaddress.IPv6Address(words)


def boundSockets(port: int, transport: str, proc: str = "/proc") -> list[BoundSocket]:
    """
    The sockets bound to a local port.

    @param port: the port number.
    @param transport: C{"tcp"} or C{"udp"}.
    @param proc: where C{/proc} is mounted.
    @return: the sockets, listening ones first; empty where C{/proc/net}
        cannot be read.
    """
    found = []
    for table in (transport, transport + "6"):
        try:
            with open(os.path.join(proc, "net", table)) as lines:
                rows = lines.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            try:
                address, portText = fields[1].split(":")
                if int(portText, 16) != port or int(fields[9]) == 0:
                    continue
                found.append(
                    BoundSocket(
                        _decodeAddress(address),
                        transport != "tcp" or fields[3] == _TCP_LISTEN,
                        int(fields[7]),
                        int(fields[9]),
                    )
                )
            except (IndexError, ValueError):
                continue
    found.sort(key=lambda bound: not bound.listening)
    return found


def socketHolder(inodes: set[int], proc: str = "/proc") -> tuple[int, str, int] | None:
    """
    The process (the one with the lowest process id) holding one of some
    sockets.

    @param inodes: the sockets' inodes.
    @param proc: where C{/proc} is mounted.
    @return: its process id, its command name and the socket's inode, or
        L{None} when no process this user may look into holds one.
    """
    links = {f"socket:[{inode}]": inode for inode in inodes}
    try:
        pids = sorted(int(name) for name in os.listdir(proc) if name.isdigit())
    except OSError:
        return None
    for pid in pids:
        try:
            descriptors = os.scandir(os.path.join(proc, str(pid), "fd"))
        except OSError:
            continue  # not ours to see, or gone
        with descriptors:
            for descriptor in descriptors:
                try:
                    target = os.readlink(descriptor.path)
                except OSError:
                    continue
                if target in links:
                    return pid, _command(pid, proc), links[target]
    return None


def _command(pid: int, proc: str) -> str:
    try:
        with open(os.path.join(proc, str(pid), "comm")) as comm:
            return comm.read().strip() or "?"
    except OSError:
        return "?"


def _userName(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _conflicts(
    bound: ipaddress.IPv4Address | ipaddress.IPv6Address, interface: str
) -> bool:
    """
    Whether a socket bound to C{bound} may be what stops listening on
    C{interface} (the same address, or either one a wildcard).
    """
    try:
        wanted = ipaddress.ip_address(interface or "0.0.0.0")
    except ValueError:
        return True  # a host name: cannot tell
    return bound.is_unspecified or wanted.is_unspecified or bound == wanted


def describePortHolder(
    port: int, transport: str, interface: str = "", proc: str = "/proc"
) -> str:
    """
    Say who holds a port: C{"port 50007 is in use by pid 1234 (nc)"}.

    @param port: the port number.
    @param transport: C{"tcp"} or C{"udp"}.
    @param interface: the address netd wanted to listen on (C{""}: all).
    @param proc: where C{/proc} is mounted.
    @return: one phrase for the start-up error line.
    """
    sockets = [
        bound
        for bound in boundSockets(port, transport, proc)
        if _conflicts(bound.address, interface)
    ]
    if not sockets:
        return f"port {port} is in use"
    holder = socketHolder({bound.inode for bound in sockets}, proc)
    if holder is None:
        return (
            f"port {port} is in use by a program of user "
            f"{_userName(sockets[0].uid)} (run as root to see which)"
        )
    pid, command, inode = holder
    if pid == os.getpid():
        return f"port {port} is in use by another endpoint of this netd (pid {pid})"
    description = f"port {port} is in use by pid {pid} ({command})"
    if not any(bound.listening for bound in sockets if bound.inode == inode):
        description += (
            " for a connection, not listening (most often an outgoing one "
            "the kernel gave this port): reserve netd's ports with "
            "etc/sysctl.d/netd.conf"
        )
    return description


def explainListenError(error: Any, transport: str) -> str | None:
    """
    The phrase naming a port's holder, if C{error} is Twisted's
    L{CannotListenError} for an address in use on a numbered port.

    @param error: the exception listening raised.
    @param transport: C{"tcp"} or C{"udp"}.
    @return: the phrase, or L{None} for any other error (then the error's
        own message says it).
    """
    if not isinstance(error, CannotListenError):
        return None
    socketError = error.socketError
    if getattr(socketError, "errno", None) != errno.EADDRINUSE:
        return None
    if not isinstance(error.port, int) or isinstance(error.port, bool):
        return None
    try:
        return describePortHolder(error.port, transport, error.interface or "")
    except Exception:
        return f"port {error.port} is in use"
