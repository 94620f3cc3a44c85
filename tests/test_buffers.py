"""
Tests for L{netd.buffers}, and netd's C{--max-buffered} option.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from netd.buffers import DAEMON, DEFAULT_MAX_BUFFERED, BufferBudget
from netd.services.echo.plugin import echo
from netd.tap import Options, makeService
from tests.common import MemoryReactorUDP


class BufferBudgetTests(SynchronousTestCase):
    """
    L{BufferBudget} counts bytes per owner against a limit.
    """

    def test_reserveWithinLimit(self) -> None:
        """
        Reservations pass while they fit, and are refused (counting nothing,
        logging at most 10 lines a second) when they would not.
        """
        clock = Clock()
        budget = BufferBudget(100, clock)
        self.assertTrue(budget.reserve("a", 60))
        self.assertTrue(budget.reserve("b", 40))
        with capturedLogs() as events:
            for _ in range(12):
                self.assertFalse(budget.reserve("c", 1, "a request from C"))
        self.assertEqual((budget.used, budget.held("c"), budget.refusals), (100, 0, 12))
        self.assertEqual(len(events), 10)
        self.assertIn("a request from C", events[0]["what"])
        budget.release("a", 60)
        self.assertTrue(budget.reserve("c", 50))

    def test_chargeAlways(self) -> None:
        """
        Charges pass whatever the limit; releasing more than is held
        releases what is held.
        """
        budget = BufferBudget(10)
        budget.charge("a", 25)
        self.assertEqual(budget.used, 25)
        budget.release("a", 100)
        self.assertEqual((budget.used, budget.held("a")), (0, 0))

    def test_greediestAndReleaseAll(self) -> None:
        budget = BufferBudget(1000)
        self.assertIsNone(budget.greediest())
        budget.charge("a", 10)
        budget.charge("b", 30)
        budget.charge("a", 5)
        self.assertEqual(budget.greediest(), "b")
        budget.releaseAll("b")
        self.assertEqual((budget.used, budget.greediest()), (15, "a"))


class MaxBufferedOptionTests(SynchronousTestCase):
    """
    C{--max-buffered}: global, from the command line or the config file,
    applied to netd's own budget.
    """

    def parse(self, *argv: str) -> Options:
        options = Options(services=[echo])
        options.parseOptions(list(argv))
        return options

    def test_default(self) -> None:
        self.assertEqual(self.parse()["max-buffered"], DEFAULT_MAX_BUFFERED)
        self.assertEqual(DEFAULT_MAX_BUFFERED, 256 * 1024 * 1024)

    def test_configFile(self) -> None:
        path = self.mktemp()
        with open(path, "w") as stream:
            stream.write("max-buffered = 2097152\n")
        self.assertEqual(self.parse("--config", path)["max-buffered"], 2097152)
        options = self.parse("--config", path, "--max-buffered=3145728")
        self.assertEqual(options["max-buffered"], 3145728)

    def test_tooSmall(self) -> None:
        error = self.assertRaises(UsageError, self.parse, "--max-buffered=1000")
        self.assertIn("1000", str(error))

    def test_applied(self) -> None:
        """
        L{makeService} sets netd's budget, and a reload may change it.
        """
        self.addCleanup(setattr, DAEMON, "limit", DAEMON.limit)
        options = self.parse("--max-buffered=5000000", "--echo=tcp:0")
        service = makeService(options, reactor=MemoryReactorUDP())
        self.assertEqual(DAEMON.limit, 5000000)
        service.liveSettings["max-buffered"](6000000)
        self.assertEqual(DAEMON.limit, 6000000)
