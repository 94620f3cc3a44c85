"""
The benchmark suite: netd beside its peers on the same loads, in one run.

    python bench/suite.py [--quick] [--reps N] [--seconds S] [--pin]
                          [--servers twisted,netd,...] [--loads echo-c64,...]
                          [--netd NAME=ARGS ...] [--output FILE]

(C{make bench}, C{make bench-quick}; C{--help} lists the load names.)

Servers (rows), each started here as its own process(es) on ports of
127.0.0.1 picked free just before, and stopped by PID at the end:

- twisted: bare Twisted (C{wire.Echo}, a daytime and a time protocol, a
  C{DatagramProtocol} echo; a C{LineReceiver} + C{FileSender} getfile);
- asyncio, uvloop: the same services on a stdlib asyncio loop, on uvloop;
- xinetd: xinetd's internal echo, daytime and time services, run in the
  foreground (C{xinetd -dontfork -f CONF}) with a generated config that
  logs every connection to a file, as netd does (C{make bench-deps}
  installs it). Its UDP echo discards every datagram queued behind the one
  it answers (it drains the socket after each reply), so its UDP cells
  count mostly losses;
- stdlib: a thread-per-connection C{os.sendfile} getfile server and the
  stdlib C{multiprocessing.connection.Listener} (objects);
- netd variants: C{twistd -n netd} with extra arguments (C{--workers 1},
  C{--workers 2}...), and netd on Twisted's asyncio reactor over uvloop.
  A variant whose options netd refuses is skipped with its one-line error.
  netd runs with its access policy and connection log on (to a file).

Loads (columns): daytime and time (RFC 868) connections per second, 16 at
once; echo ping-pong of 64 bytes on 1 and 64 connections; one bulk echo
stream; UDP echo of 64 bytes from 1 and 64 sockets -- all driven by the
compiled C{bench/echoload}, so that the client is not the bottleneck --;
getfile by 1 and 4 concurrent clients (C{getfile_bench.py}); objects round
trips by 1 and 16 stdlib C{Client}s (C{objects_bench.py}).

Repetitions interleave the servers (the order rotates each repetition);
each cell is the median repetition, its ratio to the reference server (bare
Twisted; the stdlib Listener for objects) and the server's CPU time per
unit of work: user + system time from C{/proc/PID/stat} of the server's
process, its live descendants and its reaped children, which stays
meaningful on a busy machine where client and server share the CPUs.

The suite only starts servers as subprocesses and talks to them over
sockets: it imports nothing from netd.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import getfile_bench  # noqa: E402
import objects_bench  # noqa: E402

PROJECT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
LOAD = os.path.join(HERE, "echoload")
TICKS = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"
#: The services that bench/echoload drives (a C{-udp} name is over UDP).
SOCKET_SERVICES = ["echo", "daytime", "time", "echo-udp"]

#: The netd variants measured unless C{--netd} is given: name, the extra
#: arguments after C{netd}, and the loop (C{None}: twistd's default reactor).
NETD_VARIANTS: list[tuple[str, list[str], str | None]] = [
    ("netd", [], None),
    ("netd --workers 1", ["--workers", "1"], None),
    ("netd --workers 2", ["--workers", "2"], None),
    ("netd/uvloop", [], "uvloop"),
]


class UnavailableError(Exception):
    """
    A server could not be started; the message says why, in one line.
    """


def cpuSeconds(pid: int) -> float:
    """
    CPU seconds (user + system) used by process C{pid}, its reaped children
    and its live descendants; 0 for a process that is gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = sum(int(value) for value in fields[11:15]) / TICKS
    for child in children(pid):
        total += cpuSeconds(child)
    return total


def children(pid: int) -> list[int]:
    """
    The live children of process C{pid}, from every one of its threads.
    """
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as stream:
                found.extend(int(child) for child in stream.read().split())
        except OSError:
            continue
    return found


def freePorts(kinds: list[int]) -> list[int]:
    """
    One free port of 127.0.0.1 for each socket type in C{kinds}
    (C{SOCK_STREAM} or C{SOCK_DGRAM}), all different: bound at once, then
    released for a server to take.
    """
    sockets = []
    ports: list[int] = []
    try:
        while len(ports) < len(kinds):
            sock = socket.socket(socket.AF_INET, kinds[len(ports)])
            sockets.append(sock)
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
            if port not in ports:
                ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


def portsFor(services: list[str]) -> dict[str, int]:
    """
    A free port for each service: UDP for a name ending in C{-udp}, else TCP.
    """
    kinds = [
        socket.SOCK_DGRAM if service.endswith("-udp") else socket.SOCK_STREAM
        for service in services
    ]
    return dict(zip(services, freePorts(kinds), strict=True))


def boundPorts() -> set[tuple[str, int]]:
    """
    The listening TCP ports and bound UDP ports of this machine, as
    C{("tcp", port)} and C{("udp", port)}.
    """
    bound = set()
    for proto, table, state in (
        ("tcp", "/proc/net/tcp", "0A"),
        ("tcp", "/proc/net/tcp6", "0A"),
        ("udp", "/proc/net/udp", "07"),
        ("udp", "/proc/net/udp6", "07"),
    ):
        try:
            with open(table) as stream:
                lines = stream.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == state:
                bound.add((proto, int(fields[1].rsplit(":", 1)[1], 16)))
    return bound


class Process:
    """
    One server process, serving some services on ports chosen before it
    starts.

    @ivar ports: service name (C{echo}, C{echo-udp}, C{getfile}...) to port.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        ports: dict[str, int],
        logs: str,
        env: dict[str, str] | None = None,
        announced: str | None = None,
    ) -> None:
        """
        Start the process and wait until it listens on every port.

        @param announced: a service whose port the process picks itself and
            prints alone on its first line of output (the peers of
            C{getfile_bench.py} and C{objects_bench.py}).
        @raise UnavailableError: if it exits or does not listen within 30 s.
        """
        self.name = name
        self.ports = dict(ports)
        self.logPath = os.path.join(
            logs, name.replace("/", "-").replace(" ", "") + ".log"
        )
        environment = dict(os.environ, PYTHONPATH=PROJECT, **(env or {}))
        with open(self.logPath, "w") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=environment
            )
        self.pid = self.process.pid
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise UnavailableError(self.lastWords())
            if announced and announced not in self.ports:
                with open(self.logPath) as log:
                    first = log.readline().strip()
                if first.isdigit():
                    self.ports[announced] = int(first)
            if self.listening():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise UnavailableError(f"not listening after 30 s: {self.lastWords()}")
            time.sleep(0.05)

    def listening(self) -> bool:
        """
        Whether every port of this process is bound.
        """
        if not self.ports:
            return False
        wanted = {
            ("udp" if service.endswith("-udp") else "tcp", port)
            for service, port in self.ports.items()
        }
        return wanted <= boundPorts()

    def lastWords(self) -> str:
        """
        The line of the server's output that best says why it stopped: a
        C{netd:} line, an error, else the last line.
        """
        with open(self.logPath, errors="replace") as log:
            lines = [line.strip() for line in log if line.strip()]
        for line in lines:
            if line.startswith("netd:") or "rror" in line:
                return line
        return lines[-1] if lines else f"exited with status {self.process.returncode}"

    def cpu(self) -> float:
        """
        CPU seconds of the server so far, its children included.
        """
        return cpuSeconds(self.pid)

    def stop(self) -> None:
        """
        Stop the server: SIGTERM, then SIGKILL after 10 s.
        """
        getfile_bench.stopServer(self.process)


@dataclass
class Row:
    """
    A server of the table: its processes, by the service each serves.
    """

    name: str
    start: Callable[[str], list[Process]]
    processes: list[Process] = field(default_factory=list)
    note: str = ""

    def serving(self, service: str) -> Process | None:
        """
        The process of this row that serves C{service}, if any.
        """
        for process in self.processes:
            if service in process.ports:
                return process
        return None


@dataclass
class Sample:
    """
    One measurement: the rate, the units of work done (connections,
    messages, MB, round trips) and the server's CPU seconds for them.
    """

    rate: float
    count: float
    cpu: float
    errors: int = 0


@dataclass
class Settings:
    """
    How long and how much each measurement runs, and where.
    """

    seconds: float
    getfileMiB: int
    getfileRepeat: int
    root: str
    pin: bool


# --- The loads ---------------------------------------------------------


def echoload(
    port: int, connections: int, seconds: float, size: int, mode: str, pin: bool
) -> dict[str, Any]:
    """
    Run the compiled client once (at most 2 million connections or
    messages); return its JSON line.
    """
    command = [LOAD, LOOPBACK, str(port), str(connections), f"{seconds:g}", str(size)]
    command += ["0", mode, "2000000"]
    if pin:
        command = pinned(1, command)
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30
    )
    if result.returncode != 0:
        raise RuntimeError(
            result.stderr.strip() or f"echoload exited {result.returncode}"
        )
    return json.loads(result.stdout)


@dataclass
class Load:
    """
    A column of the table.

    @ivar key: its name for C{--loads}.
    @ivar service: the service it drives (a key of L{Process.ports}).
    @ivar per: the unit of work the server's CPU time is divided by.
    @ivar reference: the row its ratios are to.
    """

    key: str
    name: str
    service: str
    unit: str
    per: str
    run: Callable[[Process, Settings], Sample]
    reference: str = "twisted"


def clientLoad(
    service: str, connections: int, size: int, mode: str
) -> Callable[[Process, Settings], Sample]:
    """
    A load that C{bench/echoload} drives on C{service}.
    """

    def run(server: Process, settings: Settings) -> Sample:
        before = server.cpu()
        port = server.ports[service]
        figures = echoload(
            port, connections, settings.seconds, size, mode, settings.pin
        )
        time.sleep(0.05)  # let a forking server reap its children
        used = server.cpu() - before
        count = figures["count"] / 1e6 if mode == "bulk" else figures["count"]
        return Sample(figures["rate"], count, used, figures["errors"])

    return run


def getfileLoad(clients: int) -> Callable[[Process, Settings], Sample]:
    """
    A load of C{clients} concurrent getfile downloads (C{getfile_bench.py}).
    """

    def run(server: Process, settings: Settings) -> Sample:
        size = settings.getfileMiB * 2**20
        target = _GetFileServer(server)
        rate, _clientCpu, serverCpu = getfile_bench.measure(
            target, clients, size, settings.getfileRepeat
        )
        megabytes = clients * size * settings.getfileRepeat / 1e6
        wall = megabytes / rate
        return Sample(rate, megabytes, serverCpu / 100 * wall)

    return run


class _GetFileServer:
    """
    What C{getfile_bench.measure} needs of a server.
    """

    def __init__(self, process: Process) -> None:
        self.name = process.name
        self.port = process.ports["getfile"]
        self.cpuSeconds = process.cpu


def objectsLoad(clients: int) -> Callable[[Process, Settings], Sample]:
    """
    A load of C{clients} lock-step objects clients (C{objects_bench.py}).
    """

    def run(server: Process, settings: Settings) -> Sample:
        figures = objects_bench.measure(
            server.pid, server.ports["objects"], clients, settings.seconds, server.cpu
        )
        count = figures["rate"] * settings.seconds
        return Sample(
            figures["rate"], count, figures["serverCpu"] / 100 * settings.seconds
        )

    return run


def driven(
    key: str,
    name: str,
    service: str,
    unit: str,
    per: str,
    shape: tuple[int, int, str],
) -> Load:
    """
    A load that C{bench/echoload} drives: C{shape} is its connections (or
    UDP sockets), message size (for C{connect}: the least reply) and mode.
    """
    return Load(key, name, service, unit, per, clientLoad(service, *shape))


LOADS = [
    driven("daytime", "daytime C=16", "daytime", "conn/s", "conn", (16, 2, "connect")),
    driven("time", "time C=16", "time", "conn/s", "conn", (16, 4, "connect")),
    driven("echo-c1", "echo C=1", "echo", "msg/s", "msg", (1, 64, "lockstep")),
    driven("echo-c64", "echo C=64", "echo", "msg/s", "msg", (64, 64, "lockstep")),
    driven("bulk", "bulk echo", "echo", "MB/s", "MB", (1, 64, "bulk")),
    driven("udp-c1", "UDP echo C=1", "echo-udp", "msg/s", "msg", (1, 64, "udp")),
    driven("udp-c64", "UDP echo C=64", "echo-udp", "msg/s", "msg", (64, 64, "udp")),
    Load("getfile-x1", "getfile x1", "getfile", "MB/s", "MB", getfileLoad(1)),
    Load("getfile-x4", "getfile x4", "getfile", "MB/s", "MB", getfileLoad(4)),
    Load(
        "objects-c1", "objects C=1", "objects", "rt/s", "rt", objectsLoad(1), "stdlib"
    ),
    Load(
        "objects-c16",
        "objects C=16",
        "objects",
        "rt/s",
        "rt",
        objectsLoad(16),
        "stdlib",
    ),
]


# --- The servers -------------------------------------------------------


def peerRow(name: str, kind: str, root: str) -> Row:
    """
    A row of C{bench/peers.py} services, plus (for bare Twisted) the
    C{FileSender} getfile server of C{getfile_bench.py}.
    """

    def start(logs: str) -> list[Process]:
        ports = portsFor(SOCKET_SERVICES)
        argv = [sys.executable, os.path.join(HERE, "peers.py"), kind]
        argv += [f"{service}={port}" for service, port in ports.items()]
        processes = [Process(name, server(argv), ports, logs)]
        if kind == "twisted":
            processes.append(getfilePeer(f"{name}-getfile", "filesender", root, logs))
        return processes

    return Row(name, start)


#: Whether servers run on core 0 and echoload on core 1 (C{--pin}).
PIN = {"servers": False}


def pinned(core: int, argv: list[str]) -> list[str]:
    """
    C{argv} pinned to C{core} when C{taskset} is there.
    """
    if shutil.which("taskset"):
        return ["taskset", "-c", str(core), *argv]
    return argv


def server(argv: list[str]) -> list[str]:
    """
    A server's command: pinned to core 0 with C{--pin}, else as it is.
    """
    return pinned(0, argv) if PIN["servers"] else argv


def getfilePeer(name: str, kind: str, root: str, logs: str) -> Process:
    """
    One of C{getfile_bench.py}'s getfile servers (C{filesender},
    C{sendfile}) serving C{root}.
    """
    argv = [
        sys.executable,
        os.path.join(HERE, "getfile_bench.py"),
        "--serve",
        kind,
        root,
    ]
    return Process(name, server(argv), {}, logs, announced="getfile")


def stdlibRow(root: str) -> Row:
    """
    The standard library's servers: C{os.sendfile} in a thread per
    connection (getfile) and C{multiprocessing.connection.Listener}.
    """

    def start(logs: str) -> list[Process]:
        listener = [sys.executable, "-c", objects_bench.STDLIB_SERVER]
        listener.append(objects_bench.AUTHKEY.hex())
        return [
            getfilePeer("stdlib-getfile", "sendfile", root, logs),
            Process("stdlib-objects", server(listener), {}, logs, announced="objects"),
        ]

    return Row("stdlib", start)


XINETD_DEFAULTS = """\
defaults
{{
    instances = UNLIMITED
    per_source = UNLIMITED
    cps = 1000000 1
    log_type = FILE {log}
    log_on_success = HOST PID
    log_on_failure = HOST
}}
"""
XINETD_SERVICE = """\
service {name}
{{
    id = {name}-{socket}
    type = INTERNAL UNLISTED
    socket_type = {socket}
    protocol = {protocol}
    port = {port}
    bind = 127.0.0.1
    wait = {wait}
    user = {user}
}}
"""


def xinetdConfig(ports: dict[str, int], log: str) -> str:
    """
    An xinetd config serving its internal echo (TCP, UDP), daytime and time
    services on C{ports}, logging every connection to the file C{log}.
    """
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    config = XINETD_DEFAULTS.format(log=log)
    for service, port in ports.items():
        udp = service.endswith("-udp")
        config += XINETD_SERVICE.format(
            name=service.removesuffix("-udp"),
            socket="dgram" if udp else "stream",
            protocol="udp" if udp else "tcp",
            port=port,
            wait="yes" if udp else "no",
            user=user,
        )
    return config


def xinetdRow() -> Row:
    """
    xinetd's internal services, in the foreground with its own config.
    """

    def start(logs: str) -> list[Process]:
        xinetd = shutil.which("xinetd") or (
            "/usr/sbin/xinetd" if os.path.exists("/usr/sbin/xinetd") else None
        )
        if xinetd is None:
            raise UnavailableError("xinetd is not installed (make bench-deps, as root)")
        ports = portsFor(SOCKET_SERVICES)
        config = os.path.join(logs, "xinetd.conf")
        with open(config, "w") as stream:
            stream.write(
                xinetdConfig(ports, os.path.join(logs, "xinetd-connections.log"))
            )
        argv = [xinetd, "-dontfork", "-f", config]
        return [Process("xinetd", server(argv), ports, logs)]

    return Row("xinetd", start)


AUTHKEY_ENV = "NETD_OBJECTS_AUTHKEY"


def netdRow(name: str, extra: list[str], loop: str | None, root: str) -> Row:
    """
    netd serving every load's service, with C{extra} arguments after
    C{netd}, on twistd's default reactor or (C{loop}) Twisted's asyncio
    reactor over that loop.
    """

    def start(logs: str) -> list[Process]:
        ports = portsFor([*SOCKET_SERVICES, "getfile", "objects"])
        log = os.path.join(logs, name.replace("/", "-").replace(" ", "") + "-netd.log")
        if loop is None:
            argv = [os.path.join(BIN, "twistd")]
        else:
            argv = [sys.executable, os.path.join(HERE, "twistd_on.py"), loop]
        argv += ["--nodaemon", "--pidfile=", f"--logfile={log}", "netd"]
        argv += ["--services", "echo,daytime,time,getfile,objects"]
        for service, port in ports.items():
            if service == "echo-udp":
                argv += ["--echo", f"udp:{port}:interface={LOOPBACK}"]
            else:
                argv += [f"--{service}", f"tcp:{port}:interface={LOOPBACK}"]
        argv += ["--echo-prefix", "", "--echo-udp-rate", "1000000000"]
        argv += ["--getfile-root", root, *extra]
        env = {AUTHKEY_ENV: objects_bench.AUTHKEY.decode()}
        try:
            return [Process(name, server(argv), ports, logs, env=env)]
        except UnavailableError:
            if os.path.exists(log):  # netd's own words are in its log file
                with open(log, errors="replace") as stream:
                    lines = [line.strip() for line in stream if "netd:" in line]
                if lines:
                    raise UnavailableError(lines[0]) from None
            raise

    return Row(name, start)


# --- The run -----------------------------------------------------------


def measureAll(
    rows: list[Row], loads: list[Load], settings: Settings, reps: int, warm: bool
) -> dict[tuple[str, str], list[Sample | str]]:
    """
    Every load on every row that serves it, C{reps} times, rows interleaved
    (their order rotates each repetition). A failed measurement is kept as
    its one-line error.
    """
    samples: dict[tuple[str, str], list[Sample | str]] = {}
    for load in loads:
        serving = [(row, row.serving(load.service)) for row in rows]
        targets = [(row, process) for row, process in serving if process is not None]
        print(f"  {load.name}: {', '.join(row.name for row, _ in targets)}", flush=True)
        if warm and load.service not in ("getfile", "objects"):
            short = Settings(0.3, settings.getfileMiB, 1, settings.root, settings.pin)
            for _row, process in targets:
                try:
                    load.run(process, short)
                except (RuntimeError, subprocess.TimeoutExpired):
                    pass
        for rep in range(reps):
            shift = rep % len(targets) if targets else 0
            for row, process in targets[shift:] + targets[:shift]:
                try:
                    result: Sample | str = load.run(process, settings)
                except Exception as error:  # a server that died, a client that failed
                    result = str(error).splitlines()[0] if str(error) else repr(error)
                samples.setdefault((row.name, load.name), []).append(result)
    return samples


def median(runs: list[Sample | str]) -> Sample | str | None:
    """
    The repetition with the median rate, or the error if most failed.
    """
    good = [run for run in runs if isinstance(run, Sample)]
    if len(good) * 2 < len(runs) or not good:
        return next((run for run in runs if isinstance(run, str)), None)
    return sorted(good, key=lambda sample: sample.rate)[(len(good) - 1) // 2]


def formatRate(rate: float) -> str:
    """
    A rate for the table: thousands separated, a decimal below 100.
    """
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:,.1f}"


def cpuText(sample: Sample, per: str) -> str:
    """
    The server's CPU time per unit of work, in microseconds (a bound when
    the run was shorter than one clock tick of the server's CPU time).
    """
    if not sample.count:
        return "—"
    if sample.cpu <= 0:
        return f"<{1e6 / TICKS / sample.count:,.0f} µs/{per}"
    return f"{sample.cpu / sample.count * 1e6:,.0f} µs/{per}"


def table(
    rows: list[Row],
    loads: list[Load],
    samples: dict[tuple[str, str], list[Sample | str]],
) -> tuple[str, list[str]]:
    """
    The markdown table (rows by loads) and its footnotes.
    """
    notes: list[str] = []
    header = "| server | " + " | ".join(f"{load.name} ({load.unit})" for load in loads)
    lines = [header + " |", "|---" * (len(loads) + 1) + "|"]
    medians = {key: median(runs) for key, runs in samples.items()}
    for row in rows:
        cells = []
        for load in loads:
            result = medians.get((row.name, load.name))
            if result is None:
                cells.append("—")
                continue
            if isinstance(result, str):
                notes.append(f"{row.name}, {load.name}: failed: {result}")
                cells.append("failed")
                continue
            reference = medians.get((load.reference, load.name))
            ratio = (
                f" ({result.rate / reference.rate:.2f}×)"
                if isinstance(reference, Sample) and reference.rate
                else ""
            )
            cells.append(
                f"{formatRate(result.rate)}{ratio} {cpuText(result, load.per)}"
            )
            if result.errors:
                what = "datagrams lost" if load.service == "echo-udp" else "errors"
                notes.append(f"{row.name}, {load.name}: {result.errors} {what}")
        if row.note:
            notes.append(f"{row.name}: not measured: {row.note}")
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines), notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (~2 min)")
    parser.add_argument("--reps", type=int, help="repetitions [3]")
    parser.add_argument("--seconds", type=float, help="seconds per run [2; quick 0.7]")
    parser.add_argument("--servers", help="comma-separated rows to run (default: all)")
    parser.add_argument(
        "--loads",
        help="comma-separated loads (default: all): "
        + ",".join(load.key for load in LOADS),
    )
    parser.add_argument(
        "--netd",
        action="append",
        metavar="NAME=ARGS",
        help="a netd variant: a row name and the arguments after `netd` "
        "(repeatable; replaces the default variants; NAME starting with "
        "'netd/uvloop' runs it on uvloop)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="servers on core 0, echoload on core 1 (--workers 2 then shares one core)",
    )
    parser.add_argument(
        "--output",
        default=os.path.join(HERE, "results-latest.md"),
        help="[%(default)s]",
    )
    args = parser.parse_args()
    PIN["servers"] = args.pin
    reps = args.reps or 3
    seconds = args.seconds or (0.7 if args.quick else 2.0)
    if not 0 < seconds <= 30 or not 0 < reps <= 10:
        raise SystemExit("bench: --seconds must be in (0, 30] and --reps in 1..10")
    if not os.path.exists(LOAD):
        raise SystemExit("bench: build the client first: make bench/echoload")

    variants = NETD_VARIANTS
    if args.netd:
        variants = []
        for spec in args.netd:
            name, _, extra = spec.partition("=")
            loop = "uvloop" if name.startswith("netd/uvloop") else None
            variants.append((name, shlex.split(extra), loop))
    loads = LOADS
    if args.loads:
        wanted = args.loads.split(",")
        unknown = set(wanted) - {load.key for load in LOADS}
        if unknown:
            raise SystemExit(f"bench: unknown loads {sorted(unknown)}")
        loads = [load for load in LOADS if load.key in wanted]

    base = tempfile.mkdtemp(prefix="netd-bench-")
    root = os.path.join(base, "root")
    logs = os.path.join(base, "logs")
    os.mkdir(root)
    os.mkdir(logs)
    settings = Settings(
        seconds, 32 if args.quick else 128, 2 if args.quick else 4, root, args.pin
    )
    rows = [
        peerRow("twisted", "twisted", root),
        peerRow("asyncio", "asyncio", root),
        peerRow("uvloop", "asyncio-uvloop", root),
        xinetdRow(),
        stdlibRow(root),
        *(netdRow(name, extra, loop, root) for name, extra, loop in variants),
    ]
    if args.servers:
        names = args.servers.split(",")
        rows = [row for row in rows if row.name in names]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still clean up
    started = time.monotonic()
    try:
        block = os.urandom(2**20)
        with open(os.path.join(root, getfile_bench.FILENAME), "wb") as stream:
            for _ in range(settings.getfileMiB):
                stream.write(block)
        for row in rows:
            try:
                row.processes = row.start(logs)
            except UnavailableError as error:
                row.note = str(error)
                print(f"{row.name}: not measured: {row.note}", flush=True)
        load1 = os.getloadavg()
        print(f"measuring ({reps} reps of {seconds:g} s, load {load1[0]:.2f}):")
        samples = measureAll(rows, loads, settings, reps, warm=not args.quick)
    finally:
        for row in rows:
            for process in row.processes:
                process.stop()
        shutil.rmtree(base, ignore_errors=True)

    markdown, notes = table(rows, loads, samples)
    load2 = os.getloadavg()
    title = (
        f"netd beside its peers, {time.strftime('%Y-%m-%d %H:%M')}: median of {reps} "
        f"interleaved runs of {seconds:g} s (getfile: {settings.getfileMiB} MiB × "
        f"{settings.getfileRepeat} per client), {os.cpu_count()} CPUs, load average "
        f"{load1[0]:.2f} before, {load2[0]:.2f} after; "
        f"{time.monotonic() - started:.0f} s."
    )
    legend = (
        "Each cell: the median rate, (its ratio to bare Twisted; objects: to the "
        "stdlib Listener), and the server's CPU time (user + system, children "
        "included; counted in clock ticks of "
        f"{1000 / TICKS:g} ms, so short runs are coarse) per connection, message, "
        "MB or round trip. "
        + ("Servers on core 0, echoload on core 1." if args.pin else "Nothing pinned.")
    )
    text = f"{title}\n\n{legend}\n\n{markdown}\n"
    if notes:
        text += "\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    print()
    print(text)
    with open(args.output, "w") as stream:
        stream.write(text)
    print(f"(written to {os.path.relpath(args.output)})")


if __name__ == "__main__":
    main()
