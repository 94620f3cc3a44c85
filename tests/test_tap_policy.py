"""
Tests for the access policy's options in L{netd.tap}: global options, keys
in the config file, and how makeService wraps every service.
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from netd.policy import PolicedDatagramProtocol, PolicyFactory, parseNetwork
from netd.proxyheader import ProxiedEndpoint
from netd.tap import Options, makeService
from netd.tls import TLSServerEndpoint
from tests.common import makeCertificates


class PolicyOptionsTests(SynchronousTestCase):
    """
    C{--allow}, C{--deny}, C{--max-connections}, C{--max-per-source},
    C{--idle-timeout} and their config keys.
    """

    def parse(self, *argv: str, config: str | None = None) -> Options:
        options = Options()
        if config is not None:
            path = os.path.abspath(self.mktemp())
            with open(path, "w") as stream:
                stream.write(config)
            argv = ("--config", path, *argv)
        options.parseOptions(["--services", "echo", *argv])
        return options

    def test_defaults(self) -> None:
        """
        Without options: no ranges, 1000 connections, 100 of them (a tenth)
        from one address, a 300-second idle timeout, PROXY headers believed
        from loopback only.
        """
        settings = self.parse()["policies"]["echo"]
        self.assertEqual((settings.allow, settings.deny), ((), ()))
        self.assertEqual(
            (settings.maxConnections, settings.maxPerSource, settings.idleTimeout),
            (1000, 100, 300.0),
        )
        self.assertEqual(
            settings.trustedProxies,
            (parseNetwork("127.0.0.0/8"), parseNetwork("::1")),
        )

    def test_perSourceShare(self) -> None:
        """
        Unless given, one address may hold a tenth of a service's
        connections, at least 16 (never more than the service's limit), and
        any number when the service has no limit; 0 given means no limit.
        """
        for argv, expected in (
            (("--max-connections", "50"), 16),
            (("--max-connections", "5"), 5),
            (("--max-connections", "0"), 0),
            (("--max-connections", "4000"), 400),
            (("--max-per-source", "0"), 0),
        ):
            settings = self.parse(*argv)["policies"]["echo"]
            self.assertEqual(settings.maxPerSource, expected, argv)
        settings = self.parse(config="[echo.policy]\nmax-connections = 300\n")[
            "policies"
        ]["echo"]
        self.assertEqual(settings.maxPerSource, 30)

    def test_trustedProxy(self) -> None:
        """
        C{--trusted-proxy} is repeatable and replaces the default; in the
        config file, a service's policy table wins over the top level.
        """
        settings = self.parse(
            "--trusted-proxy", "192.0.2.0/24", "--trusted-proxy", "2001:db8::/32"
        )["policies"]["echo"]
        self.assertEqual(
            settings.trustedProxies,
            (parseNetwork("192.0.2.0/24"), parseNetwork("2001:db8::/32")),
        )
        config = 'trusted-proxy = ["10.0.0.0/8"]\n'
        settings = self.parse(config=config)["policies"]["echo"]
        self.assertEqual(settings.trustedProxies, (parseNetwork("10.0.0.0/8"),))
        config += '[echo.policy]\ntrusted-proxy = ["10.1.0.0/16"]\n'
        settings = self.parse(config=config)["policies"]["echo"]
        self.assertEqual(settings.trustedProxies, (parseNetwork("10.1.0.0/16"),))
        error = self.assertRaises(UsageError, self.parse, "--trusted-proxy", "proxy")
        self.assertIn("--trusted-proxy", str(error))

    def test_commandLine(self) -> None:
        """
        The global options are repeatable where they are lists, and apply
        to each service.
        """
        settings = self.parse(
            "--allow", "10.0.0.0/8", "--allow", "::1", "--deny", "10.9.0.0/16",
            "--max-connections", "5", "--max-per-source", "2",
            "--idle-timeout", "1.5",
        )["policies"]["echo"]  # fmt: skip
        self.assertEqual(
            settings.allow, (parseNetwork("10.0.0.0/8"), parseNetwork("::1"))
        )
        self.assertEqual(settings.deny, (parseNetwork("10.9.0.0/16"),))
        self.assertEqual(
            (settings.maxConnections, settings.maxPerSource, settings.idleTimeout),
            (5, 2, 1.5),
        )

    def test_badRange(self) -> None:
        """
        A malformed range is a usage error quoting it.
        """
        error = self.assertRaises(UsageError, self.parse, "--deny", "10.0.0.300")
        self.assertIn("'10.0.0.300'", str(error))
        self.assertIn("--deny", str(error))

    def test_negative(self) -> None:
        """
        A negative limit is a usage error quoting it.
        """
        error = self.assertRaises(UsageError, self.parse, "--max-per-source", "-1")
        self.assertIn("-1", str(error))
        self.assertRaises(UsageError, self.parse, "--idle-timeout", "soon")

    def test_configLevels(self) -> None:
        """
        A service's policy table overrides the file's top level; the command line
        overrides both; deny ranges add up from every level.
        """
        config = (
            'allow = ["10.0.0.0/8"]\ndeny = ["10.1.0.0/16"]\n'
            "max-connections = 50\nidle-timeout = 60\n"
            '[echo.policy]\nallow = ["192.0.2.0/24"]\ndeny = ["192.0.2.9"]\n'
            "max-connections = 7\n"
        )
        settings = self.parse(config=config)["policies"]["echo"]
        self.assertEqual(settings.allow, (parseNetwork("192.0.2.0/24"),))
        self.assertEqual(
            set(settings.deny),
            {parseNetwork("10.1.0.0/16"), parseNetwork("192.0.2.9")},
        )
        self.assertEqual((settings.maxConnections, settings.idleTimeout), (7, 60.0))
        settings = self.parse("--max-connections", "3", "--deny", "::1", config=config)[
            "policies"
        ]["echo"]
        self.assertEqual(settings.maxConnections, 3)
        self.assertIn(parseNetwork("::1"), settings.deny)
        self.assertEqual(len(settings.deny), 3)

    def test_configTypes(self) -> None:
        """
        A config value of the wrong type is a usage error naming the key;
        unknown keys are still refused.
        """
        error = self.assertRaises(
            UsageError, self.parse, config="[echo.policy]\nallow = 5\n"
        )
        self.assertIn("echo.policy.allow", str(error))
        error = self.assertRaises(
            UsageError, self.parse, config='max-per-source = "many"\n'
        )
        self.assertIn("max-per-source", str(error))
        error = self.assertRaises(UsageError, self.parse, config="[echo]\nallwo = []\n")
        self.assertIn("allwo", str(error))


class WiringTests(SynchronousTestCase):
    """
    makeService puts every service behind its policy.
    """

    def build(self, *argv: str) -> tuple[object, MemoryReactorClock]:
        options = Options()
        options.parseOptions(["--services", "echo", *argv])
        reactor = MemoryReactorClock()
        root = makeService(options, reactor=reactor)
        root.privilegedStartService()
        self.addCleanup(root.stopService)
        return root, reactor

    def test_wrapped(self) -> None:
        """
        TCP listeners get a L{PolicyFactory}, UDP listeners a
        L{PolicedDatagramProtocol}, sharing one policy per service.
        """
        options = Options()
        options.parseOptions(
            ["--services", "echo", "--echo", "tcp:0", "--echo", "udp:0"]
        )
        stream, datagram = makeService(options, reactor=MemoryReactorClock())
        factory, protocol = stream.factory, datagram.protocol
        self.assertIsInstance(factory, PolicyFactory)
        self.assertIsInstance(protocol, PolicedDatagramProtocol)
        self.assertIs(factory.policy, protocol.policy)

    def test_endpoints(self) -> None:
        """
        C{tls:} is netd's endpoint (though Twisted has a C{tls:} of its
        own), and C{haproxy:} reads the PROXY header before the service.
        """
        certs = makeCertificates(self)
        root, _ = self.build(
            "--echo", certs.endpoint(), "--echo", "haproxy:" + certs.endpoint()
        )
        plain, proxied = [service.endpoint for service in root]
        self.assertIsInstance(plain, TLSServerEndpoint)
        self.assertIsInstance(proxied, ProxiedEndpoint)
        self.assertIsInstance(proxied.wrappedEndpoint, TLSServerEndpoint)
