"""
netd's echo against its peers, side by side in one run.

Every server is started here, pinned to one core, and driven by the small
compiled client C{bench/echoload} pinned to the other, so that the client
is not the bottleneck (its CPU use is printed beside each figure):

- lock-step 64-byte messages on 1 and on 64 connections (messages/s, p50
  and p99 latency);
- one bulk stream (MB/s echoed).

Each figure is the median of several rounds that interleave the servers.

Peers: a bare Twisted C{wire.Echo} server and a stdlib asyncio echo server,
each also on uvloop; netd is measured on the default (epoll) reactor, on
Twisted's asyncio reactor, and on the asyncio reactor over uvloop. netd runs
with C{--echo-prefix ''} so that every server sends the same bytes; one row
shows netd with its default C{Echo=>} prefix.

    make bench            (or: python bench/echo_bench.py [--seconds 3])
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
LOAD = os.path.join(HERE, "echoload")
NETD = ["--nodaemon", "--pidfile=", "netd", "--services", "echo"]
NETD_ECHO = ["--echo", "tcp:0:interface=127.0.0.1"]
PLAIN = ["--echo-prefix", ""]

# name, command, prefix length
SERVERS = [
    ("twisted", [sys.executable, os.path.join(HERE, "peers.py"), "twisted"], 0),
    (
        "twisted/uvloop",
        [sys.executable, os.path.join(HERE, "peers.py"), "twisted-uvloop"],
        0,
    ),
    ("asyncio", [sys.executable, os.path.join(HERE, "peers.py"), "asyncio"], 0),
    (
        "asyncio/uvloop",
        [sys.executable, os.path.join(HERE, "peers.py"), "asyncio-uvloop"],
        0,
    ),
    ("netd", [os.path.join(BIN, "twistd"), *NETD, *NETD_ECHO, *PLAIN], 0),
    ("netd Echo=>", [os.path.join(BIN, "twistd"), *NETD, *NETD_ECHO], 6),
    (
        "netd/asyncio",
        [
            sys.executable,
            os.path.join(HERE, "twistd_on.py"),
            "asyncio",
            *NETD,
            *NETD_ECHO,
            *PLAIN,
        ],
        0,
    ),
    (
        "netd/uvloop",
        [
            sys.executable,
            os.path.join(HERE, "twistd_on.py"),
            "uvloop",
            *NETD,
            *NETD_ECHO,
            *PLAIN,
        ],
        0,
    ),
]
SCENARIOS = [
    ("C=1 64B", 1, "lockstep"),
    ("C=64 64B", 64, "lockstep"),
    ("bulk", 1, "bulk"),
]
PORT = re.compile(rb"(?:PORT |listening on TCP 127\.0\.0\.1:)(\d+)")


def pinned(core: int, command: list[str]) -> list[str]:
    """
    C{command} pinned to one core, when C{taskset} is there.
    """
    if shutil.which("taskset"):
        return ["taskset", "-c", str(core), *command]
    return command


def startServer(command: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """
    Start a server; return it and the port it printed.
    """
    process = subprocess.Popen(
        pinned(0, command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert process.stdout is not None
    output = b""
    while True:
        line = process.stdout.readline()
        if not line:
            process.wait()
            raise RuntimeError(f"{command} exited:\n{output.decode()}")
        output += line
        match = PORT.search(line)
        if match:
            # Drain the server's log so that it never blocks on a full pipe.
            subprocess.Popen(["cat"], stdin=process.stdout, stdout=subprocess.DEVNULL)
            return process, int(match.group(1))


@contextmanager
def servers(chosen: list[tuple[str, list[str], int]]) -> Iterator[dict[str, int]]:
    """
    Run every chosen server at once (idle ones cost nothing); yield their
    ports by name; stop them all.
    """
    running: list[subprocess.Popen[bytes]] = []
    ports: dict[str, int] = {}
    try:
        for name, command, _prefix in chosen:
            try:
                process, ports[name] = startServer(command)
            except (RuntimeError, OSError) as error:
                print(f"{name}: not measured: {error}", file=sys.stderr)
                continue
            running.append(process)
        yield ports
    finally:
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def load(port: int, connections: int, mode: str, prefix: int, seconds: float) -> dict:
    """
    Run the compiled client once; return its figures.
    """
    command = [LOAD, "127.0.0.1", str(port), str(connections), str(seconds), "64"]
    command += [str(prefix), mode]
    result = subprocess.run(
        pinned(1, command), capture_output=True, text=True, timeout=seconds + 30
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="comma-separated server names to run")
    arguments = parser.parse_args()
    if not os.path.exists(LOAD):
        raise SystemExit("build the client first: make bench/echoload")

    chosen = SERVERS
    if arguments.only:
        names = arguments.only.split(",")
        chosen = [s for s in SERVERS if s[0] in names]
    prefixes = {name: prefix for name, _command, prefix in chosen}
    # Rounds interleave the servers, so that a change in the machine's load
    # during the run touches them all alike; each figure is the median round.
    samples: dict[tuple[str, str], list[dict]] = {}
    with servers(chosen) as ports:
        for scenario, connections, mode in SCENARIOS:
            for name, port in ports.items():
                load(port, connections, mode, prefixes[name], 0.5)  # warm up
            for _round in range(arguments.rounds):
                for name, port in ports.items():
                    figures = load(
                        port, connections, mode, prefixes[name], arguments.seconds
                    )
                    samples.setdefault((name, scenario), []).append(figures)
    results = {
        key: sorted(runs, key=lambda figures: figures["rate"])[len(runs) // 2]
        for key, runs in samples.items()
    }

    print(
        f"{'scenario':10} {'server':16} {'rate':>12} {'p50 us':>7} {'p99 us':>7} "
        f"{'client CPU':>10} {'/twisted':>9} {'/asyncio':>9}"
    )
    for scenario, _connections, _mode in SCENARIOS:
        for name, _command, _prefix in chosen:
            figures = results.get((name, scenario))
            if figures is None:
                continue
            ratios = []
            for peer in ("twisted", "asyncio"):
                base = results.get((peer, scenario))
                ratios.append(f"{figures['rate'] / base['rate']:.2f}" if base else "-")
            print(
                f"{scenario:10} {name:16} {figures['rate']:>8.0f} {figures['unit']:<5}"
                f"{figures['p50_us']:>5} {figures['p99_us']:>7} "
                f"{figures['client_cpu'] * 100:>9.0f}% {ratios[0]:>9} {ratios[1]:>9}"
            )
        print()


if __name__ == "__main__":
    main()
