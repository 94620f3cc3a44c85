"""
Tests for L{netd.lifecycle}: readiness, reload and graceful stop of the
service the tap builds, and the options they take.
"""

from __future__ import annotations

import socket
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from netd.lifecycle import DEFAULT_GRACE
from netd.plugin import ServicePlugin
from netd.policy import parseNetwork
from netd.services.echo.plugin import EchoService
from netd.services.echo.server import EchoFactory
from netd.systemd import Notifier
from netd.tap import Options, makeService


class Silent(Protocol):
    """
    A protocol that knows nothing of graceful stops.
    """


class SilentService(ServicePlugin):
    """
    A third-party service with an option and no C{reconfigure}.
    """

    name = "silent"
    defaultEndpoints = ("tcp:0:interface=127.0.0.1",)
    optParameters = [["level", None, 1, "A level.", int]]

    def makeFactory(self, options: Mapping[str, Any], reactor: Any) -> Any:
        return Factory.forProtocol(Silent)


class BrokenService(SilentService):
    """
    A service whose C{reconfigure} raises.
    """

    name = "broken"

    def reconfigure(
        self,
        options: Mapping[str, Any],
        changed: Collection[str],
        factory: Any,
        datagramProtocols: Sequence[Any],
    ) -> Collection[str]:
        raise RuntimeError("no")


SERVICES = [EchoService(), SilentService(), BrokenService()]


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(event) for event in events]


class EchoGracefulStopTests(SynchronousTestCase):
    """
    L{netd.services.echo.server.EchoProtocol.stopGracefully}.
    """

    def connect(self, delay: float = 0.0) -> tuple[Any, StringTransport, Any]:
        clock = MemoryReactorClock()
        protocol = EchoFactory(clock, delay=delay).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport, clock

    def test_idleClosesAtOnce(self) -> None:
        """
        An idle connection closes at once, even while its first reply
        would still be delayed.
        """
        for delay in (0.0, 5.0):
            protocol, transport, clock = self.connect(delay)
            protocol.stopGracefully()
            self.assertTrue(transport.disconnecting)
            self.assertEqual(clock.getDelayedCalls(), [])

    def test_delayedReplyFinishesFirst(self) -> None:
        """
        A connection whose reply is delayed gets it, then closes; nothing
        more is read meanwhile.
        """
        protocol, transport, clock = self.connect(5.0)
        protocol.dataReceived(b"hello")
        protocol.stopGracefully()
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.producerState, "paused")
        clock.advance(5)
        self.assertEqual(transport.value(), b"Echo=>hello")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.producerState, "paused")

    def test_twiceIsOnce(self) -> None:
        """
        Stopping twice, or after the client half-closed, changes nothing.
        """
        protocol, transport, _clock = self.connect()
        protocol.readConnectionLost()
        protocol.stopGracefully()
        protocol.stopGracefully()
        self.assertTrue(transport.disconnecting)


class FakeUDPPort:
    """
    What L{Reactor.listenUDP} returns.
    """

    def __init__(self, port: int, interface: str) -> None:
        self.address = IPv4Address("UDP", interface or "0.0.0.0", port or 4000)

    def getHost(self) -> IPv4Address:
        return self.address

    def stopListening(self) -> None:
        pass


class Reactor(MemoryReactorClock):
    """
    A memory reactor that also binds (pretend) UDP ports.
    """

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUDPPort:
        return FakeUDPPort(port, interface)


class Built:
    """
    netd built by the tap from a config file, on a memory reactor.
    """

    def __init__(self, testCase: SynchronousTestCase, text: str, *argv: str) -> None:
        self.path = testCase.mktemp()
        self.write(text)
        self.config = Options(SERVICES)
        self.config.parseOptions(["--config", self.path, *argv])
        self.reactor = Reactor()
        self.netd = makeService(self.config, reactor=self.reactor)

    def notifyHere(self, testCase: SynchronousTestCase) -> socket.socket:
        """
        Send netd's notifications to a new socket, returned non-blocking.
        """
        path = testCase.mktemp()
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testCase.addCleanup(receiver.close)
        receiver.bind(path)
        receiver.setblocking(False)
        self.netd.notifier = Notifier(path)
        return receiver

    def write(self, text: str) -> None:
        with open(self.path, "w") as stream:
            stream.write(text)

    def reload(self, text: str) -> tuple[bool, list[str]]:
        self.write(text)
        with capturedLogs() as events:
            result = self.netd.reload()
        return result, messages(events)


ECHO = 'services = ["echo"]\n[echo]\nendpoints = ["tcp:0", "udp:0"]\n'


class ReloadTests(SynchronousTestCase):
    """
    L{netd.lifecycle.NetdService.reload}.
    """

    def test_echoOptionsApplyLive(self) -> None:
        """
        Every echo option reaches the running factory and datagram
        protocols, and each change is logged with its old and new value.
        """
        built = Built(self, ECHO)
        running = built.netd.served["echo"]
        ok, logged = built.reload(
            ECHO + 'prefix = "B=>"\nstamp = true\ndelay = 2.5\nudp-rate = 5.0\n'
        )
        self.assertTrue(ok)
        assert running.factory is not None
        factory = running.factory.wrappedFactory
        [datagram] = running.datagramProtocols
        self.assertEqual(
            (factory.replies.prefix, factory.replies.stamp, factory.delay),
            (b"B=>", True, 2.5),
        )
        self.assertEqual(
            (datagram.replies.prefix, datagram.replies.stamp), (b"B=>", True)
        )
        self.assertEqual((datagram.limiter.rate, datagram.limiter.burst), (5.0, 10))
        self.assertIn("reload: echo.prefix changed from 'Echo=>' to 'B=>'", logged)
        self.assertIn("reload: echo.udp-rate changed from 20.0 to 5.0", logged)
        self.assertIn("reload done: 0 changes need a restart", logged)
        self.assertEqual(running.options["delay"], 2.5)

    def test_policyChangeInWords(self) -> None:
        """
        A changed access policy is applied to the running service and
        logged in the options' own words, not as a Python repr.
        """
        built = Built(self, ECHO)
        _ok, logged = built.reload(
            ECHO + '[echo.policy]\nmax-per-source = 4\nallow = ["127.0.0.0/8"]\n'
        )
        self.assertEqual(built.netd.served["echo"].policy.settings.maxPerSource, 4)
        self.assertIn(
            "reload: echo.policy changed: allow any -> 127.0.0.0/8; "
            "max-per-source 100 -> 4",
            logged,
        )
        _ok, logged = built.reload('trusted-proxy = ["10.0.0.5"]\n' + ECHO)
        self.assertEqual(
            built.netd.served["echo"].policy.settings.trustedProxies,
            (parseNetwork("10.0.0.5"),),
        )
        self.assertIn(
            "reload: echo.policy changed: allow 127.0.0.0/8 -> any; "
            "max-per-source 4 -> 100; "
            "trusted-proxy 127.0.0.0/8, ::1/128 -> 10.0.0.5/32",
            logged,
        )

    def test_commandLineStillWins(self) -> None:
        """
        An option given on the command line keeps its value whatever the
        file says on reload.
        """
        built = Built(self, ECHO, "--echo-prefix", "cli=>")
        _ok, logged = built.reload(ECHO + 'prefix = "file=>"\n')
        self.assertEqual(built.netd.served["echo"].options["prefix"], "cli=>")
        self.assertFalse([line for line in logged if "echo.prefix" in line])

    def test_restartNeeded(self) -> None:
        """
        Changed endpoints and services, and the options of a service without
        C{reconfigure}, are logged as needing a restart, and stay as they are
        applied, so that the next reload says so again.
        """
        text = 'services = ["echo", "silent"]\n[echo]\nendpoints = ["tcp:0"]\n'
        built = Built(self, text)
        changed = text.replace('"tcp:0"', '"tcp:1"') + "[silent]\nlevel = 2\n"
        for _ in range(2):
            ok, logged = built.reload(
                changed.replace('"silent"]', '"silent", "broken"]')
            )
            self.assertTrue(ok)
            for key in ("services", "echo.endpoints", "silent.level"):
                self.assertIn(f"reload: {key} changed; it needs a restart", logged)
        self.assertEqual(built.netd.served["silent"].options["level"], 1)

    def test_failingReconfigure(self) -> None:
        """
        A service whose C{reconfigure} raises has the failure logged and its
        changes reported as needing a restart; netd goes on.
        """
        built = Built(self, 'services = ["broken"]\n')
        ok, logged = built.reload('services = ["broken"]\n[broken]\nlevel = 3\n')
        self.assertTrue(ok)
        self.assertIn("reload: broken failed to reconfigure", logged)
        self.assertIn("reload: broken.level changed; it needs a restart", logged)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_invalidConfigChangesNothing(self) -> None:
        """
        A config file that became invalid is logged with its error, and
        nothing changes.
        """
        built = Built(self, ECHO)
        for text in ("[echo\n", ECHO + "prefix = 5\n", ECHO + "grace = -1\n"):
            ok, logged = built.reload(text)
            self.assertFalse(ok)
            self.assertTrue(logged[-1].startswith("reload failed, nothing changed: "))
        self.assertEqual(built.netd.served["echo"].options["prefix"], "Echo=>")

    def test_graceAppliesLive(self) -> None:
        """
        The grace period is a global option a reload applies.
        """
        built = Built(self, ECHO)
        self.assertEqual(built.netd.settings["grace"], DEFAULT_GRACE)
        _ok, logged = built.reload("grace = 3\n" + ECHO)
        self.assertEqual(built.netd.settings["grace"], 3.0)
        self.assertIn("reload: grace changed from 10.0 to 3.0", logged)

    def test_settingsWithoutApplierNeedRestart(self) -> None:
        """
        A global option with no way to apply it live needs a restart; one
        whose applier fails too, with the failure logged.
        """
        built = Built(self, ECHO)
        del built.netd.liveSettings["grace"]
        _ok, logged = built.reload("grace = 3\n" + ECHO)
        self.assertIn("reload: grace changed; it needs a restart", logged)
        self.assertEqual(built.netd.settings["grace"], DEFAULT_GRACE)

        def refuse(value: object) -> None:
            raise ValueError(value)

        built.netd.liveSettings["grace"] = refuse
        _ok, logged = built.reload("grace = 4\n" + ECHO)
        self.assertIn("reload: applying grace failed", logged)
        self.assertIn("reload: grace changed; it needs a restart", logged)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_endpointsReloadTheirFiles(self) -> None:
        """
        A listener's endpoint that offers C{reload()} (as a TLS endpoint
        re-reading its certificate would) is called on every reload that
        keeps its description, and not when the description changed; its
        failure is logged and netd goes on.
        """
        built = Built(self, 'services = ["echo"]\n[echo]\nendpoints = ["tcp:0"]\n')
        calls: list[str] = []

        class Endpoint:
            def reload(self) -> None:
                calls.append("reload")
                if len(calls) == 2:
                    raise OSError("certificate gone")

        [listener] = list(built.netd)
        listener.endpoint = Endpoint()
        _ok, logged = built.reload(
            'services = ["echo"]\n[echo]\nendpoints = ["tcp:0"]\n'
        )
        self.assertEqual(calls, ["reload"])
        self.assertIn("reload: echo endpoint tcp:0 reloaded", logged)
        _ok, logged = built.reload(
            'services = ["echo"]\n[echo]\nendpoints = ["tcp:0"]\n'
        )
        self.assertIn(
            "reload: echo endpoint tcp:0 kept its old files: certificate gone", logged
        )
        built.reload('services = ["echo"]\n[echo]\nendpoints = ["tcp:1"]\n')
        self.assertEqual(len(calls), 2)

    def test_notifiesAround(self) -> None:
        """
        A reload is framed by C{RELOADING=1} and C{READY=1}, even a failed
        one, whose status says so.
        """
        built = Built(self, ECHO)
        receiver = built.notifyHere(self)
        built.reload("[echo\n")
        self.assertTrue(receiver.recv(4096).startswith(b"RELOADING=1\n"))
        self.assertTrue(
            receiver.recv(4096).startswith(b"READY=1\nSTATUS=reload failed: ")
        )


class ReadinessTests(SynchronousTestCase):
    """
    C{READY=1} once every listener listens.
    """

    def test_readyWithEveryAddress(self) -> None:
        """
        Starting netd sends one C{READY=1} whose status names every
        listener's address.
        """
        built = Built(self, ECHO)
        receiver = built.notifyHere(self)
        built.netd.privilegedStartService()
        built.netd.startService()
        message = receiver.recv(4096).decode()
        self.assertTrue(message.startswith("READY=1\nSTATUS=listening on echo TCP "))
        self.assertIn(", echo UDP ", message)
        with self.assertRaises(BlockingIOError):
            receiver.recv(4096)

    def test_readyOnlyOnceRunning(self) -> None:
        """
        Under twistd, which starts services before the reactor runs (and so
        before the reactor handles SIGINT and SIGTERM), C{READY=1} waits
        until the reactor runs: a stop asked for on seeing it is not lost.
        """
        built = Built(self, ECHO)
        receiver = built.notifyHere(self)
        built.netd.handleSignals = True
        self.addCleanup(built.netd.stopService)
        built.netd.privilegedStartService()
        built.netd.startService()
        with self.assertRaises(BlockingIOError):
            receiver.recv(4096)
        built.reactor.run()
        self.assertTrue(receiver.recv(4096).startswith(b"READY=1\n"))

    def startSlow(self) -> tuple[Built, Deferred[Any], socket.socket]:
        """
        netd with one listener whose endpoint has not listened yet.
        """
        built = Built(self, 'services = ["echo"]\n[echo]\nendpoints = ["tcp:0"]\n')
        receiver = built.notifyHere(self)
        listening: Deferred[Any] = Deferred()

        class SlowEndpoint:
            def listen(self, factory: Any) -> Deferred[Any]:
                return listening

        [listener] = list(built.netd)
        listener.endpoint = SlowEndpoint()
        built.netd.privilegedStartService()
        built.netd.startService()
        with self.assertRaises(BlockingIOError):
            receiver.recv(4096)
        return built, listening, receiver

    def test_readyWaitsForSlowEndpoints(self) -> None:
        """
        An endpoint that listens later delays C{READY=1} until it does.
        """
        _built, listening, receiver = self.startSlow()
        listening.callback(FakeUDPPort(7, "127.0.0.1"))
        self.assertEqual(
            receiver.recv(4096),
            b"READY=1\nSTATUS=listening on echo UDP 127.0.0.1:7\n",
        )

    def test_failedListenerIsNotReady(self) -> None:
        """
        An endpoint that fails to listen later gets no C{READY=1}: a status
        saying why, and an error in the log (systemd's start time-out then
        fails the unit).
        """
        built, listening, receiver = self.startSlow()
        with capturedLogs() as events:
            listening.errback(CannotListenError("127.0.0.1", 7, OSError("in use")))
        self.assertEqual(
            receiver.recv(4096).decode(),
            "STATUS=a listener failed: Couldn't listen on 127.0.0.1:7: in use.\n",
        )
        self.assertIn(
            "netd is not ready: a listener failed: Couldn't listen on 127.0.0.1:7: "
            "in use.",
            messages(events),
        )
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)
        self.assertTrue(built.netd.status.startswith("a listener failed"))

    def test_stopBeforeListening(self) -> None:
        """
        Stopping netd while an endpoint has not listened yet cancels it
        quietly, and sends C{STOPPING=1} but never C{READY=1}.
        """
        built, listening, receiver = self.startSlow()
        self.successResultOf(built.netd.stopService())
        self.assertEqual(receiver.recv(4096), b"STOPPING=1\nSTATUS=stopping\n")
        with self.assertRaises(BlockingIOError):
            receiver.recv(4096)
        self.assertEqual(self.flushLoggedErrors(), [])


class GracefulStopTests(SynchronousTestCase):
    """
    L{netd.lifecycle.NetdService.stopService}.
    """

    def started(self, text: str) -> Built:
        built = Built(self, text)
        built.netd.privilegedStartService()
        built.netd.startService()
        return built

    def connect(self, built: Built, service: str) -> StringTransport:
        factory = built.netd.served[service].factory
        assert factory is not None
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return transport

    def test_noConnectionsStopsAtOnce(self) -> None:
        """
        With no connection open, stopping is done at once and stops
        listening.
        """
        built = self.started(ECHO)
        stopped = built.netd.stopService()
        self.successResultOf(stopped)
        self.assertEqual(built.reactor.getDelayedCalls(), [])

    def test_graceOverAbortsTheRest(self) -> None:
        """
        A connection whose protocol cannot stop gracefully keeps its grace
        period, then is aborted; an idle echo connection closes at once.
        """
        built = self.started('grace = 4\nservices = ["echo", "silent"]\n')
        silent = self.connect(built, "silent")
        echo = self.connect(built, "echo")
        with capturedLogs() as events:
            stopped = built.netd.stopService()
        self.assertIn(
            "stopping: 2 connections open, up to 4.0s to finish", messages(events)
        )
        self.assertTrue(echo.disconnecting)
        self.assertFalse(silent.disconnecting)
        self.assertNoResult(stopped)
        built.reactor.advance(3.9)
        self.assertNoResult(stopped)
        with capturedLogs() as events:
            built.reactor.advance(0.1)
        self.assertTrue(silent.disconnected)
        self.successResultOf(stopped)
        self.assertIn(
            "grace period of 4.0s over: aborting 2 connections", messages(events)
        )

    def test_stopsOnceDrained(self) -> None:
        """
        Once the last connection ends, stopping is done and the grace timer
        is cancelled.
        """
        built = self.started('grace = 4\nservices = ["silent"]\n')
        self.connect(built, "silent")
        stopped = built.netd.stopService()
        self.assertNoResult(stopped)
        factory = built.netd.served["silent"].factory
        assert factory is not None
        [connection] = list(factory.protocols)
        connection.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.assertEqual(built.reactor.getDelayedCalls(), [])


class OptionTests(SynchronousTestCase):
    """
    The global C{--grace} option and the config file's checks.
    """

    def parse(self, text: str, *argv: str) -> Options:
        path = self.mktemp()
        with open(path, "w") as stream:
            stream.write(text)
        options = Options(SERVICES)
        options.parseOptions(["--config", path, *argv])
        return options

    def test_grace(self) -> None:
        """
        C{--grace} defaults to 10 seconds, comes from the file, and the
        command line wins.
        """
        self.assertEqual(self.parse("")["grace"], 10.0)
        self.assertEqual(self.parse("grace = 2")["grace"], 2.0)
        self.assertEqual(self.parse("grace = 2", "--grace", "0")["grace"], 0.0)

    def test_badGrace(self) -> None:
        """
        A negative, infinite or non-numeric grace is a usage error quoting
        it.
        """
        for text, argv, expected in [
            ("", ["--grace", "-1"], "-1.0"),
            ("", ["--grace", "inf"], "inf"),
            ("grace = true", [], "grace must be a float, not True"),
            ('grace = "soon"', [], "'soon'"),
        ]:
            with self.assertRaises(UsageError) as raised:
                self.parse(text, *argv)
            self.assertIn(expected, str(raised.exception))

    def test_keysNamed(self) -> None:
        """
        Unknown keys and wrong types are usage errors naming the key.
        """
        for text, expected in [
            ("colour = 1", "unknown key 'colour' in the config file"),
            ("[echo]\ncolour = 1", "unknown key echo.'colour' in the config file"),
            ("echo = 1", "echo must be a table ([echo]) in the config file, not 1"),
            ("[echo]\nprefix = 1", "echo.prefix must be a string, not 1"),
            ("[echo]\nstamp = 1", "echo.stamp must be true or false, not 1"),
            ("[echo]\ndelay = [1]", "echo.delay must be a string, not [1]"),
            ('[echo]\ndelay = "x"', "bad value for echo.delay: 'x'"),
            ("[echo]\nendpoints = [1]", "echo.endpoints must be a list of strings"),
            ("services = 1", "services must be a list of strings, not 1"),
            ('[echo]\nendpoints = ["systemd-udp:name=a:index=1"]', "give one of"),
        ]:
            with self.assertRaises(UsageError) as raised:
                self.parse(text)
            self.assertIn(expected, str(raised.exception))

    def test_rereadIsIndependent(self) -> None:
        """
        C{reread} parses the same command line again into a new object.
        """
        options = self.parse("", "--echo-prefix", "x")
        fresh = options.reread()
        self.assertIsNot(fresh, options)
        self.assertEqual(fresh["serviceOptions"]["echo"]["prefix"], "x")
