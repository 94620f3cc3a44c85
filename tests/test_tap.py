"""
Tests for L{netd.tap}: options from plugins, the config file, and the
services C{makeService} builds.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.listeners import StartupError, parseDatagramEndpoint
from netd.plugin import ServicePlugin
from netd.services.echo.plugin import echo
from netd.tap import Options, makeService
from tests.common import MemoryReactorUDP


class StreamOnly(ServicePlugin):
    """
    A service that speaks only over streams, with one option of each kind.
    """

    name = "hello"
    defaultEndpoints = ("tcp:50099:interface=127.0.0.1",)
    optParameters = [["greeting", None, "hi", "What to say.", str]]
    optFlags = [["loud", None, "Shout it."]]

    def makeFactory(self, options: Any, reactor: Any) -> Any:
        return Factory.forProtocol(Protocol)


class OptionsTests(SynchronousTestCase):
    """
    L{Options} built from a given set of services.
    """

    def parse(self, *argv: str) -> Options:
        options = Options(services=[echo, StreamOnly()])
        options.parseOptions(list(argv))
        return options

    def test_defaults(self) -> None:
        """
        With no options every service runs on its default endpoints with its
        default options.
        """
        options = self.parse()
        self.assertEqual([s.name for s in options["services"]], ["echo", "hello"])
        self.assertEqual(
            options["endpoints"]["echo"],
            ["tcp:50007:interface=127.0.0.1", "udp:50007:interface=127.0.0.1"],
        )
        self.assertEqual(
            options["serviceOptions"]["echo"],
            {"prefix": "Echo=>", "delay": 0.0, "udp-rate": 20.0, "stamp": False},
        )
        self.assertEqual(
            options["serviceOptions"]["hello"], {"greeting": "hi", "loud": False}
        )

    def test_endpointsReplaceDefaults(self) -> None:
        """
        A service's endpoint option is repeatable and replaces its defaults.
        """
        options = self.parse("--echo", "tcp:7", "--echo", "udp:7")
        self.assertEqual(options["endpoints"]["echo"], ["tcp:7", "udp:7"])
        self.assertEqual(
            options["endpoints"]["hello"], ["tcp:50099:interface=127.0.0.1"]
        )

    def test_serviceOptions(self) -> None:
        """
        Each service's options are C{--NAME-OPTION}, coerced by the plugin's
        declaration.
        """
        options = self.parse(
            "--echo-prefix", "", "--echo-delay", "2.5", "--echo-stamp", "--hello-loud"
        )
        self.assertEqual(options["serviceOptions"]["echo"]["prefix"], "")
        self.assertEqual(options["serviceOptions"]["echo"]["delay"], 2.5)
        self.assertTrue(options["serviceOptions"]["echo"]["stamp"])
        self.assertTrue(options["serviceOptions"]["hello"]["loud"])

    def test_services(self) -> None:
        """
        C{--services} picks which services run.
        """
        options = self.parse("--services", "hello")
        self.assertEqual([s.name for s in options["services"]], ["hello"])

    def test_unknownService(self) -> None:
        """
        An unknown service is refused, quoted.
        """
        error = self.assertRaises(UsageError, self.parse, "--services", "echo,chargen")
        self.assertIn("'chargen'", str(error))

    def test_udpForStreamService(self) -> None:
        """
        A UDP endpoint for a service that does not speak UDP is refused.
        """
        error = self.assertRaises(UsageError, self.parse, "--hello", "udp:9")
        self.assertIn("'udp:9'", str(error))

    def test_badUdpEndpoint(self) -> None:
        """
        A malformed UDP endpoint is refused, quoted.
        """
        for bad in ("udp:", "udp:seven", "udp:70000", "udp:7:bogus=1"):
            error = self.assertRaises(UsageError, self.parse, "--echo", bad)
            self.assertIn(repr(bad), str(error))

    def test_badValue(self) -> None:
        """
        A value the plugin's coerce refuses, or its C{validate} rejects, is a
        usage error quoting it.
        """
        self.assertRaises(UsageError, self.parse, "--echo-delay", "soon")
        error = self.assertRaises(UsageError, self.parse, "--echo-delay", "-1")
        self.assertIn("-1", str(error))

    def test_badNumberNamesOption(self) -> None:
        """
        A value that is not a number names its option and quotes the value,
        for a service's options and for netd's own.
        """
        for argv, message in [
            (("--echo-udp-rate", "abc"), "--echo-udp-rate must be a number, not 'abc'"),
            (
                ("--max-connections", "x"),
                "--max-connections must be a whole number, not 'x'",
            ),
            (
                ("--idle-timeout", "never"),
                "--idle-timeout must be a number, not 'never'",
            ),
        ]:
            error = self.assertRaises(UsageError, self.parse, *argv)
            self.assertEqual(str(error), message)

    def test_unknownOption(self) -> None:
        """
        An unknown option is a usage error.
        """
        self.assertRaises(UsageError, self.parse, "--echo-colour", "red")

    def test_helpListsServices(self) -> None:
        """
        The help text comes from the plugins: every service's endpoint option
        and options, with their defaults.
        """
        text = str(Options(services=[echo, StreamOnly()]))
        for expected in ("--echo=", "--echo-prefix=", "--hello=", "--hello-loud"):
            self.assertIn(expected, text)
        self.assertIn("tcp:50099:interface=127.0.0.1", text)

    def test_reservedName(self) -> None:
        """
        A service cannot take the name of one of netd's own options.
        """

        class Config(StreamOnly):
            name = "config"

        self.assertRaises(ValueError, Options, services=[Config()])


class ConfigFileTests(SynchronousTestCase):
    """
    C{--config FILE}: TOML under the command line.
    """

    def parse(self, toml: str, *argv: str) -> Options:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(toml)
        options = Options(services=[echo, StreamOnly()])
        options.parseOptions(["--config", path, *argv])
        return options

    def test_values(self) -> None:
        """
        The file sets services, endpoints and service options.
        """
        options = self.parse(
            'services = ["echo"]\n'
            "[echo]\n"
            'endpoints = ["tcp:7"]\n'
            'prefix = ""\n'
            "delay = 1\n"
            "stamp = true\n"
        )
        self.assertEqual([s.name for s in options["services"]], ["echo"])
        self.assertEqual(options["endpoints"]["echo"], ["tcp:7"])
        self.assertEqual(
            options["serviceOptions"]["echo"],
            {"prefix": "", "delay": 1.0, "udp-rate": 20.0, "stamp": True},
        )

    def test_commandLineWins(self) -> None:
        """
        What the command line gives wins over the file, whatever the order.
        """
        options = self.parse(
            '[echo]\nendpoints = ["tcp:7"]\nprefix = "file"\n',
            "--echo-prefix",
            "cli",
            "--echo",
            "tcp:8",
        )
        self.assertEqual(options["serviceOptions"]["echo"]["prefix"], "cli")
        self.assertEqual(options["endpoints"]["echo"], ["tcp:8"])

    def test_unknownKeys(self) -> None:
        """
        An unknown key, at the top or in a service's table, names the key.
        """
        error = self.assertRaises(UsageError, self.parse, "colour = 1\n")
        self.assertIn("'colour'", str(error))
        error = self.assertRaises(UsageError, self.parse, "[echo]\ncolour = 1\n")
        self.assertIn("colour", str(error))
        self.assertIn("echo", str(error))

    def test_wrongTypes(self) -> None:
        """
        A value of the wrong type names the key.
        """
        for toml, key in [
            ("[echo]\ndelay = true\n", "echo.delay"),
            ("[echo]\nstamp = 1\n", "echo.stamp"),
            ("[echo]\nendpoints = 7\n", "echo.endpoints"),
            ("[echo]\nprefix = 3\n", "echo.prefix"),
            ("services = 3\n", "services"),
            ("echo = 3\n", "echo"),
        ]:
            error = self.assertRaises(UsageError, self.parse, toml)
            self.assertIn(key, str(error))

    def test_badToml(self) -> None:
        """
        A file that is not TOML is refused with its name.
        """
        error = self.assertRaises(UsageError, self.parse, "[echo\n")
        self.assertIn("not valid TOML", str(error))

    def test_missingFile(self) -> None:
        """
        A config file that cannot be read is refused with its name.
        """
        options = Options(services=[echo])
        error = self.assertRaises(
            UsageError, options.parseOptions, ["--config", "/nonexistent/netd.toml"]
        )
        self.assertIn("/nonexistent/netd.toml", str(error))


class DatagramEndpointTests(SynchronousTestCase):
    """
    netd's C{udp:PORT[:interface=ADDR]} endpoint strings.
    """

    def test_forms(self) -> None:
        """
        Port alone, with an IPv4 interface, and with an escaped IPv6 one.
        """
        self.assertEqual(parseDatagramEndpoint("udp:7"), (7, ""))
        self.assertEqual(
            parseDatagramEndpoint("udp:13:interface=127.0.0.1"), (13, "127.0.0.1")
        )
        self.assertEqual(parseDatagramEndpoint(r"udp:0:interface=\:\:1"), (0, "::1"))


class MakeServiceTests(TestCase):
    """
    L{makeService}: one listener per endpoint.
    """

    def test_listeners(self) -> None:
        """
        Each TCP endpoint becomes a TCP listener and each UDP endpoint a UDP
        one, on the reactor given, and each logs its address.
        """
        options = Options(services=[echo])
        options.parseOptions(["--echo", "tcp:7:interface=127.0.0.1", "--echo", "udp:7"])
        reactor = MemoryReactorUDP()
        service = makeService(options, reactor=reactor)
        with capturedLogs() as events:
            service.privilegedStartService()
            service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(
            [(port, interface) for port, _f, _b, interface in reactor.tcpServers],
            [(7, "127.0.0.1")],
        )
        self.assertEqual(len(reactor.udpServers), 1)
        lines = [e["log_format"].format(**e) for e in events if "service" in e]
        self.assertIn("echo listening on TCP 0.0.0.0:7", lines)

    def test_badEndpoint(self) -> None:
        """
        An endpoint Twisted cannot parse is a L{StartupError} naming it.
        """
        options = Options(services=[echo])
        options.parseOptions(["--echo", "bogus:7"])
        error = self.assertRaises(
            StartupError, makeService, options, reactor=MemoryReactor()
        )
        self.assertIn("'bogus:7'", str(error))

    def test_portInUse(self) -> None:
        """
        A port already in use stops start-up with a L{StartupError} naming
        the endpoint, and the other listeners are not left open.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        options = Options(services=[echo])
        options.parseOptions(
            [
                "--echo",
                "tcp:0:interface=127.0.0.1",
                "--echo",
                f"tcp:{port}:interface=127.0.0.1",
            ]
        )
        from twisted.internet import reactor

        service = makeService(options, reactor=reactor)
        error = self.assertRaises(StartupError, service.privilegedStartService)
        self.assertIn(f"tcp:{port}:interface=127.0.0.1", str(error))
        return service.stopService()
