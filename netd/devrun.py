# -*- test-case-name: tests.test_devrun -*-
"""
C{make run}'s front end: run C{twistd -n netd} in the foreground and, once
it is ready, print how to talk to each service it serves with
C{netd-client}, on the ports it really listens on.

    python -m netd.devrun [netd options]

The output of netd passes through unchanged; SIGINT, SIGTERM and SIGHUP
are passed on to it, and its exit status is this program's (0 when it
stopped on a signal passed on).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import IO

#: netd's listening lines: C{echo listening on TCP 127.0.0.1:50007}.
LISTENING = re.compile(
    r"(?P<service>[\w-]+) listening on (?P<kind>TCP|UDP) "
    r"(?:\[(?P<host6>[^\]]+)\]|(?P<host>[^:\s]+)):(?P<port>\d+)"
)
READY = "netd ready: "


def hints(
    addresses: Sequence[tuple[str, str, str, int]], client: str, keyless: bool
) -> list[str]:
    """
    How to try each service, one command a line.

    @param addresses: C{(service, kind, host, port)} of each listener.
    @param client: how to run C{netd-client}.
    @param keyless: whether objects runs without an authkey.
    """
    lines = []
    seen = set()
    for service, kind, host, port in addresses:
        if (service, kind) in seen:
            continue
        seen.add((service, kind))
        where = f"--host {host} --port {port}"
        if host in ("127.0.0.1", "0.0.0.0"):
            where = f"--port {port}"
        udp = " --udp" if kind == "UDP" else ""
        if service == "echo" and kind == "TCP":
            lines.append(f"{client} echo {where} hello world")
        elif service in ("daytime", "time"):
            lines.append(f"{client} {service}{udp} {where}")
        elif service == "sntp":
            lines.append(f"{client} sntp {where}")
        elif service == "getfile":
            lines.append(f"{client} getfile {where} README.txt")
        elif service == "objects":
            line = f"{client} objects {where} '([1, 2], [3])'"
            if keyless:
                line += "    # no authkey: loopback only"
            lines.append(line)
        elif kind == "TCP":
            lines.append(f"nc {host} {port}    # {service}")
        else:
            lines.append(f"echo hi | nc -u -w1 {host} {port}    # {service}")
    return lines


def _keyless(argv: Sequence[str]) -> bool:
    return "--objects-authkey-file" not in argv and not os.environ.get(
        "NETD_OBJECTS_AUTHKEY"
    )


def relay(stream: IO[str], out: IO[str], argv: Sequence[str], client: str) -> None:
    """
    Copy netd's output to C{out}, and print the hints after netd's ready
    line.
    """
    addresses: list[tuple[str, str, str, int]] = []
    told = False
    for line in stream:
        out.write(line)
        match = LISTENING.search(line)
        if match is not None:
            host = match["host6"] or match["host"]
            addresses.append(
                (match["service"], match["kind"], host, int(match["port"]))
            )
        if READY in line and not told:
            told = True
            out.write("\nnetd is running. Try, from another terminal:\n\n")
            for hint in hints(addresses, client, _keyless(argv)):
                out.write(f"    {hint}\n")
            out.write("\nCtrl-C stops it.\n\n")
        out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run netd with C{argv} and relay its output; return its exit status.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    bin = os.path.dirname(sys.executable)
    client = os.path.join(bin, "netd-client")
    if client.startswith(os.getcwd() + os.sep):
        client = os.path.relpath(client)
    forwarded: set[int] = set()
    running: list[subprocess.Popen[str]] = []

    def passOn(signum: int, frame: object) -> None:
        forwarded.add(signum)
        for process in running:
            process.send_signal(signum)

    # Caught (not ignored) before netd starts, so that netd starts with
    # each at its default, whatever this process inherited: exec keeps an
    # ignored SIGINT ignored, and twistd would then never stop on it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, passOn)
    netd = subprocess.Popen(
        [os.path.join(bin, "twistd"), "--nodaemon", "--pidfile=", "netd", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    running.append(netd)
    assert netd.stdout is not None
    relay(netd.stdout, sys.stdout, arguments, shlex.quote(client))
    status = netd.wait()
    # twistd ends itself with the signal that stopped it: a stop asked for.
    return 0 if -status in forwarded else status


if __name__ == "__main__":
    raise SystemExit(main())
