# -*- test-case-name: tests.test_manpage -*-
"""
netd(8), the manual page, written from the option table that C{twistd netd
--help} prints, so that the two cannot drift apart.

    python -m netd.manpage man/netd.8      # what `make man` runs

The options are read from L{netd.tap.Options} exactly as
L{twisted.python.usage.Options.getUsage} reads them for C{--help}: C{longOpt}
(every long option, a trailing C{=} for those taking a value),
C{synonyms} (the short forms), C{docs} and C{defaults}. Only netd's own
services (whose plugin is in C{netd.services}) are described, so that the
page does not depend on what else happens to be installed; C{--help} lists
every installed one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import netd
from netd.plugin import INetdService, discoverServices

#: The package whose services the page describes.
OWN_SERVICES = "netd.services."


@dataclass(frozen=True)
class Option:
    """
    One option as C{--help} shows it.

    @ivar name: its long name, without C{--}.
    @ivar short: its one-letter synonym, or L{None}.
    @ivar takesValue: whether it takes a value (C{--name=VALUE}).
    @ivar doc: its help text, its default appended as C{--help} does.
    """

    name: str
    short: str | None
    takesValue: bool
    doc: str


def ownServices(services: Iterable[INetdService] | None = None) -> list[INetdService]:
    """
    netd's own services: those whose plugin object is defined in a module
    under C{netd.services}.

    @param services: the services to choose from; by default every
        installed one.
    """
    if services is None:
        services = discoverServices()
    return [s for s in services if type(s).__module__.startswith(OWN_SERVICES)]


def helpOptions(options: Any) -> list[Option]:
    """
    The options of a L{twisted.python.usage.Options} instance, with the
    texts C{--help} prints for them, sorted by name.
    """
    shortOf = {
        long: short
        for short, long in options.synonyms.items()
        if short != long and len(short) == 1
    }
    rows = []
    for declared in options.longOpt:
        takesValue = declared.endswith("=")
        name = declared.rstrip("=")
        doc = (options.docs.get(name) or "").strip()
        default = options.defaults.get(name)
        if takesValue and default is not None:
            doc = f"{doc} [default: {default}]"
        rows.append(Option(name, shortOf.get(name), takesValue, doc))
    return sorted(rows, key=lambda option: option.name)


def escape(text: str) -> str:
    """
    Make text safe in a roff line: backslashes and hyphens escaped (so that
    option names and endpoints copy as typed), a leading C{.} or C{'}
    protected.
    """
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def _optionEntry(option: Option, metavar: str = "VALUE") -> list[str]:
    flag = f"\\fB\\-\\-{escape(option.name)}\\fR"
    if option.short:
        flag = f"\\fB\\-{escape(option.short)}\\fR, " + flag
    if option.takesValue:
        flag += f"=\\fI{metavar}\\fR"
    return [".TP", flag, escape(option.doc) or "(undocumented)"]


def _metavar(name: str, services: Iterable[str]) -> str:
    """
    The placeholder for an option's value: C{ENDPOINT} for a service's
    endpoint option, else by its name, or the last word of it.
    """
    if name in services:
        return "ENDPOINT"
    byName = {
        "allow": "CIDR",
        "deny": "CIDR",
        "trusted-proxy": "CIDR",
        "services": "NAMES",
        "metrics": "ENDPOINT",
    }
    byLastWord = {"file": "FILE", "config": "FILE", "root": "DIR"}
    return byName.get(name) or byLastWord.get(name.rsplit("-", 1)[-1], "VALUE")


def _section(title: str, *lines: str) -> list[str]:
    return [f".SH {title}", *lines]


def _paragraphs(*texts: str) -> list[str]:
    lines: list[str] = []
    for text in texts:
        lines += [".PP", escape(text)]
    return lines


def _example(command: str, comment: str) -> list[str]:
    return [".PP", escape(comment) + ":", ".RS", ".nf", escape(command), ".fi", ".RE"]


def render(options: Any, services: Iterable[INetdService]) -> str:
    """
    The page, in roff (C{man} macros).

    @param options: a L{netd.tap.Options} offering C{services}.
    @param services: the services to describe, in order.
    """
    services = list(services)
    byService: dict[str, list[Option]] = {service.name: [] for service in services}
    general: list[Option] = []
    names = sorted(byService, key=len, reverse=True)
    for option in helpOptions(options):
        owner = next(
            (n for n in names if option.name == n or option.name.startswith(n + "-")),
            None,
        )
        (general if owner is None else byService[owner]).append(option)

    lines = [
        '.\\" Written by python -m netd.manpage from the options of',
        '.\\" twistd netd --help: do not edit; `make man` writes it again.',
        f'.TH NETD 8 "" "netd {escape(netd.__version__)}" "System Administration"',
        ".nh",
        ".ad l",
    ]
    lines += _section(
        "NAME",
        "netd \\- a Twisted multi\\-service network daemon: echo, getfile, "
        "clock and objects",
    )
    lines += _section(
        "SYNOPSIS",
        ".B twistd",
        "[\\fItwistd options\\fR]",
        ".B netd",
        "[\\fIoptions\\fR]",
    )
    lines += _section("DESCRIPTION")
    lines += _paragraphs(
        options.longdesc,
        "netd is one twistd(1) application serving small classic network "
        "services, each on as many endpoints as given, plain or TLS. Run it "
        "in the foreground with twistd -n netd (twistd's own options, such "
        "as --pidfile and --logfile, come before netd).",
        "An ENDPOINT is a Twisted endpoint string (tcp:, ssl:, unix:, "
        "systemd:, haproxy: ...), netd's TLS endpoint, or, for the services "
        "that speak UDP, one of netd's UDP endpoints:",
    )
    lines += [".RS", ".nf"]
    lines += [
        escape(form)
        for form in (
            "tcp:PORT[:interface=ADDR]",
            "tls:PORT:privateKey=KEY[:certKey=CERT][:clientCA=CAFILE]",
            "    [:interface=ADDR]",
            "udp:PORT[:interface=ADDR]",
            "systemd:domain=INET:name=NAME",
            "systemd-udp:domain=INET:name=NAME",
        )
    ]
    lines += [".fi", ".RE"]
    lines += _paragraphs(
        "On start netd logs every address it listens on, one line per "
        "listener. A start-up mistake (an unknown service or option, a "
        "malformed endpoint, a port in use, a bad config file) stops it with "
        "one line starting netd: and exit status 1. Every connection is "
        "logged once when it ends.",
    )
    lines += _section("OPTIONS")
    for option in general:
        lines += _optionEntry(option, _metavar(option.name, byService))
    lines += _section("SERVICES")
    lines += _paragraphs(
        "Each service is a plugin; these are netd's own (twistd netd --help "
        "lists every installed one). A service's endpoint option replaces its "
        "default endpoints; every option can also be set in the config file, "
        "in the service's table, by its name without the service's prefix."
    )
    for service in services:
        description = service.description[:1].upper() + service.description[1:]
        if not getattr(service, "enabledByDefault", True):
            description += "; off unless named in --services"
        lines += [f".SS {escape(service.name)}", escape(description + ".")]
        for option in byService[service.name]:
            lines += _optionEntry(option, _metavar(option.name, byService))
    lines += _section(
        "FILES",
        ".TP",
        ".I /etc/netd/netd.toml",
        "The config file under systemd (--config); etc/netd.toml in the "
        "source holds every option with its default.",
        ".TP",
        ".I /etc/sysctl.d/netd.conf",
        "Reserves netd's default ports (net.ipv4.ip_local_reserved_ports), "
        "which lie in Linux's ephemeral port range.",
        ".TP",
        ".I /etc/systemd/system/netd.service, netd.socket, netd\\-*.socket",
        "The hardened unit (Type=notify) and the sockets systemd opens for it.",
    )
    lines += _section(
        "SIGNALS",
        ".TP",
        ".B SIGHUP",
        "Re\\-read the config file (the command line still wins), apply what "
        "can change while running and log each change; open connections are "
        "kept.",
        ".TP",
        ".B SIGTERM",
        "Stop accepting, let connections in flight finish for up to \\-\\-grace "
        "seconds, then close the rest. A second SIGTERM, or SIGINT, ends at "
        "once.",
    )
    lines += _section("EXAMPLES")
    lines += _example("twistd -n --pidfile= netd", "Every service on 127.0.0.1")
    lines += _example(
        "twistd -n --pidfile= netd --services echo --echo tcp:7 --echo udp:7 "
        "--echo-prefix ''",
        "A plain RFC 862 echo on the classic port",
    )
    lines += _example(
        "twistd -n --pidfile= netd --echo "
        "tls:50007:privateKey=server.key:certKey=server.pem:clientCA=ca.pem",
        "Echo over mutual TLS",
    )
    lines += _example(
        "netd-client echo hello; netd-client getfile notes.txt",
        "The clients",
    )
    lines += _section(
        "SEE ALSO",
        "twistd(1), systemd.socket(5), sysctl.d(5), openssl(1); the README of netd.",
    )
    return "\n".join(lines) + "\n"


def manPage() -> str:
    """
    netd(8) as C{make man} writes it: netd's own services, and the options
    C{twistd netd --help} offers with them.
    """
    from netd.tap import Options

    services = ownServices()
    return render(Options(services), services)


def main(argv: list[str]) -> int:
    """
    Write the page to the file named in C{argv} (replaced whole, only once
    written), or to standard output.
    """
    page = manPage()
    if not argv:
        sys.stdout.write(page)
        return 0
    temporary = argv[0] + ".new"
    with open(temporary, "w", encoding="utf-8") as output:
        output.write(page)
    os.replace(temporary, argv[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
