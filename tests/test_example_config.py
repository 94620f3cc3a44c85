"""
C{etc/netd.toml}, the example config: it names every option that
C{twistd netd --help} offers (for netd and its own services), each at its
default, so that it documents the defaults and starts netd as shipped.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netd.plugin import discoverServices
from netd.tap import POLICY_KEYS, Options
from tests.common import PROJECT, runNetd
from tests.test_integration_systemd import connectEcho

EXAMPLE = os.path.join(PROJECT, "etc", "netd.toml")

#: The options whose example value is not their default, and why.
EXAMPLES = {("getfile", "root"): "the checkout's sample folder, not the cwd"}

#: netd's own global options, as keys of the file's top level.
GLOBAL_KEYS = {"services", "grace", "workers", "max-buffered", "metrics", *POLICY_KEYS}


def ownServices() -> list[Any]:
    """
    netd's own services (not a third party's, which the file cannot know).
    """
    return [
        service
        for service in discoverServices()
        if type(service).__module__.startswith("netd.services.")
    ]


def serviceKeys(service: Any) -> set[str]:
    """
    A service's option names, as keys of its table.
    """
    rows = [
        *service.optParameters,
        *service.optFlags,
        *getattr(service, "optRepeatable", ()),
    ]
    return {row[0] for row in rows} | {"endpoints"}


def keysByTable(text: str) -> dict[str, set[str]]:
    """
    The keys each table of a TOML text sets or shows commented out
    (C{# key = ...}, in tables shown commented out too), the top level as
    C{""}.
    """
    tables: dict[str, set[str]] = {"": set()}
    table = ""
    for line in text.splitlines():
        header = re.match(r"#? ?\[([\w.-]+)\]\s*$", line)
        if header:
            table = header[1]
            tables.setdefault(table, set())
            continue
        key = re.match(r"#? ?([a-z][\w-]*) = ", line)
        if key:
            tables[table].add(key[1])
    return tables


def parsed(*argv: str) -> Options:
    options = Options()
    options.parseOptions(["--services", ",".join(s.name for s in ownServices()), *argv])
    return options


class ExampleConfigTests(SynchronousTestCase):
    """
    The example config and the options agree.
    """

    def test_everyOption(self) -> None:
        """
        Every global option and every option of each of netd's services is
        in the file, set or shown commented out; and nothing else is.
        """
        with open(EXAMPLE, encoding="utf-8") as stream:
            tables = keysByTable(stream.read())
        self.assertEqual(tables.pop(""), GLOBAL_KEYS)
        for service in ownServices():
            self.assertEqual(tables.pop(service.name), serviceKeys(service), service)
        self.assertEqual(tables, {"getfile.policy": POLICY_KEYS_SHOWN})

    def test_defaults(self) -> None:
        """
        Read with the file, netd's options are its defaults, but for the
        examples named in L{EXAMPLES}.
        """
        withFile, without = parsed("--config", EXAMPLE), parsed()
        for key in ("grace", "workers", "max-buffered", "metrics"):
            self.assertEqual(withFile[key], without[key], key)
        self.assertEqual(withFile["services"][:6], without["services"][:6])
        for service in ownServices():
            name = service.name
            self.assertEqual(withFile["endpoints"][name], without["endpoints"][name])
            self.assertEqual(withFile["policies"][name], without["policies"][name])
            mine, theirs = (
                withFile["serviceOptions"][name],
                without["serviceOptions"][name],
            )
            for key in mine:
                if (name, key) not in EXAMPLES:
                    self.assertEqual(mine[key], theirs[key], f"{name}.{key}")
        self.assertEqual(
            withFile["serviceOptions"]["getfile"]["root"], "examples/files"
        )


#: The keys the commented example of a service's own policy table shows.
POLICY_KEYS_SHOWN = {"max-connections", "max-per-source", "idle-timeout"}


class AsShippedTests(TestCase):
    """
    The example config starts netd from the checkout as it is.
    """

    @defer.inlineCallbacks
    def test_startsFromCheckout(self) -> defer.Generator:
        """
        C{twistd -n netd --config etc/netd.toml}, started in the checkout,
        serves every service it names (endpoints moved to free ports, as
        tests never bind the default ones), getfile from the sample folder,
        echo with its default prefix.
        """
        services = [s for s in ownServices() if getattr(s, "enabledByDefault", True)]
        arguments = ["--config", EXAMPLE]
        for service in services:
            if service.stream:
                arguments += [f"--{service.name}", "tcp:0:interface=127.0.0.1"]
            if service.datagram:
                arguments += [f"--{service.name}", "udp:0:interface=127.0.0.1"]
        listeners = sum(a.endswith("interface=127.0.0.1") for a in arguments)
        netd = yield runNetd(self, *arguments, listeners=listeners, path=PROJECT)
        self.assertEqual(
            sorted({name for name, *_ in netd.addresses}),
            sorted(service.name for service in services),
        )
        sample = os.path.realpath(os.path.join(PROJECT, "examples", "files"))
        self.assertIn(f"serving {sample}\n".encode(), netd.output)
        client = yield connectEcho(netd.port("echo"))
        self.assertEqual((yield client.exchange(b"x", 7)), b"Echo=>x")
