"""
Round trips per second of small objects: netd's objects service against the
standard library's own C{multiprocessing.connection.Listener} server (a
thread per client, as Beazley's object server), in the same run.

    python bench/objects_bench.py [--seconds S] [--clients 1,16] [--rounds N]

Both servers use the same authkey and echo each object back. Clients are
stdlib C{Client}s in separate processes (up to 4 connections each, driven
lock-step with C{multiprocessing.connection.wait}), so that the client is
not the bottleneck; their CPU use and the server's are printed beside the
rates.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
AUTHKEY = b"bench key"
REQUEST = ("hello", 42, [1.5, 2.5])
PER_PROCESS = 4

STDLIB_SERVER = """
import sys, threading
from multiprocessing.connection import Listener

def serve(conn):
    try:
        while True:
            conn.send(conn.recv())
    except (EOFError, OSError):
        conn.close()

listener = Listener(("127.0.0.1", 0), authkey=bytes.fromhex(sys.argv[1]))
print(listener.address[1], flush=True)
while True:
    try:
        conn = listener.accept()
    except Exception:
        continue
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

CLIENT = """
import json, resource, sys, time
from multiprocessing.connection import Client, wait

port, count = int(sys.argv[1]), int(sys.argv[2])
start, end = float(sys.argv[3]), float(sys.argv[4])
request = eval(sys.argv[5])
authkey = bytes.fromhex(sys.argv[6])
conns = [Client(("127.0.0.1", port), authkey=authkey) for _ in range(count)]
while time.time() < start:
    time.sleep(0.001)
cpu = resource.getrusage(resource.RUSAGE_SELF)
cpu = cpu.ru_utime + cpu.ru_stime
done = 0
for conn in conns:
    conn.send(request)
while True:
    now = time.time()
    for conn in wait(conns):
        reply = conn.recv()
        if now < end:
            done += 1
            conn.send(request)
        else:
            conns.remove(conn)
            conn.close()
    if not conns:
        break
used = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"done": done, "cpu": used.ru_utime + used.ru_stime - cpu}))
"""


def processCpu(pid: int) -> float:
    """
    CPU seconds (user + system) a process has used so far.
    """
    with open(f"/proc/{pid}/stat") as stream:
        fields = stream.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def startNetd() -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, NETD_OBJECTS_AUTHKEY=AUTHKEY.decode())
    env["PYTHONPATH"] = PROJECT
    netd = subprocess.Popen(
        [
            TWISTD,
            "--nodaemon",
            "--pidfile=",
            "--logfile=/dev/null",
            "netd",
            "--services=objects",
            "--objects=tcp:0:interface=127.0.0.1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # With --logfile=/dev/null the port is not logged; ask the kernel.
    deadline = time.time() + 20
    while time.time() < deadline:
        port = listeningPort(netd.pid)
        if port:
            return netd, port
        time.sleep(0.05)
    netd.kill()
    raise SystemExit("netd did not start")


def listeningPort(pid: int) -> int:
    """
    The TCP port a process listens on, from /proc (0 if none yet).
    """
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            match = re.match(r"socket:\[(\d+)\]", target)
            if match:
                inodes.add(match[1])
    except OSError:
        return 0
    with open("/proc/net/tcp") as stream:
        for line in stream.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                return int(fields[1].split(":")[1], 16)
    return 0


def startStdlib() -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen(
        [sys.executable, "-c", STDLIB_SERVER, AUTHKEY.hex()],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    return server, int(server.stdout.readline())


def measure(
    pid: int,
    port: int,
    clients: int,
    seconds: float,
    cpu: Callable[[], float] | None = None,
) -> dict[str, float]:
    """
    Drive a server with C{clients} lock-step connections for C{seconds}.

    @param cpu: reads the server's CPU seconds so far (default: process
        C{pid}'s own, without its children).
    """
    serverCpu = cpu or (lambda: processCpu(pid))
    counts = [PER_PROCESS] * (clients // PER_PROCESS)
    if clients % PER_PROCESS:
        counts.append(clients % PER_PROCESS)
    start = time.time() + 1.0 + 0.2 * len(counts)
    end = start + seconds
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLIENT,
                str(port),
                str(count),
                repr(start),
                repr(end),
                repr(REQUEST),
                AUTHKEY.hex(),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for count in counts
    ]
    while time.time() < start:
        time.sleep(0.001)
    serverBefore = serverCpu()
    while time.time() < end:
        time.sleep(0.01)
    used = serverCpu() - serverBefore
    results = [json.loads(proc.communicate()[0]) for proc in procs]
    done = sum(result["done"] for result in results)
    return {
        "rate": done / seconds,
        "clientCpu": 100 * sum(result["cpu"] for result in results) / seconds,
        "serverCpu": 100 * used / seconds,
    }


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    """
    The run with the median rate (runs alternate between the servers, so
    that a burst of load from elsewhere does not favour either).
    """
    return sorted(runs, key=lambda run: run["rate"])[len(runs) // 2]


def loadAverage() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    levels = [int(level) for level in args.clients.split(",")]

    netd, netdPort = startNetd()
    stdlib, stdlibPort = startStdlib()
    try:
        print(
            f"objects: round trips/s of {REQUEST!r}, lock-step per connection, "
            f"median of {args.rounds} runs of {args.seconds:g} s; "
            f"{os.cpu_count()} CPUs, load average {loadAverage()}"
        )
        header = (
            f"{'C':>3}  {'stdlib Listener':>16}  {'netd':>10}  {'netd/stdlib':>11}"
            f"  {'server CPU stdlib/netd':>22}  {'client CPU stdlib/netd':>22}"
        )
        print(header)
        for clients in levels:
            runs: dict[str, list[dict[str, float]]] = {"stdlib": [], "netd": []}
            for _ in range(args.rounds):
                runs["stdlib"].append(
                    measure(stdlib.pid, stdlibPort, clients, args.seconds)
                )
                runs["netd"].append(measure(netd.pid, netdPort, clients, args.seconds))
            base, ours = median(runs["stdlib"]), median(runs["netd"])
            print(
                f"{clients:>3}  {base['rate']:>16.0f}  {ours['rate']:>10.0f}  "
                f"{ours['rate'] / base['rate']:>10.2f}x  "
                f"{base['serverCpu']:>10.0f}% / {ours['serverCpu']:>4.0f}%   "
                f"{base['clientCpu']:>10.0f}% / {ours['clientCpu']:>4.0f}%",
                flush=True,
            )
        print(f"load average after: {loadAverage()}")
    finally:
        for server in (netd, stdlib):
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
