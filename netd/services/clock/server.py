# -*- test-case-name: tests.services.clock.test_clock -*-
"""
The clock services: daytime (RFC 867) and time (RFC 868) over streams and
UDP, and an SNTP server (RFC 4330 server mode) over UDP.

Twisted's C{twisted.protocols.wire.Daytime} fails on Python 3 and its
C{Time} sends seconds since 1970, which an RFC 868 client reads as a date
in 2106; these are written anew. Every reading of the time comes from the
injected clock (an L{IReactorTime}), so the formats are tested at any date.
"""

from __future__ import annotations

import ipaddress
import math
import struct
import time
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.protocol import Factory, Protocol

from netd.datagram import (
    REFLECTION_PORTS,
    GuardedDatagramProtocol,
    PerSourceRateLimiter,
)

#: Seconds from 1900-01-01T00:00:00Z, the epoch of RFC 868 and NTP, to 1970.
EPOCH_1900 = 2208988800

#: The values of C{--daytime-format}.
DAYTIME_FORMATS = ("ctime", "iso")

#: An SNTP packet without extension fields or authenticator.
NTP_PACKET = struct.Struct("!BBbbII4sQQQQ")
NTP_PACKET_SIZE = NTP_PACKET.size

NTP_MODE_SYMMETRIC_ACTIVE = 1
NTP_MODE_SYMMETRIC_PASSIVE = 2
NTP_MODE_CLIENT = 3
NTP_MODE_SERVER = 4
NTP_VERSIONS = range(1, 5)

#: The reply's mode for each request mode answered (RFC 4330 section 5):
#: a client gets a server reply, a symmetric-active peer a passive one.
NTP_REPLY_MODES = {
    NTP_MODE_CLIENT: NTP_MODE_SERVER,
    NTP_MODE_SYMMETRIC_ACTIVE: NTP_MODE_SYMMETRIC_PASSIVE,
}

#: Leap indicator 3: the clock is not synchronised (a Kiss-o'-Death's).
NTP_LEAP_UNSYNCHRONISED = 3

#: Kiss-o'-Death replies a second to any one source over its reply limit,
#: in bursts of one: a KoD is as big as the request, and this keeps it from
#: being a reflector of its own (RFC 5905 section 7.4).
KOD_RATE = 0.5

#: Stratum and reference id of an undisciplined local clock: what ntpd's
#: local clock driver announces (chronyd's C{local stratum 10} announces
#: 127.127.1.1 as its reference id instead).
DEFAULT_STRATUM = 10
DEFAULT_REFID = "LOCL"

#: log2 of the clock's precision in seconds: about a microsecond, what a
#: Python process can read the system clock to.
DEFAULT_PRECISION = -20


def daytimeLine(seconds: float, style: str = "ctime") -> bytes:
    """
    The RFC 867 daytime line for a moment.

    @param seconds: seconds since 1970 (an L{IReactorTime} reading).
    @param style: C{"ctime"} for C{time.ctime()} in the server's local time
        zone (the C{TZ} environment variable honoured), C{"iso"} for RFC 3339
        in UTC.
    @return: the line, ending with CR LF.
    """
    if style == "iso":
        text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.floor(seconds)))
    elif style == "ctime":
        text = time.ctime(math.floor(seconds))
    else:
        raise ValueError(
            f"daytime format must be one of {DAYTIME_FORMATS}, not {style!r}"
        )
    return text.encode("ascii") + b"\r\n"


def rfc868Time(seconds: float) -> bytes:
    """
    The RFC 868 time for a moment: 4 bytes, big-endian unsigned, seconds since
    1900 modulo 2**32 (so 2036-02-07T06:28:16Z is 0 again).

    @param seconds: seconds since 1970 (an L{IReactorTime} reading).
    """
    return struct.pack("!I", (math.floor(seconds) + EPOCH_1900) % 2**32)


def ntpTimestamp(seconds: float) -> int:
    """
    A moment as a 64-bit NTP timestamp: seconds since 1900 modulo 2**32 in
    the high 32 bits, the fraction of a second in units of 2**-32 below.

    @param seconds: seconds since 1970 (an L{IReactorTime} reading).
    """
    whole = math.floor(seconds)
    # seconds - whole is exact and below 1, so the fraction is below 2**32.
    fraction = int((seconds - whole) * 2**32)
    return ((whole + EPOCH_1900) % 2**32) << 32 | fraction


def _nearestEra(secondsIn1900Era: float, near: float) -> float:
    """
    Seconds since 1970 for a count of seconds since 1900 modulo 2**32: the
    era (a multiple of 2**32 seconds) that puts it nearest to C{near}.
    """
    base = secondsIn1900Era - EPOCH_1900
    return base + round((near - base) / 2**32) * 2**32


def unixFromRFC868(value: int, near: float) -> int:
    """
    Read an RFC 868 time, across the 2036 wrap.

    @param value: the 32-bit unsigned number a server sent.
    @param near: seconds since 1970 that the time is known to be near (the
        local clock): decides which 136-year era C{value} is in.
    @return: seconds since 1970.
    """
    return int(_nearestEra(value, near))


def unixFromNTPTimestamp(value: int, near: float) -> float:
    """
    Read a 64-bit NTP timestamp, across the 2036 wrap.

    @param value: the timestamp (see L{ntpTimestamp}).
    @param near: as for L{unixFromRFC868}.
    @return: seconds since 1970.
    """
    return _nearestEra(value >> 32, near) + (value & 0xFFFFFFFF) / 2**32


def parseReferenceId(text: str) -> bytes:
    """
    An SNTP reference identifier from its text form.

    @param text: an IPv4 address (a stratum 2+ server's upstream), or one to
        four ASCII letters and digits (a stratum 1 source such as C{GPS}, or
        C{LOCL}).
    @return: the four bytes of the field.
    @raise ValueError: quoting C{text} when it is neither.
    """
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        pass
    if not (1 <= len(text) <= 4 and text.isascii() and text.isalnum()):
        raise ValueError(
            f"a reference id is an IPv4 address or 1-4 ASCII letters "
            f"and digits, not {text!r}"
        )
    return text.encode("ascii").ljust(4, b"\0")


class Announcer(TypingProtocol):
    """
    Anything that says what a clock service sends: its one message.
    """

    def announcement(self) -> bytes:
        """
        What to send to one client now.
        """


class DaytimeAnnouncer:
    """
    The daytime service's message: the time as a line of text.
    """

    def __init__(self, clock: Any, style: str = "ctime") -> None:
        """
        @param clock: an L{IReactorTime}.
        @param style: C{"ctime"} or C{"iso"}, see L{daytimeLine}.
        """
        if style not in DAYTIME_FORMATS:
            raise ValueError(
                f"daytime format must be one of {DAYTIME_FORMATS}, not {style!r}"
            )
        self.clock = clock
        self.style = style

    def announcement(self) -> bytes:
        return daytimeLine(self.clock.seconds(), self.style)


class TimeAnnouncer:
    """
    The time service's message: the RFC 868 time, 4 bytes.
    """

    def __init__(self, clock: Any) -> None:
        """
        @param clock: an L{IReactorTime}.
        """
        self.clock = clock

    def announcement(self) -> bytes:
        return rfc868Time(self.clock.seconds())


class AnnouncingProtocol(Protocol):
    """
    Send the factory's announcement on connect, then close; anything the
    client sends is ignored.
    """

    factory: AnnouncingFactory

    def connectionMade(self) -> None:
        self.transport.write(self.factory.announcer.announcement())
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """
        RFC 867 and 868 servers ignore what clients send.
        """


class AnnouncingFactory(Factory):
    """
    Make L{AnnouncingProtocol}s for one service (daytime or time).

    @ivar announcer: the L{Announcer} that says what to send.
    """

    protocol = AnnouncingProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, announcer: Announcer) -> None:
        self.announcer = announcer


class AnnouncingDatagramProtocol(GuardedDatagramProtocol):
    """
    Answer any datagram, empty or not, with the announcement (RFC 867 and
    RFC 868 over UDP ignore the datagram's content).
    """

    def __init__(
        self, serviceName: str, announcer: Announcer, limiter: PerSourceRateLimiter
    ) -> None:
        """
        @param serviceName: C{"daytime"} or C{"time"}, for logs.
        @param announcer: the L{Announcer} that says what to send.
        @param limiter: the per-source reply limit.
        """
        super().__init__(serviceName, limiter)
        self.announcer = announcer

    def reply(self, data: bytes, address: tuple[str, int]) -> bytes:
        return self.announcer.announcement()


class SNTPServerProtocol(GuardedDatagramProtocol):
    """
    An SNTP server (RFC 4330 section 5, unicast server mode) answering from
    the clock it is given.

    Client (3) and symmetric-active (1) requests of versions 1 to 4 and at
    least 48 bytes are answered, in server (4) and symmetric-passive (2)
    mode and the request's version; anything else (a server or passive
    reply, broadcast, control or private messages, junk) is ignored, so two
    servers never answer each other. Requests from port 123 are answered,
    since NTP daemons send from it; replies are still limited per source.
    A source over its limit gets a Kiss-o'-Death C{RATE} (RFC 4330 section
    8), itself limited to L{KOD_RATE} a second per source.

    @ivar kisses: the Kiss-o'-Death replies sent.
    """

    reflectionPorts = REFLECTION_PORTS - {123}

    def __init__(
        self,
        clock: Any,
        limiter: PerSourceRateLimiter,
        stratum: int = DEFAULT_STRATUM,
        referenceId: bytes = b"LOCL",
        precision: int = DEFAULT_PRECISION,
        kissLimiter: PerSourceRateLimiter | None = None,
    ) -> None:
        """
        @param clock: an L{IReactorTime}, the time served.
        @param limiter: the per-source reply limit.
        @param stratum: 1 to 15, announced in every reply.
        @param referenceId: 4 bytes (see L{parseReferenceId}).
        @param precision: log2 of the clock's precision in seconds.
        @param kissLimiter: the per-source limit of Kiss-o'-Death replies;
            L{KOD_RATE} by default.
        """
        super().__init__("sntp", limiter)
        if not 1 <= stratum <= 15:
            raise ValueError(f"stratum must be 1-15, not {stratum!r}")
        if len(referenceId) != 4:
            raise ValueError(f"a reference id is 4 bytes, not {referenceId!r}")
        self.clock = clock
        self.stratum = stratum
        self.referenceId = referenceId
        self.precision = precision
        if kissLimiter is None:
            kissLimiter = PerSourceRateLimiter(clock)
            kissLimiter.setRate(KOD_RATE)
        self.kissLimiter = kissLimiter
        self.kisses = 0

    def _request(self, data: bytes) -> tuple[int, int, int, int] | None:
        """
        The version, reply mode, poll and transmit timestamp of a request
        that is answered, or L{None}.
        """
        if len(data) < NTP_PACKET_SIZE:
            return None
        first, _stratum, poll = struct.unpack_from("!BBb", data)
        version, mode = (first >> 3) & 0x7, first & 0x7
        if mode not in NTP_REPLY_MODES or version not in NTP_VERSIONS:
            return None
        (clientTransmit,) = struct.unpack_from("!Q", data, 40)
        return version, NTP_REPLY_MODES[mode], poll, clientTransmit

    def reply(self, data: bytes, address: tuple[str, int]) -> bytes | None:
        received = self.clock.seconds()
        request = self._request(data)
        if request is None:
            return None
        version, mode, poll, clientTransmit = request
        return NTP_PACKET.pack(
            (0 << 6) | (version << 3) | mode,
            self.stratum,
            poll,
            self.precision,
            0,  # root delay: the system clock is its own reference
            0,  # root dispersion: netd cannot know the clock's error
            self.referenceId,
            ntpTimestamp(math.floor(received)),  # the clock was last read: now
            clientTransmit,
            ntpTimestamp(received),
            ntpTimestamp(self.clock.seconds()),
        )

    def limitedReply(self, data: bytes, address: tuple[str, int]) -> bytes | None:
        """
        A Kiss-o'-Death C{RATE} for a request over the reply limit: leap
        indicator 3, stratum 0, the kiss code as reference id, and no time
        at all (every timestamp is the request's transmit time, as ntpd
        sends), so the client learns only that it must slow down.
        """
        request = self._request(data)
        if request is None or not self.kissLimiter.allow(address[0]):
            return None
        version, mode, poll, clientTransmit = request
        self.kisses += 1
        return NTP_PACKET.pack(
            (NTP_LEAP_UNSYNCHRONISED << 6) | (version << 3) | mode,
            0,  # stratum 0: a Kiss-o'-Death
            poll,
            self.precision,
            0,
            0,
            b"RATE",
            0,
            clientTransmit,
            clientTransmit,
            clientTransmit,
        )
