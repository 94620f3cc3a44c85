"""
Quote of the Day (RFC 865): on connect, one quote and close; over UDP, one
quote for any datagram.

The RFC asks for a message of at most 512 characters; longer quotes are
refused when the quotes are read, not cut when sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.protocol import Factory, Protocol

from netd.datagram import GuardedDatagramProtocol, PerSourceRateLimiter

#: RFC 865: "the quote may be just one or up to several lines, but it should
#: be less than 512 characters".
MAX_QUOTE = 511

BUILTIN_QUOTES = (
    "The best way to predict the future is to invent it. - Alan Kay",
    "Simplicity is prerequisite for reliability. - Edsger W. Dijkstra",
    "Be conservative in what you do, be liberal in what you accept from "
    "others. - RFC 793",
)


def parseQuotes(text: str) -> list[str]:
    """
    Read quotes in the C{fortune} format: quotes separated by lines holding
    only C{%}; a text without such lines is one quote per line.

    @raise ValueError: when there is no quote, or one is longer than
        L{MAX_QUOTE} characters.
    """
    lines = text.splitlines()
    if "%" in (line.strip() for line in lines):
        quotes, current = [], []
        for line in lines + ["%"]:
            if line.strip() == "%":
                if any(part.strip() for part in current):
                    quotes.append("\n".join(current).strip("\n"))
                current = []
            else:
                current.append(line)
    else:
        quotes = [line.strip() for line in lines if line.strip()]
    if not quotes:
        raise ValueError("no quotes in it")
    for number, quote in enumerate(quotes, 1):
        if len(quote) > MAX_QUOTE:
            raise ValueError(
                f"quote {number} has {len(quote)} characters; RFC 865 allows "
                f"{MAX_QUOTE}"
            )
    return quotes


def encodeQuote(quote: str) -> bytes:
    """
    A quote as sent: UTF-8, lines ending with CR LF.
    """
    return "\r\n".join(quote.splitlines()).encode("utf-8") + b"\r\n"


class Quotes:
    """
    The quotes served, in turn: each reply is the next one.
    """

    def __init__(self, quotes: Sequence[str]) -> None:
        self.replies = [encodeQuote(quote) for quote in quotes]
        self._next = 0

    def next(self) -> bytes:
        """
        The next quote, encoded.
        """
        reply = self.replies[self._next % len(self.replies)]
        self._next += 1
        return reply


class QuoteProtocol(Protocol):
    """
    Send one quote on connect, then close (RFC 865 over TCP).
    """

    factory: QuoteFactory

    def connectionMade(self) -> None:
        self.transport.write(self.factory.quotes.next())
        self.transport.loseConnection()


class QuoteFactory(Factory):
    """
    Build L{QuoteProtocol}s that share one L{Quotes}.
    """

    protocol = QuoteProtocol
    noisy = False

    def __init__(self, quotes: Quotes) -> None:
        self.quotes = quotes


class QuoteDatagramProtocol(GuardedDatagramProtocol):
    """
    Answer any datagram with a quote (RFC 865 over UDP), behind netd's
    reflection-port guard and per-source rate limit.
    """

    def __init__(self, quotes: Quotes, limiter: PerSourceRateLimiter) -> None:
        super().__init__("qotd", limiter)
        self.quotes = quotes

    def reply(self, data: bytes, address: Any) -> bytes:
        return self.quotes.next()
