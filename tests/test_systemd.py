"""
Tests for L{netd.systemd}: readiness notification and inherited UDP sockets.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import _SystemdParser
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs
from twisted.python.systemd import ListenFDs
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.listeners import (
    DatagramListener,
    StartupError,
    checkDatagramEndpoint,
    isDatagramEndpoint,
    parseInheritedDatagramEndpoint,
)
from netd.systemd import Notifier, inheritedDescriptor
from netd.tap import Options, makeService


class NotifierTests(SynchronousTestCase):
    """
    L{Notifier} sends C{sd_notify} messages to a real C{AF_UNIX} socket.
    """

    def listen(self, address: str) -> socket.socket:
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(address)
        receiver.settimeout(5)
        return receiver

    def test_readyToPath(self) -> None:
        """
        C{ready} sends C{READY=1} and the status, one field a line, to a
        socket named by its path.
        """
        path = self.mktemp()
        receiver = self.listen(path)
        self.assertTrue(Notifier(path).ready("listening on echo TCP 127.0.0.1:7"))
        self.assertEqual(
            receiver.recv(4096),
            b"READY=1\nSTATUS=listening on echo TCP 127.0.0.1:7\n",
        )

    def test_abstractAddress(self) -> None:
        """
        An address starting with C{@} names a socket in the abstract
        namespace, as systemd writes it.
        """
        name = f"netd-test-notifier-{os.getpid()}"
        receiver = self.listen("\0" + name)
        notifier = Notifier.fromEnvironment({"NOTIFY_SOCKET": "@" + name})
        self.assertTrue(notifier.stopping())
        self.assertEqual(receiver.recv(4096), b"STOPPING=1\nSTATUS=stopping\n")

    def test_reloadingCarriesMonotonicTime(self) -> None:
        """
        C{reloading} sends C{RELOADING=1} with C{MONOTONIC_USEC}, the
        monotonic clock in microseconds.
        """
        path = self.mktemp()
        receiver = self.listen(path)
        Notifier(path, monotonic=lambda: 5_000_000_123).reloading()
        self.assertEqual(
            receiver.recv(4096),
            b"RELOADING=1\nSTATUS=reloading the configuration\n"
            b"MONOTONIC_USEC=5000000\n",
        )

    def test_newlineCannotAddAField(self) -> None:
        """
        A status holding a newline stays one field.
        """
        path = self.mktemp()
        receiver = self.listen(path)
        Notifier(path).ready("bad\nREADY=0")
        self.assertEqual(receiver.recv(4096), b"READY=1\nSTATUS=bad READY=0\n")

    def test_unsetSendsNothing(self) -> None:
        """
        Without C{$NOTIFY_SOCKET} (or with it empty) nothing is sent.
        """
        for environ in ({}, {"NOTIFY_SOCKET": ""}):
            notifier = Notifier.fromEnvironment(environ)
            self.assertIsNone(notifier.address)
            self.assertFalse(notifier.ready("x"))

    def test_failureIsLoggedNotRaised(self) -> None:
        """
        When nothing listens at the address, the failure is logged and
        netd goes on.
        """
        missing = self.mktemp()
        with capturedLogs() as events:
            self.assertFalse(Notifier(missing).ready("x"))
        self.assertEqual(len(events), 1)
        self.assertIn(missing, events[0]["log_format"].format(**events[0]))


class InheritedDatagramEndpointTests(SynchronousTestCase):
    """
    C{systemd-udp:domain=INET:name=NAME} names a UDP socket from systemd.
    """

    def test_parse(self) -> None:
        """
        The domain, and either the name or the index, are parsed.
        """
        self.assertEqual(
            parseInheritedDatagramEndpoint("systemd-udp:domain=INET:name=echo-udp"),
            (socket.AF_INET, "echo-udp", None),
        )
        self.assertEqual(
            parseInheritedDatagramEndpoint("systemd-udp:domain=INET6:index=2"),
            (socket.AF_INET6, None, 2),
        )
        self.assertTrue(isDatagramEndpoint("systemd-udp:name=x"))
        self.assertFalse(isDatagramEndpoint("systemd:domain=INET:name=x"))

    def test_malformed(self) -> None:
        """
        Every malformed description is a usage error quoting it.
        """
        for description in [
            "systemd-udp:domain=INET",
            "systemd-udp:domain=INET:name=a:index=0",
            "systemd-udp:domain=UNIX:name=a",
            "systemd-udp:domain=INET:index=-1",
            "systemd-udp:domain=INET:name=a:name=b",
            "systemd-udp:domain=INET:name=a:port=7",
            "systemd-udp:name",
        ]:
            with self.assertRaises(UsageError) as raised:
                checkDatagramEndpoint(description)
            self.assertIn(repr(description), str(raised.exception))

    def test_lookupByNameAndIndex(self) -> None:
        """
        Names and indexes are looked up in the same record as Twisted's
        C{systemd:} endpoints; a missing one says what there is.
        """
        self.patch(_SystemdParser, "_sddaemon", ListenFDs([3, 4], ("echo", "echo-udp")))
        self.assertEqual(inheritedDescriptor("echo-udp", None), 4)
        self.assertEqual(inheritedDescriptor(None, 0), 3)
        with self.assertRaises(LookupError) as raised:
            inheritedDescriptor("sntp", None)
        self.assertEqual(
            str(raised.exception),
            "no inherited socket named 'sntp' (inherited: echo, echo-udp)",
        )
        with self.assertRaises(LookupError) as raised:
            inheritedDescriptor(None, 2)
        self.assertEqual(
            str(raised.exception), "no inherited socket number 2 (2 inherited)"
        )


class InheritedStreamEndpointTests(SynchronousTestCase):
    """
    A C{systemd:} stream endpoint naming no inherited socket, or the wrong
    kind.
    """

    def startupError(self, descriptor: int, endpoint: str) -> str:
        """
        The start-up error of building echo on C{endpoint} when systemd
        handed over C{descriptor} named C{echo}.
        """
        self.patch(_SystemdParser, "_sddaemon", ListenFDs([descriptor], ("echo",)))
        options = Options()
        options.parseOptions(["--services", "echo", "--echo", endpoint])
        with self.assertRaises(StartupError) as raised:
            makeService(options, reactor=MemoryReactor())
        return str(raised.exception)

    def test_missingNameIsOneLine(self) -> None:
        """
        Building netd with a C{systemd:} endpoint whose name systemd did
        not hand over stops start-up with a line naming what there is.
        """
        self.assertEqual(
            self.startupError(3, "systemd:domain=INET:name=getfile"),
            "echo: no inherited socket for 'systemd:domain=INET:name=getfile' "
            "(inherited: echo)",
        )

    def test_wrongDomain(self) -> None:
        """
        An IPv6 socket under C{domain=INET} stops start-up with a line
        saying which domain it needs.
        """
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.bind(("::1", 0))
        self.assertEqual(
            self.startupError(sock.fileno(), "systemd:domain=INET:name=echo"),
            "echo: 'systemd:domain=INET:name=echo': the inherited socket is "
            "AF_INET6, not AF_INET: use domain=INET6",
        )


class Reply(DatagramProtocol):
    def datagramReceived(self, data: bytes, address: object) -> None:
        self.transport.write(b"re:" + data, address)


class InheritedDatagramListenerTests(TestCase):
    """
    L{DatagramListener} serves on an inherited UDP socket.
    """

    def inherit(self, kind: int) -> tuple[socket.socket, int]:
        """
        Make a socket bound on loopback and hand a duplicate of it over as
        the inherited descriptor named C{echo-udp}, which a successful
        adoption closes (and a failed one leaves to the caller).
        """
        sock = socket.socket(socket.AF_INET, kind)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        descriptor = os.dup(sock.fileno())
        self.patch(_SystemdParser, "_sddaemon", ListenFDs([descriptor], ("echo-udp",)))
        return sock, descriptor

    @defer.inlineCallbacks
    def test_servesOnInheritedSocket(self) -> defer.Generator:
        """
        The listener adopts the socket (closing the inherited descriptor),
        answers on its address and logs it.
        """
        sock, descriptor = self.inherit(socket.SOCK_DGRAM)
        listener = DatagramListener(
            "echo", "systemd-udp:domain=INET:name=echo-udp", _reactor, Reply()
        )
        with capturedLogs() as events:
            listener.startService()
        self.addCleanup(listener.stopService)
        port = sock.getsockname()[1]
        self.assertEqual(listener.port.getHost().port, port)
        self.assertIn(f"UDP 127.0.0.1:{port}", str(events[-1]["address"]))
        with self.assertRaises(OSError):
            os.fstat(descriptor)

        received: defer.Deferred[bytes] = defer.Deferred()

        class Client(DatagramProtocol):
            def datagramReceived(self, data: bytes, address: object) -> None:
                received.callback(data)

        client = _reactor.listenUDP(0, Client(), interface="127.0.0.1")
        self.addCleanup(client.stopListening)
        client.write(b"hi", ("127.0.0.1", port))
        self.assertEqual((yield received), b"re:hi")

    def test_streamSocketRefused(self) -> None:
        """
        A stream socket under a C{systemd-udp:} name stops start-up with one
        line.
        """
        _sock, descriptor = self.inherit(socket.SOCK_STREAM)
        self.addCleanup(os.close, descriptor)
        listener = DatagramListener(
            "echo", "systemd-udp:domain=INET:name=echo-udp", _reactor, Reply()
        )
        with self.assertRaises(StartupError) as raised:
            listener.privilegedStartService()
        self.assertEqual(
            str(raised.exception),
            "echo: cannot listen on 'systemd-udp:domain=INET:name=echo-udp': "
            "the inherited socket is not a datagram socket",
        )

    def test_missingNameRefused(self) -> None:
        """
        A name that systemd did not hand over stops start-up with one line.
        """
        _sock, descriptor = self.inherit(socket.SOCK_DGRAM)
        self.addCleanup(os.close, descriptor)
        listener = DatagramListener(
            "sntp", "systemd-udp:domain=INET:name=sntp", _reactor, Reply()
        )
        with self.assertRaises(StartupError) as raised:
            listener.privilegedStartService()
        self.assertIn("no inherited socket named 'sntp'", str(raised.exception))
