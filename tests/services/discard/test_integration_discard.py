"""
End-to-end: C{twistd -n netd --services discard} side by side with
xinetd's own discard (C{make sysdeps} installs xinetd).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from tests.common import (
    CollectUntilClosed,
    freePort,
    runNetd,
    runXinetd,
    waitForOutput,
)


class XinetdDiscardTests(TestCase):
    """
    netd's discard and xinetd's over TCP.
    """

    @defer.inlineCallbacks
    def test_readsAndDrops(self) -> Any:
        """
        Both read 2 MiB and a half-close, send nothing back and close;
        netd logs the bytes it read.
        """
        xinetdPort = freePort()
        yield runXinetd(self, {"discard-stream": xinetdPort})
        netd = yield runNetd(
            self,
            "--services=discard",
            "--discard=tcp:0:interface=127.0.0.1",
            "--discard=udp:0:interface=127.0.0.1",
            "--discard-read-rate=4194304",
            listeners=2,
        )
        for port in (netd.port("discard"), xinetdPort):
            client = CollectUntilClosed(send=b"\0" * (2 << 20))
            yield connectProtocol(
                TCP4ClientEndpoint(_reactor, "127.0.0.1", port), client
            )
            received = yield client.closed
            self.assertEqual(received, b"")
        output = yield waitForOutput(netd, "bytes in")
        self.assertIn(f"{2 << 20} bytes in, 0 bytes out", output)
