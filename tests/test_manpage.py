"""
Tests for L{netd.manpage}: netd(8) is written from the options C{--help}
prints, and the committed C{man/netd.8} is the one it writes now.
"""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from netd.manpage import escape, helpOptions, main, manPage, ownServices
from netd.plugin import DatagramServicePlugin, discoverServices
from netd.tap import Options
from tests.common import PROJECT

PAGE = os.path.join(PROJECT, "man", "netd.8")


def plainText(roff: str) -> str:
    """
    The words of a roff page: escapes undone, font changes and requests
    dropped, white space collapsed.
    """
    lines = [line for line in roff.splitlines() if not line.startswith(".")]
    text = " ".join(lines)
    text = re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-").replace("\\&", "")
    return " ".join(text.replace("\\e", "\\").split())


class ForeignService(DatagramServicePlugin):
    """
    A service from outside netd (defined in this test module).
    """

    name = "foreign"
    description = "not netd's"
    defaultEndpoints = ("tcp:50099:interface=127.0.0.1",)


class ManPageTests(SynchronousTestCase):
    """
    netd(8) and the option table of C{--help}.
    """

    def test_committedPageIsCurrent(self) -> None:
        """
        C{man/netd.8} is what L{manPage} writes from today's options.
        """
        with open(PAGE, encoding="utf-8") as page:
            committed = page.read()
        self.assertTrue(
            committed == manPage(),
            "man/netd.8 is out of date with the options of twistd netd --help: "
            "`make man` regenerates it (then commit it)",
        )

    def test_everyHelpOptionOnPage(self) -> None:
        """
        Every option C{--help} prints for netd's own services, and its help
        text, is on the page.
        """
        services = ownServices()
        usage = Options(services).getUsage(width=10000)
        page = plainText(manPage())
        options = re.findall(r"^\s+(?:-\w, )?--([\w-]+)(=?)\s+(.*)$", usage, re.M)
        self.assertIn(("echo-prefix", "="), [(n, e) for n, e, _doc in options])
        for name, equals, doc in options:
            self.assertIn(f"--{name}{equals}", page)
            self.assertIn(" ".join(doc.split()), page)

    def test_helpOptions(self) -> None:
        """
        L{helpOptions} gives each option's short form, whether it takes a
        value, and its help text with the default as C{--help} adds it.
        """
        options = {
            option.name: option for option in helpOptions(Options(ownServices()))
        }
        self.assertEqual(options["config"].short, "c")
        self.assertTrue(options["config"].takesValue)
        self.assertFalse(options["echo-stamp"].takesValue)
        self.assertIn("[default: 'Echo=>']", options["echo-prefix"].doc)

    def test_ownServicesOnly(self) -> None:
        """
        Only services whose plugin lies in C{netd.services} are described.
        """
        installed = discoverServices()
        chosen = ownServices([*installed, ForeignService()])
        self.assertNotIn("foreign", [service.name for service in chosen])
        self.assertIn("echo", [service.name for service in chosen])
        self.assertNotIn("qotd", [service.name for service in chosen])

    def test_escape(self) -> None:
        """
        Hyphens and backslashes are escaped, and a line cannot start a
        request.
        """
        self.assertEqual(escape("--a\\b"), "\\-\\-a\\eb")
        self.assertEqual(escape(".x"), "\\&.x")
        self.assertEqual(escape("'x"), "\\&'x")

    def test_mainWritesFile(self) -> None:
        """
        C{python -m netd.manpage FILE} writes the page to FILE.
        """
        path = self.mktemp()
        self.assertEqual(main([path]), 0)
        with open(path, encoding="utf-8") as page:
            self.assertEqual(page.read(), manPage())
        self.assertFalse(os.path.exists(path + ".new"))
