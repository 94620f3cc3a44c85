"""
The README's TLS recipe works as written: its lines, run one by one with
bash in an empty directory, make certificates that netd serves with and that
C{netd-client} and C{openssl s_client} accept, mutual TLS included.
"""

from __future__ import annotations

import os
import re

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.common import BIN, PROJECT, opensslClient, runCommand, runNetd

#: The comment that marks the recipe's block in README.md.
MARKER = "<!-- tls-recipe"


def recipeLines(readme: str) -> list[str]:
    """
    The commands of the fenced block that follows the recipe's marker: one
    a line, blank lines and comments left out.

    @raise ValueError: when there is no such block.
    """
    match = re.search(
        re.escape(MARKER) + r"[^\n]*-->\n```[a-z]*\n(.*?)\n```", readme, re.S
    )
    if match is None:
        raise ValueError(f"no fenced block after {MARKER!r} in README.md")
    return [
        line
        for line in match.group(1).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def readme() -> str:
    with open(os.path.join(PROJECT, "README.md"), encoding="utf-8") as text:
        return text.read()


class RecipeExtractionTests(SynchronousTestCase):
    """
    L{recipeLines} finds the recipe's commands.
    """

    def test_lines(self) -> None:
        """
        The lines of the block after the marker, without blank lines and
        comments; no line continues on the next (each runs alone).
        """
        text = f"x\n{MARKER} -->\n```sh\n# a comment\none\n\ntwo 'a b'\n```\nafter\n"
        self.assertEqual(recipeLines(text), ["one", "two 'a b'"])
        self.assertRaises(ValueError, recipeLines, "no recipe here")
        lines = recipeLines(readme())
        self.assertGreaterEqual(len(lines), 3)
        for line in lines:
            self.assertFalse(line.endswith("\\"), line)


class RecipeTests(TestCase):
    """
    The recipe, run, gives certificates for a mutual-TLS echo.
    """

    @defer.inlineCallbacks
    def test_recipe(self) -> defer.Generator:
        """
        Each line of the recipe succeeds; netd serves echo over
        C{tls:0:privateKey=server.key:certKey=server.pem:clientCA=ca.pem},
        and C{netd-client echo --tls} (checking the name C{localhost}) and
        C{openssl s_client} present the client certificate and get the echo.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        for line in recipeLines(readme()):
            out, err, code = yield runCommand(
                "bash", "-euo", "pipefail", "-c", line, path=directory
            )
            self.assertEqual(code, 0, f"{line}\n{(out + err).decode()}")
        netd = yield runNetd(
            self,
            "--services",
            "echo",
            "--echo",
            "tls:0:privateKey=server.key:certKey=server.pem:clientCA=ca.pem"
            ":interface=127.0.0.1",
            "--idle-timeout",
            "1",  # s_client waits for the server to close
            path=directory,
        )
        port = str(netd.port("echo"))
        out, err, code = yield runCommand(
            os.path.join(BIN, "netd-client"),
            "echo", "--tls", "--ca", "ca.pem", "--cert", "client.pem",
            "--key", "client.key", "--host", "localhost", "--port", port,
            "hello",
            path=directory,
        )  # fmt: skip
        self.assertEqual((out, code), (b"Client received: b'Echo=>hello'\n", 0), err)
        self.assertIn(b"(CN=alice,O=example)", netd.output)
        files = {name: os.path.join(directory, name) for name in os.listdir(directory)}
        out, err, code = yield opensslClient(
            int(port),
            "-CAfile", files["ca.pem"], "-cert", files["client.pem"],
            "-key", files["client.key"], "-verify_return_error",
            "-verify_hostname", "localhost",
            stdin=b"hello", host="localhost",
        )  # fmt: skip
        self.assertIn(b"Echo=>hello", out, err)
        self.assertIn(b"Verify return code: 0 (ok)", out, err)
