"""
The third-party service under C{examples/qotd}, installed as its own
package (C{make test} installs it), is found and served by netd with no
change to netd: the proof that a service is a plugin anyone can ship.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import DatagramProtocol
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.plugin import discoverServices
from netd.tap import Options
from tests.common import PROJECT, TWISTD, exchange, runCommand, runNetd

INSTALL = (
    "examples/qotd is not installed: `make test` installs it "
    "(pip install ./examples/qotd)"
)


def installedQotd() -> object:
    """
    The example's plugin module, from wherever pip installed it.
    """
    try:
        from netd_qotd import plugin
    except ImportError as error:
        raise AssertionError(INSTALL) from error
    return plugin


class InstalledTests(SynchronousTestCase):
    """
    The example is an installed package, and netd finds its dropin.
    """

    def test_installedOutsideTheCheckout(self) -> None:
        """
        The example's code comes from the environment's site-packages, not
        from its folder in this checkout: netd sees it only as an installed
        package, through its own dropin.
        """
        plugin = installedQotd()
        where = os.path.realpath(plugin.__file__)  # type: ignore[attr-defined]
        examples = os.path.realpath(os.path.join(PROJECT, "examples"))
        self.assertFalse(where.startswith(examples + os.sep), where)
        self.assertIn("site-packages", where.split(os.sep))

    def test_discovered(self) -> None:
        """
        L{discoverServices} finds C{qotd} beside netd's own services.
        """
        installedQotd()
        names = [service.name for service in discoverServices()]
        self.assertIn("qotd", names)
        self.assertIn("echo", names)

    def test_offByDefault(self) -> None:
        """
        C{qotd} is offered but, being off by default, runs only when named.
        """
        installedQotd()
        options = Options()
        options.parseOptions([])
        self.assertNotIn("qotd", [service.name for service in options["services"]])
        options = Options()
        options.parseOptions(["--services", "qotd"])
        self.assertEqual([service.name for service in options["services"]], ["qotd"])

    def test_badQuotesFile(self) -> None:
        """
        A quotes file that cannot be read is a usage error naming the option.
        """
        installedQotd()
        options = Options()
        error = self.assertRaises(
            UsageError,
            options.parseOptions,
            ["--services", "qotd", "--qotd-file", "/nonexistent/quotes"],
        )
        self.assertIn("--qotd-file '/nonexistent/quotes'", str(error))


class ServedTests(TestCase):
    """
    C{twistd -n netd --services qotd} serves the example over TCP and UDP.
    """

    @defer.inlineCallbacks
    def test_tcpAndUdp(self) -> defer.Generator:
        """
        A TCP client gets the file's first quote and the server closes; a UDP
        datagram (even an empty one) gets a quote of the file back.
        """
        installedQotd()
        quotes = self.mktemp()
        with open(quotes, "w", encoding="utf-8") as file:
            file.write("first quote\n%\nsecond\nquote\n%\n")
        netd = yield runNetd(
            self,
            "--services",
            "qotd",
            "--qotd",
            "tcp:0:interface=127.0.0.1",
            "--qotd",
            "udp:0:interface=127.0.0.1",
            "--qotd-file",
            os.path.abspath(quotes),
            listeners=2,
        )
        received = yield from exchange(
            TCP4ClientEndpoint(_reactor, "127.0.0.1", netd.port("qotd"))
        )
        self.assertEqual(received, b"first quote\r\n")

        answered: defer.Deferred[bytes] = defer.Deferred()

        class Ask(DatagramProtocol):
            def datagramReceived(self, data: bytes, address: object) -> None:
                answered.callback(data)

        port = _reactor.listenUDP(0, Ask(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        port.write(b"", ("127.0.0.1", netd.port("qotd", "UDP")))
        reply = yield answered.addTimeout(10, _reactor)
        self.assertIn(reply, {b"first quote\r\n", b"second\r\nquote\r\n"})

    @defer.inlineCallbacks
    def test_help(self) -> defer.Generator:
        """
        C{twistd netd --help} lists the example's options, from its plugin.
        """
        installedQotd()
        out, err, code = yield runCommand(TWISTD, "netd", "--help")
        self.assertEqual(code, 0, err)
        self.assertIn(b"--qotd-file", out)
        self.assertIn(b"--qotd-udp-rate", out)
