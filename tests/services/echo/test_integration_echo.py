"""
End-to-end: C{twistd -n netd} as a subprocess, talked to over loopback by
our clients and by real ones (C{nc}), and started wrongly on purpose.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from netd.tap import Options
from tests.common import BIN, TWISTD, CollectUntilClosed, runCommand, runNetd


def ownCommand() -> str:
    """
    This process's command name, as C{/proc/PID/comm} gives it.
    """
    with open(f"/proc/{os.getpid()}/comm") as comm:
        return comm.read().strip()


ECHO_ONLY = ("--services", "echo", "--echo", "tcp:0:interface=127.0.0.1")


class UDPClient(protocol.DatagramProtocol):
    """
    Send datagrams and collect the replies.
    """

    def __init__(self) -> None:
        self.replies: defer.DeferredQueue[bytes] = defer.DeferredQueue()

    def datagramReceived(self, data: bytes, address: Any) -> None:
        self.replies.put(data)


class TwistdEchoTests(TestCase):
    """
    netd run by twistd serves echo where it says it listens.
    """

    @defer.inlineCallbacks
    def test_defaults(self) -> Any:
        """
        With no options, netd serves every service where DESIGN.md says, on
        loopback (not discard and chargen, which are off by default), and
        logs each address. The default ports themselves are never bound by a
        test (a netd may be running beside the suite; CI runs one): the
        parsed defaults name them, and the same defaults, moved to free
        ports, serve echo over TCP and UDP.
        """
        options = Options()
        options.parseOptions([])
        self.assertEqual(
            {s.name: options["endpoints"][s.name] for s in options["services"]},
            {
                "echo": [
                    "tcp:50007:interface=127.0.0.1",
                    "udp:50007:interface=127.0.0.1",
                ],
                "getfile": ["tcp:50001:interface=127.0.0.1"],
                "daytime": [
                    "tcp:50013:interface=127.0.0.1",
                    "udp:50013:interface=127.0.0.1",
                ],
                "time": [
                    "tcp:50037:interface=127.0.0.1",
                    "udp:50037:interface=127.0.0.1",
                ],
                "sntp": ["udp:50123:interface=127.0.0.1"],
                "objects": ["tcp:50016:interface=127.0.0.1"],
            },
        )
        netd = yield runNetd(
            self,
            "--services",
            "echo",
            "--echo",
            "tcp:0:interface=127.0.0.1",
            "--echo",
            "udp:0:interface=127.0.0.1",
            listeners=2,
        )
        tcp, udpPort = netd.port("echo"), netd.port("echo", "UDP")
        self.assertIn(("echo", "TCP", "127.0.0.1", tcp), netd.addresses)
        client = CollectUntilClosed(halfClose=False)
        yield connectProtocol(TCP4ClientEndpoint(_reactor, "127.0.0.1", tcp), client)
        client.transport.write(b"Hello network world")
        client.transport.loseWriteConnection()
        self.assertEqual((yield client.closed), b"Echo=>Hello network world")

        udp = UDPClient()
        port = _reactor.listenUDP(0, udp, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        port.write(b"datagram", ("127.0.0.1", udpPort))
        reply = yield udp.replies.get().addTimeout(10, _reactor)
        self.assertEqual(reply, b"Echo=>datagram")

    @defer.inlineCallbacks
    def test_connectionLogged(self) -> Any:
        """
        Each connection is logged once when it ends, with service, peer,
        outcome, bytes each way and duration.
        """
        netd = yield runNetd(self, *ECHO_ONLY)
        client = CollectUntilClosed(halfClose=False)
        yield connectProtocol(
            TCP4ClientEndpoint(_reactor, "127.0.0.1", netd.port("echo")), client
        )
        local = client.transport.getHost().port
        client.transport.write(b"12345")
        client.transport.loseWriteConnection()
        yield client.closed
        expected = (
            f"echo TCP 127.0.0.1:{local} closed: 5 bytes in, 11 bytes out".encode()
        )
        while expected not in netd.output:
            yield netd.outputChanged()

    @defer.inlineCallbacks
    def test_ncPlainEcho(self) -> Any:
        """
        A real client, C{nc -N}, sends a file and half-closes; with
        C{--echo-prefix ''} it reads back exactly what it sent.
        """
        netd = yield runNetd(self, *ECHO_ONLY, "--echo-prefix", "")
        data = os.urandom(200_000)
        out, err, code = yield runCommand(
            "nc", "-N", "127.0.0.1", str(netd.port("echo")), stdin=data
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(out, data)

    @defer.inlineCallbacks
    def test_client(self) -> Any:
        """
        C{netd-client echo} does one lock-step exchange per word.
        """
        netd = yield runNetd(self, *ECHO_ONLY)
        out, err, code = yield runCommand(
            os.path.join(BIN, "netd-client"),
            "echo",
            "--port",
            str(netd.port("echo")),
            "Hello",
            "network",
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(
            out, b"Client received: b'Echo=>Hello'\nClient received: b'Echo=>network'\n"
        )

    @defer.inlineCallbacks
    def test_load(self) -> Any:
        """
        C{netd-client load echo} drives concurrent clients and reports rates
        and latencies.
        """
        netd = yield runNetd(self, *ECHO_ONLY)
        out, err, code = yield runCommand(
            os.path.join(BIN, "netd-client"),
            "load",
            "echo",
            "--port",
            str(netd.port("echo")),
            "--clients",
            "4",
            "--messages",
            "50",
        )
        self.assertEqual(code, 0, err)
        self.assertRegex(
            out.decode(),
            r"^4 clients x 50 messages of 64 bytes in [\d.]+ s: \d+ msg/s, "
            r"p50 [\d.]+ ms, p99 [\d.]+ ms, client CPU \d+%\n$",
        )


class StartupErrorTests(TestCase):
    """
    A start-up mistake is one clear line and a non-zero exit, never a
    traceback.
    """

    @defer.inlineCallbacks
    def startWrongly(self, *arguments: str) -> Any:
        path = self.mktemp()
        os.makedirs(path)
        out, err, code = yield runCommand(
            TWISTD,
            "--nodaemon",
            "--pidfile=",
            "netd",
            "--services",
            "echo",
            *arguments,
            path=path,
        )
        self.assertNotEqual(code, 0)
        self.assertNotIn(b"Traceback", out + err)
        return (out + err).decode().strip().splitlines()[-1]

    @defer.inlineCallbacks
    def test_portInUse(self) -> Any:
        """
        A port in use names the service, the endpoint, the port and the
        program that holds it: here this test's own process.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        line = yield self.startWrongly("--echo", endpoint)
        self.assertEqual(
            line,
            f"netd: echo: cannot listen on {endpoint!r}: port {port} is in use "
            f"by pid {os.getpid()} ({ownCommand()})",
        )

    @defer.inlineCallbacks
    def test_udpPortInUse(self) -> Any:
        """
        A UDP port in use names the service, the endpoint, the port and the
        program that holds it.
        """
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        endpoint = f"udp:{port}:interface=127.0.0.1"
        line = yield self.startWrongly("--echo", endpoint)
        self.assertEqual(
            line,
            f"netd: echo: cannot listen on {endpoint!r}: port {port} is in use "
            f"by pid {os.getpid()} ({ownCommand()})",
        )

    @defer.inlineCallbacks
    def test_malformedEndpoint(self) -> Any:
        """
        An endpoint Twisted does not know is named.
        """
        line = yield self.startWrongly("--echo", "tcpp:7")
        self.assertEqual(
            line, "netd: echo: bad endpoint 'tcpp:7': Unknown endpoint type: 'tcpp'"
        )

    @defer.inlineCallbacks
    def test_unknownService(self) -> Any:
        """
        An unknown service is named, in one line: not after the whole usage
        text, as twistd would print it.
        """
        path = self.mktemp()
        os.makedirs(path)
        out, err, code = yield runCommand(
            TWISTD,
            "-n",
            "netd",
            "--services",
            "nosuch",
            "--echo-delay",
            "1",
            path=path,
        )
        self.assertEqual(code, 1)
        self.assertEqual(out, b"")
        self.assertRegex(
            err.decode(),
            r"\Anetd: unknown service 'nosuch' \(known: [a-z, ]*echo[a-z, ]*\) "
            r"\(twistd netd --help lists the options\)\n\Z",
        )

    @defer.inlineCallbacks
    def test_badValue(self) -> Any:
        """
        A value a service refuses is quoted in one line.
        """
        line = yield self.startWrongly("--echo-delay", "-1")
        self.assertEqual(
            line,
            "netd: --echo-delay must not be negative, not -1.0 "
            "(twistd netd --help lists the options)",
        )

    @defer.inlineCallbacks
    def test_badConfig(self) -> Any:
        """
        A config file with an unknown key names the key.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("[echo]\ncolor = 'red'\n")
        line = yield self.startWrongly("--config", path)
        self.assertIn("unknown key echo.'color' in the config file", line)


class PackagingTests(TestCase):
    """
    The package as a user installs it.
    """

    timeout = 600

    @defer.inlineCallbacks
    def test_freshVirtualenv(self) -> Any:
        """
        C{pip install .} into a fresh virtual environment gives a C{twistd}
        whose C{--help} lists netd, and a C{netd-client}.
        """
        from tests.common import PROJECT

        venv = os.path.abspath(self.mktemp())
        out, err, code = yield runCommand(sys.executable, "-m", "venv", venv)
        self.assertEqual(code, 0, err)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        build = os.path.abspath(self.mktemp())
        out, err, code = yield runCommand(
            os.path.join(venv, "bin", "pip"),
            "install",
            "-q",
            PROJECT,
            env=dict(env, TMPDIR=os.path.dirname(build)),
            path=os.path.dirname(venv),
        )
        self.assertEqual(code, 0, err)
        outside = os.path.dirname(venv)  # not the checkout: only the install
        out, err, code = yield runCommand(
            os.path.join(venv, "bin", "twistd"), "--help", env=env, path=outside
        )
        self.assertEqual(code, 0, err)
        self.assertRegex(out.decode(), r"\n\s+netd\s+Echo, getfile, clock and objects")
        out, err, code = yield runCommand(
            os.path.join(venv, "bin", "netd-client"), "--help", env=env, path=outside
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"echo", out)
