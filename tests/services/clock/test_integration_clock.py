"""
End-to-end: C{twistd -n netd} serving daytime, time and sntp, read by
clients no one here wrote (C{rdate}, C{ntplib}) and by C{netd-client}.

Real clocks are compared here, so every check allows a tolerance
(L{TOLERANCE}) far below any mistake of epoch, era or time zone.
"""

from __future__ import annotations

import calendar
import os
import re
import time
from typing import Any

import ntplib
from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import SkipTest, TestCase

from tests.common import (
    BIN,
    CollectUntilClosed,
    NetdProcess,
    projectEnvironment,
    runCommand,
    runNetd,
    systemCommand,
)
from tests.services.clock.test_clockclient import offsetIn

#: Seconds a real client's reading may differ from this process's clock.
TOLERANCE = 10.0

#: Every clock listener on a free loopback port.
ALL_CLOCKS = (
    "--services=daytime,time,sntp",
    "--daytime=tcp:0:interface=127.0.0.1",
    "--daytime=udp:0:interface=127.0.0.1",
    "--time=tcp:0:interface=127.0.0.1",
    "--time=udp:0:interface=127.0.0.1",
    "--sntp=udp:0:interface=127.0.0.1",
)


def rdate() -> str:
    """
    The C{rdate} command (C{make sysdeps} installs it); it lives in sbin.
    """
    return systemCommand("rdate")


def parseRdate(output: bytes) -> float:
    """
    The time C{rdate -p} printed with C{TZ=UTC}: C{Sun Nov 22 02:18:17 UTC 2026}.
    """
    text = output.decode("ascii").strip()
    return calendar.timegm(time.strptime(text, "%a %b %d %H:%M:%S UTC %Y"))


class ClockTestCase(TestCase):
    """
    Tests that compare real clocks.
    """

    def assertNear(self, seconds: float, expected: float, message: object = "") -> None:
        """
        Assert that two times differ by at most L{TOLERANCE}.
        """
        self.assertLessEqual(
            abs(seconds - expected), TOLERANCE, f"{seconds} is not {expected} {message}"
        )


class RealClientTests(ClockTestCase):
    """
    rdate and ntplib read the right time from netd.
    """

    def startNetd(self, *extra: str, **env: str) -> defer.Deferred[NetdProcess]:
        return runNetd(
            self,
            *ALL_CLOCKS,
            *extra,
            listeners=5,
            env=projectEnvironment(**env),
        )

    @defer.inlineCallbacks
    def runRdate(self, *arguments: str) -> defer.Generator:
        out, err, status = yield runCommand(
            rdate(), *arguments, env={"TZ": "UTC", "PATH": "/usr/bin:/bin"}
        )
        self.assertEqual(status, 0, err)
        return parseRdate(out)

    @defer.inlineCallbacks
    def test_rdate(self) -> defer.Generator:
        """
        C{rdate -p} prints the current date from netd's RFC 868 time over
        TCP, over UDP (C{-u}), and from its SNTP server (C{-n}).
        """
        netd = yield self.startNetd()
        for arguments in [
            ("-p", "-o", str(netd.port("time", "TCP"))),
            ("-p", "-u", "-o", str(netd.port("time", "UDP"))),
            ("-p", "-n", "-o", str(netd.port("sntp", "UDP"))),
        ]:
            printed = yield self.runRdate(*arguments, "127.0.0.1")
            self.assertNear(printed, time.time(), arguments)

    @defer.inlineCallbacks
    def test_ntplib(self) -> defer.Generator:
        """
        ntplib reads an offset near zero in every NTP version, with the
        version echoed and the default stratum and reference id.
        """
        netd = yield self.startNetd()
        port = netd.port("sntp", "UDP")
        for version in (1, 2, 3, 4):
            stats = yield threads.deferToThread(
                ntplib.NTPClient().request,
                "127.0.0.1",
                version=version,
                port=port,
                timeout=TOLERANCE,
            )
            self.assertNear(stats.offset, 0.0)
            self.assertGreaterEqual(stats.delay, 0.0)
            self.assertEqual(
                (stats.version, stats.mode, stats.leap, stats.stratum),
                (version, 4, 0, 10),
            )
            self.assertEqual(stats.ref_id.to_bytes(4, "big"), b"LOCL")

    @defer.inlineCallbacks
    def test_sntpOptions(self) -> defer.Generator:
        """
        C{--sntp-stratum} and C{--sntp-refid} are what clients read, and
        rdate still accepts the server.
        """
        netd = yield self.startNetd("--sntp-stratum=3", "--sntp-refid=192.0.2.9")
        port = netd.port("sntp", "UDP")
        stats = yield threads.deferToThread(
            ntplib.NTPClient().request, "127.0.0.1", version=4, port=port
        )
        self.assertEqual(stats.stratum, 3)
        self.assertEqual(
            ntplib.ref_id_to_text(stats.ref_id, stats.stratum), "192.0.2.9"
        )
        printed = yield self.runRdate("-p", "-n", "-o", str(port), "127.0.0.1")
        self.assertNear(printed, time.time())

    @defer.inlineCallbacks
    def test_ntplibKissOfDeath(self) -> defer.Generator:
        """
        Over its reply limit, an ntplib client (version 3 and 4) reads a
        Kiss-o'-Death: leap indicator 3, stratum 0, reference id C{RATE}.
        """
        netd = yield self.startNetd("--sntp-udp-rate=0.01")
        port = netd.port("sntp", "UDP")
        seen = []
        for version in (4, 3):
            stats = yield threads.deferToThread(
                ntplib.NTPClient().request,
                "127.0.0.1",
                version=version,
                port=port,
                timeout=TOLERANCE,
            )
            seen.append((stats.version, stats.mode, stats.leap, stats.stratum))
            if stats.stratum == 0:
                self.assertEqual(stats.ref_id.to_bytes(4, "big"), b"RATE")
        self.assertEqual(seen, [(4, 4, 0, 10), (3, 4, 3, 0)])

    @defer.inlineCallbacks
    def test_daytimeTimeZone(self) -> defer.Generator:
        """
        netd's daytime line is C{ctime} in the time zone its C{TZ} names
        (here 13 hours behind UTC), whatever this process's zone is.
        """
        netd = yield self.startNetd(TZ="XYZ+13")
        client = CollectUntilClosed(halfClose=False)
        yield connectProtocol(
            TCP4ClientEndpoint(_reactor, "127.0.0.1", netd.port("daytime")), client
        )
        line = yield client.closed
        self.assertRegex(
            line, rb"^[A-Z][a-z]{2} [A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d \d{4}\r\n$"
        )
        wall = calendar.timegm(
            time.strptime(line.decode().strip(), "%a %b %d %H:%M:%S %Y")
        )
        self.assertNear(wall + 13 * 3600, time.time())

    @defer.inlineCallbacks
    def test_daytimeISO(self) -> defer.Generator:
        """
        With C{--daytime-format iso}, daytime over TCP and UDP is RFC 3339
        UTC; netd-client reads it with an offset near zero.
        """
        netd = yield self.startNetd("--daytime-format=iso")
        for arguments in [(), ("--udp",)]:
            kind = "UDP" if arguments else "TCP"
            out, err, status = yield runCommand(
                os.path.join(BIN, "netd-client"),
                "daytime",
                "--port",
                str(netd.port("daytime", kind)),
                *arguments,
            )
            self.assertEqual(status, 0, err)
            line = out.decode().splitlines()[0]
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
            self.assertNear(
                calendar.timegm(time.strptime(line, "%Y-%m-%dT%H:%M:%SZ")), time.time()
            )
            self.assertNear(offsetIn(out.decode()), 0.0)


class ClientCommandTests(ClockTestCase):
    """
    C{netd-client daytime}, C{time} and C{sntp} against netd.
    """

    @defer.inlineCallbacks
    def test_everyClock(self) -> defer.Generator:
        """
        Each command prints the server's time and an offset near zero, over
        TCP and UDP where the service has both.
        """
        netd = yield runNetd(self, *ALL_CLOCKS, listeners=5)
        for service, kind, extra in [
            ("daytime", "TCP", ()),
            ("daytime", "UDP", ("--udp",)),
            ("time", "TCP", ()),
            ("time", "UDP", ("--udp",)),
            ("sntp", "UDP", ()),
        ]:
            out, err, status = yield runCommand(
                os.path.join(BIN, "netd-client"),
                service,
                "--port",
                str(netd.port(service, kind)),
                *extra,
            )
            self.assertEqual(status, 0, err)
            self.assertNear(offsetIn(out.decode()), 0.0)
            if service == "sntp":
                self.assertIn("stratum 10, reference LOCL, version 4", out.decode())

    @defer.inlineCallbacks
    def test_noAnswer(self) -> defer.Generator:
        """
        With nothing answering, C{netd-client sntp} says so in one line and
        exits 1.
        """
        netd = yield runNetd(self, *ALL_CLOCKS, listeners=5)
        out, err, status = yield runCommand(
            os.path.join(BIN, "netd-client"),
            "sntp",
            "--timeout=0.5",
            "--port",
            str(netd.port("time", "UDP")),
        )
        self.assertEqual(status, 1)
        self.assertEqual(
            err,
            b"netd-client: no answer from 127.0.0.1 UDP port %d in 0.5 s\n"
            % netd.port("time", "UDP"),
        )


class NTPsecClientTests(ClockTestCase):
    """
    NTPsec's C{ntpdig} and its C{ntpdate} (which always ask port 123) read
    netd's SNTP server, netd listening on 127.0.0.1:123 in a network
    namespace of its own (C{unshare --net}), so nothing else on this host
    is in the way or disturbed.
    """

    @defer.inlineCallbacks
    def startNetd(self, *extra: str) -> defer.Generator:
        _out, err, status = yield runCommand(
            systemCommand("unshare"), "--net", "true", env={}
        )
        if status != 0:
            raise SkipTest(
                "NO NTPDIG TEST: cannot make a network namespace for port 123 "
                f"(CI runs as root): {err.decode(errors='replace').strip()}"
            )
        netd = yield runNetd(
            self,
            "--services=sntp",
            "--sntp=udp:123:interface=127.0.0.1",
            *extra,
            launcher=(
                systemCommand("unshare"),
                "--net",
                "/bin/sh",
                "-c",
                f'{systemCommand("ip")} link set lo up && exec "$@"',
                "netns",
            ),
        )
        return netd

    def inNamespace(self, netd: NetdProcess, *argv: str) -> Any:
        """
        Run a command in netd's network namespace.
        """
        return runCommand(
            systemCommand("nsenter"),
            f"--net=/proc/{netd.transport.pid}/ns/net",
            *argv,
            env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
        )

    @defer.inlineCallbacks
    def test_ntpdigAndNtpdate(self) -> defer.Generator:
        """
        C{ntpdig} and C{ntpdate -q} print netd's stratum and an offset
        near zero.
        """
        netd = yield self.startNetd()
        for argv in [
            (systemCommand("ntpdig"), "-t", "5"),
            (systemCommand("ntpdate"), "-q"),
        ]:
            out, err, status = yield self.inNamespace(netd, *argv, "127.0.0.1")
            self.assertEqual(status, 0, (argv, out, err))
            match = re.search(rb" ([-+]\d+\.\d+) \+/- \S+ 127\.0\.0\.1 s10 ", out)
            self.assertIsNotNone(match, (argv, out, err))
            assert match is not None
            self.assertNear(float(match.group(1)), 0.0)

    @defer.inlineCallbacks
    def test_ntpdigKissOfDeath(self) -> defer.Generator:
        """
        Over its reply limit, C{ntpdig} gets a Kiss-o'-Death and says so.
        """
        netd = yield self.startNetd("--sntp-udp-rate=0.01")
        out, err, status = yield self.inNamespace(
            netd, systemCommand("ntpdig"), "-t", "5", "127.0.0.1"
        )
        self.assertEqual(status, 0, (out, err))
        out, err, status = yield self.inNamespace(
            netd, systemCommand("ntpdig"), "-t", "5", "127.0.0.1"
        )
        self.assertEqual(status, 1)
        self.assertIn(b"stratum 0, probable KOD packet", out + err)
