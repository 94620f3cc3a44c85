"""
netd with C{--workers 1} beside C{--workers 2}, side by side in one run.

Both servers run at once (an idle one costs nothing) with echo and daytime
on loopback, and the rounds interleave them. Loads come from the compiled
client C{bench/echoload}: lock-step 64-byte echo on 64 connections, and its
connect mode (daytime, 16 connections in flight, each read to its close).
Nothing is pinned: two workers need both cores, so the client
shares them, and the server CPU time per message or connection (from
C{/proc/PID/stat}, the parent and its workers together) is printed beside
each rate.

    make bench-workers      (or: python bench/workers_bench.py [--seconds 3])
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
ECHOLOAD = os.path.join(HERE, "echoload")
READY = re.compile(rb"netd ready: ")
LISTENING = re.compile(rb"(\w+) listening on TCP 127\.0\.0\.1:(\d+)")
TICKS = os.sysconf("SC_CLK_TCK")


def startNetd(workers: int) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """
    Start netd with C{workers} workers; return it and its ports by service.
    """
    command = [os.path.join(BIN, "twistd"), "--nodaemon", "--pidfile=", "netd"]
    command += ["--workers", str(workers), "--services", "echo,daytime"]
    command += ["--echo", "tcp:0:interface=127.0.0.1", "--echo-prefix", ""]
    command += ["--daytime", "tcp:0:interface=127.0.0.1", "--max-connections", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert process.stdout is not None
    ports: dict[str, int] = {}
    output = b""
    while True:
        line = process.stdout.readline()
        if not line:
            process.wait()
            raise RuntimeError(f"netd exited:\n{output.decode()}")
        output += line
        match = LISTENING.search(line)
        if match:
            ports[match.group(1).decode()] = int(match.group(2))
        if READY.search(line):
            # Drain the log so that netd never blocks on a full pipe.
            subprocess.Popen(["cat"], stdin=process.stdout, stdout=subprocess.DEVNULL)
            return process, ports


def serverCPU(pid: int) -> float:
    """
    CPU seconds used so far by C{pid} and its running children.
    """
    total = 0.0
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as stream:
            children = [int(child) for child in stream.read().split()]
    except OSError:
        children = []
    for each in [pid, *children]:
        try:
            with open(f"/proc/{each}/stat") as stream:
                fields = stream.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def run(command: list[str], seconds: float) -> dict:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout)


def measure(pid: int, ports: dict[str, int], scenario: str, seconds: float) -> dict:
    """
    One run of a scenario; its rate and the server's CPU per operation.
    """
    before = serverCPU(pid)
    if scenario == "echo C=64":
        figures = run(
            [ECHOLOAD, "127.0.0.1", str(ports["echo"]), "64", str(seconds), "64"]
            + ["0", "lockstep"],
            seconds,
        )
        rate = figures["rate"]
    else:
        figures = run(
            [ECHOLOAD, "127.0.0.1", str(ports["daytime"]), "16", str(seconds), "1"]
            + ["0", "connect"],
            seconds,
        )
        rate = figures["rate"]
    used = serverCPU(pid) - before
    return {"rate": rate, "cpu_us": 1e6 * used / max(1.0, rate * seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    if not os.path.exists(ECHOLOAD):
        raise SystemExit("build the client first: make bench/echoload")
    scenarios = ["echo C=64", "daytime C=16"]
    counts = [1, 2]
    started = {count: startNetd(count) for count in counts}
    samples: dict[tuple[str, int], list[dict]] = {}
    try:
        for scenario in scenarios:
            for process, ports in started.values():
                measure(process.pid, ports, scenario, 0.5)  # warm up
            for _round in range(arguments.rounds):
                for count, (process, ports) in started.items():
                    samples.setdefault((scenario, count), []).append(
                        measure(process.pid, ports, scenario, arguments.seconds)
                    )
    finally:
        for process, _ports in started.values():
            process.terminate()
        for process, _ports in started.values():
            process.wait(30)
    print(
        f"{'scenario':14} {'workers':>7} {'rate/s':>10} "
        f"{'server CPU us/op':>17} {'ratio':>6}"
    )
    for scenario in scenarios:
        medians = {
            count: sorted(samples[scenario, count], key=lambda f: f["rate"])[
                len(samples[scenario, count]) // 2
            ]
            for count in counts
        }
        for count in counts:
            figures = medians[count]
            ratio = figures["rate"] / medians[1]["rate"]
            print(
                f"{scenario:14} {count:>7} {figures['rate']:>10.0f} "
                f"{figures['cpu_us']:>17.1f} {ratio:>6.2f}"
            )


if __name__ == "__main__":
    main()
