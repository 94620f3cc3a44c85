"""
Tests for L{netd.porthold}, which names the program holding a port, and for
C{etc/sysctl.d/netd.conf}, which keeps netd's default ports out of the
kernel's ephemeral range.
"""

from __future__ import annotations

import errno
import importlib.util
import ipaddress
import os
import socket

from twisted.internet.error import CannotListenError
from twisted.trial.unittest import SynchronousTestCase

from netd.plugin import discoverServices
from netd.porthold import (
    boundSockets,
    describePortHolder,
    explainListenError,
    socketHolder,
)
from tests.common import PROJECT

HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when "
    "retrnsmt   uid  timeout inode\n"
)


def row(address: str, port: int, state: str, uid: int, inode: int) -> str:
    """
    One line of C{/proc/net/tcp}: C{address} already in its hexadecimal form.
    """
    return (
        f"   0: {address}:{port:04X} 00000000:0000 {state} 00000000:00000000 "
        f"00:00000000 00000000 {uid:5d}        0 {inode} 1 0000000000000000\n"
    )


class FakeProc:
    """
    A C{/proc} tree in a directory: socket tables and processes.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "net"))

    def table(self, name: str, *rows: str) -> None:
        with open(os.path.join(self.root, "net", name), "w") as table:
            table.write(HEADER + "".join(rows))

    def process(self, pid: int, command: str, *inodes: int) -> None:
        fd = os.path.join(self.root, str(pid), "fd")
        os.makedirs(fd)
        with open(os.path.join(self.root, str(pid), "comm"), "w") as comm:
            comm.write(command + "\n")
        os.symlink("/dev/null", os.path.join(fd, "0"))
        for number, inode in enumerate(inodes, 3):
            os.symlink(f"socket:[{inode}]", os.path.join(fd, str(number)))


class PortHolderTests(SynchronousTestCase):
    """
    L{describePortHolder} and its parts read C{/proc}.
    """

    def setUp(self) -> None:
        self.proc = FakeProc(self.mktemp())

    def test_boundSockets(self) -> None:
        """
        The sockets on a port are read from both tables of a transport,
        addresses decoded, listening ones first.
        """
        self.proc.table(
            "tcp",
            row("0100007F", 41007, "01", 1000, 11),
            row("0100007F", 41008, "0A", 1000, 12),
            row("0100007F", 41007, "06", 1000, 0),  # TIME_WAIT: no inode
        )
        self.proc.table(
            "tcp6",
            row("00000000000000000000000001000000", 41007, "0A", 0, 13),
        )
        self.assertEqual(
            boundSockets(41007, "tcp", self.proc.root),
            [
                (ipaddress.IPv6Address("::1"), True, 0, 13),
                (ipaddress.IPv4Address("127.0.0.1"), False, 1000, 11),
            ],
        )

    def test_holderNamed(self) -> None:
        """
        The process holding the socket is named by its id and command.
        """
        self.proc.table("tcp", row("0100007F", 41007, "0A", 1000, 21))
        self.proc.process(40, "bash", 5)
        self.proc.process(1234, "nc", 21)
        self.assertEqual(
            describePortHolder(41007, "tcp", "127.0.0.1", self.proc.root),
            "port 41007 is in use by pid 1234 (nc)",
        )
        self.assertEqual(socketHolder({21}, self.proc.root), (1234, "nc", 21))

    def test_outgoingConnection(self) -> None:
        """
        A socket that holds the port for a connection, not listening, is
        most often one the kernel gave a port of its ephemeral range: the
        line says to reserve netd's ports.
        """
        self.proc.table("tcp", row("0100007F", 41007, "01", 1000, 31))
        self.proc.process(77, "curl", 31)
        self.assertEqual(
            describePortHolder(41007, "tcp", "127.0.0.1", self.proc.root),
            "port 41007 is in use by pid 77 (curl) for a connection, not "
            "listening (most often an outgoing one the kernel gave this port): "
            "reserve netd's ports with etc/sysctl.d/netd.conf",
        )

    def test_udp(self) -> None:
        """
        UDP sockets are read from the UDP tables.
        """
        self.proc.table("udp", row("00000000", 41007, "07", 1000, 41))
        self.proc.process(9, "socat", 41)
        self.assertEqual(
            describePortHolder(41007, "udp", "127.0.0.1", self.proc.root),
            "port 41007 is in use by pid 9 (socat)",
        )

    def test_holderHidden(self) -> None:
        """
        A holder this user may not look into is named by its user.
        """
        self.proc.table("tcp", row("0100007F", 41007, "0A", 0, 51))
        self.assertEqual(
            describePortHolder(41007, "tcp", "127.0.0.1", self.proc.root),
            "port 41007 is in use by a program of user root (run as root to see which)",
        )

    def test_otherAddressIgnored(self) -> None:
        """
        A socket on another specific address does not conflict, and is not
        named.
        """
        self.proc.table("tcp", row("0200007F", 41007, "0A", 1000, 61))
        self.proc.process(5, "other", 61)
        self.assertEqual(
            describePortHolder(41007, "tcp", "127.0.0.1", self.proc.root),
            "port 41007 is in use",
        )
        self.assertEqual(
            describePortHolder(41007, "tcp", "", self.proc.root),
            "port 41007 is in use by pid 5 (other)",
        )

    def test_noProc(self) -> None:
        """
        Without C{/proc}, the port alone is named.
        """
        self.assertEqual(
            describePortHolder(41007, "tcp", "", self.mktemp()),
            "port 41007 is in use",
        )

    def test_realProcess(self) -> None:
        """
        On this machine's C{/proc}, a port this process listens on is named
        as netd's own (another of its endpoints took it).
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        self.assertEqual(
            explainListenError(
                CannotListenError(
                    "127.0.0.1", port, OSError(errno.EADDRINUSE, "in use")
                ),
                "tcp",
            ),
            f"port {port} is in use by another endpoint of this netd "
            f"(pid {os.getpid()})",
        )

    def test_otherErrors(self) -> None:
        """
        Only "address in use" on a numbered port is explained.
        """
        denied = CannotListenError("", 7, OSError(errno.EACCES, "denied"))
        unix = CannotListenError("", "/run/x", OSError(errno.EADDRINUSE, "in use"))
        self.assertIsNone(explainListenError(denied, "tcp"))
        self.assertIsNone(explainListenError(unix, "tcp"))
        self.assertIsNone(explainListenError(ValueError("x"), "tcp"))


def _exampleDefaultPorts() -> set[int]:
    """
    The default ports of the example service in C{examples/qotd}, loaded from
    its source (so whether it is installed does not matter).
    """
    path = os.path.join(PROJECT, "examples", "qotd", "netd_qotd", "plugin.py")
    spec = importlib.util.spec_from_file_location("_qotd_plugin_source", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return _ports(module.qotd.defaultEndpoints)


def _ports(endpoints: tuple[str, ...] | list[str]) -> set[int]:
    return {int(endpoint.split(":")[1]) for endpoint in endpoints}


#: Default ports that DESIGN.md gives to services of netd that may not be in
#: this checkout yet (they come with the branch that adds them); once they
#: are, their plugins give the same ports.
DESIGNED_PORTS = {50009: "discard", 50019: "chargen"}


class ReservedPortsTests(SynchronousTestCase):
    """
    C{etc/sysctl.d/netd.conf} reserves exactly netd's default ports.
    """

    def settings(self) -> dict[str, str]:
        path = os.path.join(PROJECT, "etc", "sysctl.d", "netd.conf")
        settings = {}
        with open(path) as lines:
            for line in lines:
                line = line.strip()
                if not line or line.startswith(("#", ";")):
                    continue
                key, equals, value = line.partition("=")
                self.assertTrue(equals, f"not KEY = VALUE: {line!r}")
                settings[key.strip()] = value.strip()
        return settings

    def test_reservesDefaultPorts(self) -> None:
        """
        The file sets only C{net.ipv4.ip_local_reserved_ports}, to the
        default ports of every service of netd's own (its plugin is under
        C{netd.services}), those DESIGN.md gives to services still on their
        way (L{DESIGNED_PORTS}), and the example service's (qotd).
        """
        settings = self.settings()
        self.assertEqual(list(settings), ["net.ipv4.ip_local_reserved_ports"])
        reserved = [
            int(port)
            for port in settings["net.ipv4.ip_local_reserved_ports"].split(",")
        ]
        own: set[int] = set()
        for service in discoverServices():
            if type(service).__module__.startswith("netd.services."):
                own |= _ports(service.defaultEndpoints)
        self.assertIn(50007, own)
        self.assertEqual(
            sorted(reserved), sorted(own | set(DESIGNED_PORTS) | _exampleDefaultPorts())
        )
