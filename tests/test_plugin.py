"""
Tests for netd's services as plugins: discovery, the dropin, and a
third-party service added with no change to netd.
"""

from __future__ import annotations

import os
import sys
import textwrap
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

import twisted.plugins
from netd.plugin import INetdService, discoverServices
from netd.tap import Options
from tests.common import (
    TWISTD,
    CollectUntilClosed,
    projectEnvironment,
    runCommand,
    runNetd,
)

THIRD_PARTY = textwrap.dedent(
    '''
    """A third party's netd service: a greeting, then close."""
    from twisted.internet.protocol import Factory, Protocol
    from netd.plugin import ServicePlugin

    class Greeter(Protocol):
        def connectionMade(self):
            self.transport.write(self.factory.greeting.encode() + b"\\r\\n")
            self.transport.loseConnection()

    class HelloService(ServicePlugin):
        name = "hello"
        description = "say hello and close"
        defaultEndpoints = ("tcp:50999:interface=127.0.0.1",)
        optParameters = [["greeting", None, "hello", "What to say."]]

        def makeFactory(self, options, reactor):
            factory = Factory.forProtocol(Greeter)
            factory.greeting = options["greeting"]
            return factory

    hello = HelloService()
    '''
)


def makeThirdParty(testCase: Any) -> str:
    """
    Write the third-party dropin into a new directory laid out like a
    package installed on C{sys.path}: C{DIR/twisted/plugins/hello_netd.py}.

    @return: the directory.
    """
    top = os.path.abspath(testCase.mktemp())
    plugins = os.path.join(top, "twisted", "plugins")
    os.makedirs(plugins)
    with open(os.path.join(plugins, "hello_netd.py"), "w") as f:
        f.write(THIRD_PARTY)
    return top


class DiscoveryTests(SynchronousTestCase):
    """
    L{discoverServices} and the tap find services through Twisted plugins.
    """

    def test_ownServices(self) -> None:
        """
        netd's own dropin provides echo.
        """
        names = [service.name for service in discoverServices()]
        self.assertIn("echo", names)
        for service in discoverServices():
            self.assertTrue(INetdService.providedBy(service))

    def test_thirdParty(self) -> None:
        """
        A dropin in another C{twisted/plugins} directory adds a service, its
        endpoint option and its options, beside netd's own.
        """
        top = makeThirdParty(self)
        plugins = os.path.join(top, "twisted", "plugins")
        twisted.plugins.__path__.append(plugins)
        self.addCleanup(twisted.plugins.__path__.remove, plugins)
        self.addCleanup(sys.modules.pop, "twisted.plugins.hello_netd", None)

        names = [service.name for service in discoverServices()]
        self.assertIn("hello", names)
        self.assertIn("echo", names)
        options = Options()
        options.parseOptions(["--services", "hello", "--hello-greeting", "howdy"])
        self.assertEqual([s.name for s in options["services"]], ["hello"])
        self.assertEqual(options["serviceOptions"]["hello"], {"greeting": "howdy"})

    def test_dropinIsLight(self) -> None:
        """
        Loading the dropin imports neither the reactor, the tap nor any
        protocol module, so that C{twistd --help} stays fast.
        """
        code = (
            "import sys, twisted.plugins.netd_plugin\n"
            "heavy = ['twisted.internet.reactor', 'netd.tap',"
            " 'netd.services.echo.server']\n"
            "print([m for m in heavy if m in sys.modules])\n"
        )
        import subprocess

        output = subprocess.run(
            [sys.executable, "-c", code],
            env=projectEnvironment(),
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        self.assertEqual(output.strip(), "[]")


class ThirdPartyIntegrationTests(TestCase):
    """
    A third-party service installed beside netd, run by twistd.
    """

    def environment(self) -> dict[str, str]:
        env = projectEnvironment()
        env["PYTHONPATH"] = makeThirdParty(self) + os.pathsep + env["PYTHONPATH"]
        return env

    @defer.inlineCallbacks
    def test_listedByHelp(self) -> Any:
        """
        C{twistd netd --help} lists the third party's service and options.
        """
        out, err, code = yield runCommand(
            TWISTD, "netd", "--help", env=self.environment()
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"--hello=", out)
        self.assertIn(b"--hello-greeting=", out)
        self.assertIn(b"--echo=", out)

    @defer.inlineCallbacks
    def test_served(self) -> Any:
        """
        C{twistd -n netd --services hello} serves the third party's protocol
        with its option.
        """
        netd = yield runNetd(
            self,
            "--services",
            "hello",
            "--hello",
            "tcp:0:interface=127.0.0.1",
            "--hello-greeting",
            "howdy",
            env=self.environment(),
        )
        client = CollectUntilClosed(halfClose=False)
        yield connectProtocol(
            TCP4ClientEndpoint(_reactor, "127.0.0.1", netd.port("hello")), client
        )
        received = yield client.closed
        self.assertEqual(received, b"howdy\r\n")
