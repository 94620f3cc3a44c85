# -*- test-case-name: tests.services.objects.test_objects -*-
"""
The wire of C{multiprocessing.connection}, as the standard library speaks
it: length-prefixed frames, and the mutual HMAC handshake.

Wire format (the standard library's C{Connection.send_bytes}): each frame
is a 4-byte big-endian signed length and that many bytes; a length of C{-1}
is followed by an 8-byte unsigned length (frames over 2 GiB).

With an authkey, the server runs C{deliver_challenge} then
C{answer_challenge} exactly as C{Listener.accept} does in Python 3.12 and
3.13: its challenge is C{#CHALLENGE#{sha256}} + 40 random bytes, and it
accepts both the C{{digest}}-prefixed responses of 3.12+ and the raw 16-byte
HMAC-MD5 of Python 3.11 and older; it answers a client's legacy 20-byte
challenge with raw HMAC-MD5 and a prefixed one with that digest. Handshake
frames are capped at 256 bytes, as the standard library caps them.
"""

from __future__ import annotations

import hmac
import os
import struct
from typing import Any

from twisted.internet.protocol import Protocol

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
HANDSHAKE_MAX_BYTES = 256

CHALLENGE = b"#CHALLENGE#"
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"
MESSAGE_LENGTH = 40
ALLOWED_DIGESTS = frozenset({b"md5", b"sha256", b"sha384", b"sha3_256", b"sha3_384"})
_MAX_DIGEST_LEN = max(len(name) for name in ALLOWED_DIGESTS)
_MD5ONLY_MESSAGE_LENGTH = 20
_MD5_DIGEST_LEN = 16
_LEGACY_LENGTHS = (_MD5ONLY_MESSAGE_LENGTH, _MD5_DIGEST_LEN)


class AuthenticationError(Exception):
    """
    A peer failed the C{multiprocessing.connection} handshake.
    """


# The handshake, as Lib/multiprocessing/connection.py (3.12, 3.13) does it.


def digestNameAndPayload(message: bytes) -> tuple[str, bytes]:
    """
    Split a challenge or response into its digest name and payload, as the
    standard library's C{_get_digest_name_and_payload} does.

    @return: C{("", message)} for the legacy (MD5, unprefixed) form.
    @raise AuthenticationError: for a malformed or unsupported prefix.
    """
    if len(message) in _LEGACY_LENGTHS:
        return "", message
    if message.startswith(b"{"):
        curly = message.find(b"}", 1, _MAX_DIGEST_LEN + 2)
        if curly > 0 and message[1:curly] in ALLOWED_DIGESTS:
            return message[1:curly].decode("ascii"), message[curly + 1 :]
    raise AuthenticationError(
        "unsupported message length, missing digest prefix, or unsupported digest"
    )


def createResponse(authkey: bytes, message: bytes) -> bytes:
    """
    The answer to a challenge C{message} (without C{#CHALLENGE#}): raw
    HMAC-MD5 for a legacy challenge, else C{{digest}} + HMAC of that digest.
    The MAC covers the whole message, prefix included.
    """
    name = digestNameAndPayload(message)[0]
    if not name:
        return hmac.new(authkey, message, "md5").digest()
    return b"{%s}%s" % (name.encode("ascii"), hmac.new(authkey, message, name).digest())


def verifyResponse(authkey: bytes, message: bytes, response: bytes) -> None:
    """
    Check a peer's C{response} to our challenge C{message}, as the standard
    library's C{_verify_challenge}: an unprefixed 16-byte response is
    HMAC-MD5 (Python 3.11 and older); a prefixed one names its digest.

    @raise AuthenticationError: when it does not match.
    """
    name, mac = digestNameAndPayload(response)
    expected = hmac.new(authkey, message, name or "md5").digest()
    if len(expected) != len(mac) or not hmac.compare_digest(expected, mac):
        raise AuthenticationError("digest received was wrong")


def newChallenge(digestName: str = "sha256") -> bytes:
    """
    A fresh challenge message (without C{#CHALLENGE#}):
    C{{sha256}} + 40 random bytes, as Python 3.12+ servers send.
    """
    return b"{%s}%s" % (digestName.encode("ascii"), os.urandom(MESSAGE_LENGTH))


def encodeFrameHeader(length: int) -> bytes:
    """
    The length header of a frame, in C{Connection._send_bytes}'s form.
    """
    if length > 0x7FFFFFFF:
        return struct.pack("!iQ", -1, length)
    return struct.pack("!i", length)


# Framing.


class FrameReceiver(Protocol):
    """
    Split a stream into C{multiprocessing.connection} frames, however its
    bytes are chunked.

    @ivar maxFrameLength: the largest frame accepted now; a longer header
        calls L{frameTooLong} before any of its body is read.
    """

    maxFrameLength = HANDSHAKE_MAX_BYTES
    transport: Any

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._holding = False
        self._closing = False
        self._delivering = False
        self._admitted = False
        self._skipping = 0

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        self._deliverFrames()

    def _deliverFrames(self) -> None:
        if self._delivering:
            return
        self._delivering = True
        buffer = self._buffer
        offset = 0
        try:
            while not self._holding and not self._closing:
                if self._skipping:
                    skipped = min(self._skipping, len(buffer) - offset)
                    offset += skipped
                    self._skipping -= skipped
                    if self._skipping:
                        break
                available = len(buffer) - offset
                if available < 4:
                    break
                (length,) = struct.unpack_from("!i", buffer, offset)
                header = 4
                if length == -1:
                    if available < 12:
                        break
                    (length,) = struct.unpack_from("!Q", buffer, offset + 4)
                    header = 12
                elif length < 0:
                    self.badFrame(f"negative frame length {length}")
                    return
                if length > self.maxFrameLength:
                    self.badFrame(
                        f"frame of {length} bytes over the limit of "
                        f"{self.maxFrameLength}"
                    )
                    return
                if not self._admitted:
                    if not self.admitFrame(length):
                        offset += header
                        self._skipping = length
                        continue
                    self._admitted = True
                if available < header + length:
                    break
                frame = bytes(buffer[offset + header : offset + header + length])
                offset += header + length
                self._admitted = False
                self.frameReceived(frame)
        finally:
            del buffer[:offset]
            self._delivering = False

    def holdFrames(self, holding: bool) -> None:
        """
        Stop (C{True}) or restart (C{False}) delivering frames; bytes
        received meanwhile wait in the buffer.
        """
        self._holding = holding
        if not holding:
            self._deliverFrames()

    def sendFrame(self, data: bytes) -> None:
        """
        Send one frame.
        """
        self.transport.write(encodeFrameHeader(len(data)) + data)

    def frameReceived(self, frame: bytes) -> None:
        """
        One whole frame arrived.
        """
        raise NotImplementedError

    def admitFrame(self, length: int) -> bool:
        """
        A frame of C{length} bytes (within L{maxFrameLength}) begins: whether
        to buffer it. When not, its bytes are skipped as they arrive, and
        the next frame read after them. Called once per frame, before any of
        its body is buffered; admits every frame here.
        """
        return True

    def badFrame(self, reason: str) -> None:
        """
        A frame header was negative or over the limit: stop reading and close.
        """
        self._closing = True
        self.transport.loseConnection()
