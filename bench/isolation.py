"""
Isolation: does one hostile objects client slow the other services down?

    python bench/isolation.py [--seconds S] [--attacks NAME,...]

Starts one C{twistd -n netd} (echo, daytime, getfile, objects, its default
budgets) on free loopback ports. For each attack, a probe measures round
trips on echo, daytime and getfile (a 1 KiB file), first with no attack,
then while the attack runs (in another process), and prints each probe's
p50/p99 latency side by side, with netd's RSS (its own and its objects
workers') and descriptor count before the attack and after its clients
left. Bounded: each phase lasts C{--seconds}, every attack client closes at
its end, loopback only.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
LISTENING = re.compile(
    r"(?P<service>[\w-]+) listening on TCP 127\.0\.0\.1:(?P<port>\d+)"
)


# Hostile requests: the test suite's own.
sys.path.insert(0, PROJECT)
from tests.services.objects.test_pool import (  # noqa: E402
    badFloatLine,
    collidingDict,
    collidingSet,
    deepLists,
    hugeDecimal,
)


def frame(body: bytes) -> bytes:
    return struct.pack("!i", len(body)) + body


def readFrame(sock: socket.socket) -> bytes:
    header = _readExactly(sock, 4)
    return _readExactly(sock, struct.unpack("!i", header)[0])


def _readExactly(sock: socket.socket, count: int) -> bytes:
    chunks = []
    while count:
        chunk = sock.recv(min(count, 1 << 20))
        if not chunk:
            raise ConnectionError("closed")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


# Attacks: each runs until `end`, in a process of its own (forked), so that
# the probe in this process never waits on it.


def repeatRequest(port: int, body: bytes, end: float, connections: int = 2) -> None:
    """
    Keep C{connections} connections each sending C{body} and reading the
    reply, until C{end}.
    """

    def one() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.settimeout(max(1.0, end - time.time() + 10))
                while time.time() < end:
                    sock.sendall(frame(body))
                    readFrame(sock)
        except OSError as error:
            print(f"attack connection ended: {error}", file=sys.stderr)

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def nonReading(port: int, end: float, clients: int = 20) -> None:
    """
    C{clients} connections that send 1 MiB requests and never read.
    """
    body = pickle.dumps(b"n" * (1 << 20))
    socks = []
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        socks.append(sock)
    data = frame(body)
    unsent = dict.fromkeys(socks, b"")
    while time.time() < end:
        for sock in socks:
            pending = unsent[sock] or data
            try:
                unsent[sock] = pending[sock.send(pending) :]
            except BlockingIOError:
                unsent[sock] = pending
        time.sleep(0.01)
    for sock in socks:
        sock.close()


def partialFrames(port: int, end: float, clients: int = 24) -> None:
    """
    C{clients} connections each holding a partial 8 MiB frame open.
    """
    size = 8 * 1024 * 1024 - 16
    socks = []
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(2)
        try:
            sock.sendall(struct.pack("!i", size) + b"\0" * (size - 4096))
        except OSError:
            pass
        socks.append(sock)
        if time.time() > end:
            break
    while time.time() < end:
        time.sleep(0.05)
    for sock in socks:
        sock.close()


ATTACKS = {
    "colliding-set": lambda port, end: repeatRequest(port, collidingSet(50_000), end),
    "colliding-dict": lambda port, end: repeatRequest(port, collidingDict(50_000), end),
    "huge-decimal": lambda port, end: repeatRequest(port, hugeDecimal(), end),
    "deep-nesting": lambda port, end: repeatRequest(port, deepLists(1_000_000), end),
    "bad-float-4MiB": lambda port, end: repeatRequest(
        port, badFloatLine(4 * 1024 * 1024), end
    ),
    "non-reading-x20": nonReading,
    "partial-8MiB-x24": partialFrames,
}


# The probe.


def probeOnce(kind: str, port: int) -> float:
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        if kind == "echo":
            sock.sendall(b"probe\n")
            received = b""
            while not received.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        else:
            if kind == "getfile":
                sock.sendall(b"probe.txt\n")
            while sock.recv(65536):
                pass
    return time.perf_counter() - start


def probe(ports: dict[str, int], seconds: float) -> dict[str, list[float]]:
    """
    Probe echo, daytime and getfile in turn for C{seconds}, a probe every
    10 ms.
    """
    latencies: dict[str, list[float]] = {"echo": [], "daytime": [], "getfile": []}
    end = time.time() + seconds
    while time.time() < end:
        for kind in latencies:
            latencies[kind].append(probeOnce(kind, ports[kind]))
        time.sleep(0.01)
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# netd's figures.


def processFigures(pid: int) -> tuple[int, int, int]:
    """
    netd's RSS, its children's (the objects workers) RSS, in KiB, and its
    open descriptors.
    """
    rss = _rss(pid)
    children = 0
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as stream:
            for child in stream.read().split():
                children += _rss(int(child))
    except OSError:
        pass
    return rss, children, len(os.listdir(f"/proc/{pid}/fd"))


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as stream:
            for line in stream:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def startNetd(
    root: str, extra: list[str]
) -> tuple[subprocess.Popen[str], dict[str, int]]:
    env = dict(os.environ, PYTHONPATH=PROJECT)
    netd = subprocess.Popen(
        [
            TWISTD,
            "--nodaemon",
            "--pidfile=",
            "--logfile=-",
            "netd",
            "--services=echo,daytime,getfile,objects",
            "--echo=tcp:0:interface=127.0.0.1",
            "--daytime=tcp:0:interface=127.0.0.1",
            "--getfile=tcp:0:interface=127.0.0.1",
            f"--getfile-root={root}",
            "--objects=tcp:0:interface=127.0.0.1",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ports: dict[str, int] = {}
    assert netd.stdout is not None
    deadline = time.time() + 30
    while len(ports) < 4 and time.time() < deadline:
        line = netd.stdout.readline()
        if not line:
            break
        match = LISTENING.search(line)
        if match:
            ports[match["service"]] = int(match["port"])
    if len(ports) < 4:
        netd.kill()
        raise SystemExit(f"netd did not start: {ports}")
    # Keep reading its log, so that it never blocks on a full pipe.
    lines: list[str] = []
    threading.Thread(
        target=lambda: lines.extend(netd.stdout or []), daemon=True
    ).start()
    netd.logLines = lines  # type: ignore[attr-defined]
    return netd, ports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument(
        "--netd-arg",
        action="append",
        default=[],
        help="an extra netd option (--netd-arg=--objects-workers=0: no isolation)",
    )
    args = parser.parse_args()
    chosen = [name for name in args.attacks.split(",") if name]

    root = tempfile.mkdtemp(prefix="netd-isolation-")
    with open(os.path.join(root, "probe.txt"), "wb") as stream:
        stream.write(b"p" * 1024)
    netd, ports = startNetd(root, args.netd_arg)
    try:
        time.sleep(1.0)
        print(
            f"isolation: probe p50/p99 latency (ms) on echo, daytime, getfile, "
            f"without and during each objects attack ({args.seconds:g} s each); "
            f"netd RSS (+ workers) in MiB and descriptors before/after; "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
        )
        print(
            f"{'attack':<18} {'service':<8} {'quiet p50/p99':>14} "
            f"{'attacked p50/p99':>17}  {'RSS before/after':>22}  {'fds':>8}"
        )
        worst = 0.0
        for name in chosen:
            quiet = probe(ports, args.seconds)
            before = processFigures(netd.pid)
            end = time.time() + args.seconds + 0.5
            attacker = multiprocessing.get_context("fork").Process(
                target=ATTACKS[name], args=(ports["objects"], end)
            )
            attacker.start()
            time.sleep(0.5)
            attacked = probe(ports, args.seconds)
            attacker.join(60)
            if attacker.is_alive():
                attacker.kill()
            time.sleep(1.0)
            after = processFigures(netd.pid)
            for index, kind in enumerate(("echo", "daytime", "getfile")):
                q50, q99 = (percentile(quiet[kind], f) * 1000 for f in (0.5, 0.99))
                a50, a99 = (percentile(attacked[kind], f) * 1000 for f in (0.5, 0.99))
                worst = max(worst, a99)
                figures = ""
                if index == 0:
                    figures = (
                        f"{before[0] / 1024:.0f}+{before[1] / 1024:.0f} / "
                        f"{after[0] / 1024:.0f}+{after[1] / 1024:.0f}".rjust(22)
                        + f"  {before[2]:>3}/{after[2]:<3}"
                    )
                print(
                    f"{name if index == 0 else '':<18} {kind:<8} "
                    f"{q50:>6.1f}/{q99:<7.1f} {a50:>8.1f}/{a99:<8.1f}  {figures}",
                    flush=True,
                )
        print(f"worst p99 during an attack: {worst:.1f} ms")
        if os.environ.get("ISOLATION_LOG"):
            print(
                "".join(
                    line
                    for line in netd.logLines
                    if "objects" in line or "budget" in line
                )[-6000:]
            )  # type: ignore[attr-defined]
    finally:
        netd.terminate()
        try:
            netd.wait(20)
        except subprocess.TimeoutExpired:
            netd.kill()
        for entry in os.listdir(root):
            os.unlink(os.path.join(root, entry))
        os.rmdir(root)


if __name__ == "__main__":
    main()
