"""
getfile throughput: netd against a bare Twisted FileSender server and a
blocking os.sendfile server, side by side, in one run.

    .venv/bin/python bench/getfile_bench.py [--size MIB] [--rounds N]

A temporary file (256 MiB by default) is downloaded by 1 and by 4
concurrent clients from each server, all speaking the book form (PATH\\n,
bytes, close):

    netd             twistd -n netd (os.sendfile on plain TCP)
    netd-producer    the same with --getfile-no-sendfile (the TLS path)
    filesender       a bare Twisted server: LineReceiver + FileSender
    sendfile-peer    a blocking thread-per-connection os.sendfile server

Each client is its own process reading with recv_into into a 4 MiB buffer,
so that the clients are not the bottleneck; their CPU is printed beside the
servers'. In a round each client downloads the file 4 times (--repeat), one
connection after another; the best of 3 rounds (--rounds) is kept. The
servers are started by this script and stopped at the end, and the file is
deleted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
FILENAME = "bench.bin"


# The peers, run as `getfile_bench.py --serve KIND ROOT`: each prints its
# port on a line of its own, then serves until killed.


def serveFileSender(root: str) -> None:
    """
    The simplest Twisted getfile server: a line, then FileSender.
    """
    from twisted.internet import protocol, reactor
    from twisted.protocols.basic import FileSender, LineReceiver

    class GetFile(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            stream = open(os.path.join(root, line.decode()), "rb")  # noqa: SIM115

            def done(result: Any) -> None:
                stream.close()
                self.transport.loseConnection()

            FileSender().beginFileTransfer(stream, self.transport).addBoth(done)

    port = reactor.listenTCP(
        0, protocol.Factory.forProtocol(GetFile), interface="127.0.0.1"
    )
    print(port.getHost().port, flush=True)
    reactor.run()


def serveSendfile(root: str) -> None:
    """
    A blocking server, one thread per connection, whole file by os.sendfile.
    """
    import socketserver

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            name = self.rfile.readline().strip().decode()
            with open(os.path.join(root, name), "rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                offset = 0
                while offset < size:
                    sent = os.sendfile(
                        self.connection.fileno(), stream.fileno(), offset, size - offset
                    )
                    if not sent:
                        break
                    offset += sent

    socketserver.ThreadingTCPServer.daemon_threads = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


class Server:
    """
    A server process and the port it listens on.
    """

    def __init__(self, name: str, argv: list[str], portPattern: str, logs: str) -> None:
        self.name = name
        env = dict(os.environ, PYTHONPATH=PROJECT)
        logPath = os.path.join(logs, f"{name}.log")
        with open(logPath, "w") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + 30
        self.port = 0
        while not self.port and time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with open(logPath) as log:
                match = re.search(portPattern, log.read(), re.MULTILINE)
            if match:
                self.port = int(match.group(1))
            else:
                time.sleep(0.05)
        if not self.port:
            self.stop()
            with open(logPath) as log:
                raise RuntimeError(f"{name} did not start:\n{log.read()}")

    def cpuSeconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def peakMemory(self) -> float:
        """
        The process's peak resident memory so far, in MiB.
        """
        with open(f"/proc/{self.process.pid}/status") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        stopServer(self.process)


def stopServer(process: subprocess.Popen[Any]) -> None:
    """
    Stop a server by its PID: SIGTERM, then SIGKILL after 10 s.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def download(port: int, repeat: int, go: Any, results: Any) -> None:
    """
    One client process: wait for the start, fetch the file C{repeat} times
    (a new connection each time), report.
    """
    buffer = bytearray(4 * 2**20)
    view = memoryview(buffer)
    go.wait()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    received = 0
    for _ in range(repeat):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(FILENAME.encode() + b"\n")
        while True:
            count = sock.recv_into(view)
            if not count:
                break
            received += count
        sock.close()
    ended = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    results.put((received, started, ended, cpu))


def measure(
    server: Server, clients: int, size: int, repeat: int
) -> tuple[float, float, float]:
    """
    One round: C{clients} concurrent clients, each downloading the whole
    file C{repeat} times.

    @return: MB/s over all clients, the clients' CPU and the server's, each
        as a percentage of one core over the round.
    """
    context = multiprocessing.get_context("fork")
    go = context.Event()
    results = context.Queue()
    processes = [
        context.Process(target=download, args=(server.port, repeat, go, results))
        for _ in range(clients)
    ]
    for process in processes:
        process.start()
    time.sleep(0.2)  # let every client start before the start
    serverBefore = server.cpuSeconds()
    go.set()
    rows = [results.get(timeout=120) for _ in processes]
    serverCpu = server.cpuSeconds() - serverBefore
    for process in processes:
        process.join()
    for received, *_ in rows:
        if received != size * repeat:
            raise RuntimeError(
                f"{server.name}: received {received} of {size * repeat} bytes"
            )
    wall = max(row[2] for row in rows) - min(row[1] for row in rows)
    clientCpu = sum(row[3] for row in rows)
    return (
        clients * size * repeat / wall / 1e6,
        100 * clientCpu / wall,
        100 * serverCpu / wall,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="file size in MiB")
    parser.add_argument("--rounds", type=int, default=3, help="best of N rounds")
    parser.add_argument(
        "--repeat", type=int, default=4, help="downloads by each client in a round"
    )
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "ROOT"), help="(internal)")
    arguments = parser.parse_args()
    if arguments.serve:
        kind, root = arguments.serve
        {"filesender": serveFileSender, "sendfile": serveSendfile}[kind](root)
        return

    size = arguments.size * 2**20
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still clean up
    base = tempfile.mkdtemp(prefix="getfile-bench-")
    root = os.path.join(base, "root")
    os.mkdir(root)
    servers: list[Server] = []
    try:
        block = os.urandom(2**20)
        with open(os.path.join(root, FILENAME), "wb") as stream:
            for _ in range(arguments.size):
                stream.write(block)
        netd = [
            os.path.join(BIN, "twistd"),
            "--nodaemon",
            "--pidfile=",
            "netd",
            "--services",
            "getfile",
            "--getfile",
            "tcp:0:interface=127.0.0.1",
            "--getfile-root",
            root,
        ]
        listening = r"getfile listening on TCP 127\.0\.0\.1:(\d+)"
        peer = [sys.executable, os.path.abspath(__file__), "--serve"]
        servers = [
            Server("netd", netd, listening, base),
            Server("netd-producer", [*netd, "--getfile-no-sendfile"], listening, base),
            Server("filesender", [*peer, "filesender", root], r"^(\d+)$", base),
            Server("sendfile-peer", [*peer, "sendfile", root], r"^(\d+)$", base),
        ]
        load = os.getloadavg()
        print(
            f"getfile: {arguments.size} MiB file, {arguments.repeat} downloads per "
            f"client, best of {arguments.rounds} rounds, "
            f"{os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        )
        results: dict[tuple[str, int], tuple[float, float, float]] = {}
        for clients in (1, 4):
            for _round in range(arguments.rounds):
                for server in servers:
                    result = measure(server, clients, size, arguments.repeat)
                    key = (server.name, clients)
                    if key not in results or result[0] > results[key][0]:
                        results[key] = result
        reference = {c: results[("sendfile-peer", c)][0] for c in (1, 4)}
        print(
            f"{'server':<14} {'clients':>7} {'MB/s':>8} {'vs sendfile':>11} "
            f"{'server CPU':>10} {'client CPU':>10}"
        )
        for clients in (1, 4):
            for server in servers:
                rate, clientCpu, serverCpu = results[(server.name, clients)]
                print(
                    f"{server.name:<14} {clients:>7} {rate:>8.0f} "
                    f"{rate / reference[clients]:>10.0%} "
                    f"{serverCpu:>9.0f}% {clientCpu:>9.0f}%"
                )
        print("(CPU: percent of one core over the round; clients summed)")
        print(
            "peak server memory (MiB): "
            + ", ".join(f"{s.name} {s.peakMemory():.0f}" for s in servers)
        )
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
