"""
Tests for the objects service's wiring (L{netd.services.objects.plugin}), the
repeatable per-service options it brought to L{netd.tap}, and
C{netd-client objects}'s options.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.testing import MemoryReactor
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from netd.listeners import StartupError
from netd.services.echo.plugin import echo
from netd.services.objects.client import ObjectsCommand
from netd.services.objects.plugin import (
    AUTHKEY_VARIABLE,
    isPrivateEndpoint,
    objects,
    readAuthkey,
)
from netd.services.objects.server import ObjectsFactory
from netd.tap import Options, makeService


def double(request: Any) -> Any:
    """
    A handler named by C{--objects-handler MODULE:CALLABLE}.
    """
    return request * 2


class Point:
    """
    A class the operator allows with C{--objects-allow}.
    """


class ObjectsOptionsTests(SynchronousTestCase):
    """
    C{twistd netd} options for the objects service.
    """

    def setUp(self) -> None:
        saved = os.environ.pop(AUTHKEY_VARIABLE, None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, AUTHKEY_VARIABLE, saved)

    def parse(self, *arguments: str) -> Options:
        options = Options([echo, objects])
        options.parseOptions(["--services=objects", *arguments])
        return options

    def test_defaults(self) -> None:
        """
        By default objects listens on 127.0.0.1:50016 with the echo handler,
        an 8 MiB frame limit, no extra allowed names, and two workers
        giving each request 5 seconds and 512 MiB.
        """
        options = self.parse()
        self.assertEqual(
            options["endpoints"]["objects"], ["tcp:50016:interface=127.0.0.1"]
        )
        mine = options["serviceOptions"]["objects"]
        self.assertEqual(
            (
                mine["handler"],
                mine["max-bytes"],
                mine["allow"],
                mine["workers"],
                mine["timeout"],
                mine["worker-memory"],
                mine["max-reply-bytes"],
            ),
            ("echo", 8 * 1024 * 1024, [], 2, 5.0, 512 * 1024 * 1024, 16 * 1024 * 1024),
        )

    def test_allowRepeatable(self) -> None:
        """
        C{--objects-allow} collects every value given.
        """
        options = self.parse(
            "--objects-allow=a:B", "--objects-allow", "c.d:E.F", "--objects-max-bytes=9"
        )
        mine = options["serviceOptions"]["objects"]
        self.assertEqual((mine["allow"], mine["max-bytes"]), (["a:B", "c.d:E.F"], 9))

    def test_allowFromConfig(self) -> None:
        """
        The config file gives C{allow} as a list of strings; the command line
        replaces it.
        """
        path = self.mktemp()
        with open(path, "w") as stream:
            stream.write('[objects]\nallow = ["m:One", "m:Two"]\n')
        mine = self.parse("--config", path)["serviceOptions"]["objects"]
        self.assertEqual(mine["allow"], ["m:One", "m:Two"])
        mine = self.parse("--config", path, "--objects-allow=x:Y")
        self.assertEqual(mine["serviceOptions"]["objects"]["allow"], ["x:Y"])
        with open(path, "w") as stream:
            stream.write("[objects]\nallow = 3\n")
        self.assertRaises(UsageError, self.parse, "--config", path)

    def test_badValues(self) -> None:
        """
        Bad numbers, handler and allowed names are refused, quoting them.
        """
        for arguments, quoted in [
            (["--objects-max-bytes=0"], "0"),
            (["--objects-max-pending=0"], "0"),
            (["--objects-workers=-1"], "-1"),
            (["--objects-timeout=0"], "0"),
            (["--objects-timeout=inf"], "inf"),
            (["--objects-worker-memory=1000"], "1000"),
            (["--objects-max-reply-bytes=10"], "10"),
            (["--objects-handler=nocolon"], "'nocolon'"),
            (["--objects-allow=nocolon"], "'nocolon'"),
        ]:
            error = self.assertRaises(UsageError, self.parse, *arguments)
            self.assertIn(quoted, str(error))

    def test_publicNeedsAuthkey(self) -> None:
        """
        An endpoint beyond loopback without an authkey is a usage error
        naming it, unless an authkey file, C{$NETD_OBJECTS_AUTHKEY}, mutual
        TLS or the dangerous flag is given.
        """
        error = self.assertRaises(UsageError, self.parse, "--objects=tcp:50016")
        self.assertIn("'tcp:50016'", str(error))
        self.parse("--objects=tcp:50016", "--objects-authkey-file=key")
        self.parse("--objects=tcp:50016", "--objects-dangerously-allow-unauthenticated")
        self.parse("--objects=tls:50016:privateKey=k:certKey=c:clientCA=ca.pem")
        os.environ[AUTHKEY_VARIABLE] = "secret"
        self.addCleanup(os.environ.pop, AUTHKEY_VARIABLE)
        self.parse("--objects=tcp:50016")

    def test_proxiedNeedsAuthkey(self) -> None:
        """
        A C{haproxy:} endpoint without an authkey is a usage error naming
        it, even on loopback or a UNIX socket: its clients are the proxy's.
        """
        for description in (
            "haproxy:tcp:50016:interface=127.0.0.1",
            "haproxy:unix:/run/netd-objects.sock",
        ):
            error = self.assertRaises(
                UsageError, self.parse, f"--objects={description}"
            )
            self.assertIn(repr(description), str(error))
            self.assertIn("proxy", str(error))
            self.parse(f"--objects={description}", "--objects-authkey-file=key")

    def test_privateEndpoints(self) -> None:
        """
        Loopback interfaces, UNIX sockets and mutual TLS are private; all
        interfaces, other addresses, names and TLS without client
        certificates are not. A C{systemd:} socket that was not handed over
        is left to fail on its own (its address decides otherwise: see
        L{test_inheritedHost}).
        """
        private = [
            "tcp:1:interface=127.0.0.1",
            "tcp6:1:interface=\\:\\:1",
            "tcp:1:50:127.0.0.2",
            "unix:/run/netd.sock",
            "ssl:1:privateKey=k:interface=127.0.0.1",
            "tls:1:privateKey=k:certKey=c:clientCA=ca.pem",
            "systemd:domain=INET:name=not-handed-over",
        ]
        public = [
            "tcp:1",
            "tcp:1:interface=0.0.0.0",
            "tcp:1:interface=192.0.2.1",
            "tcp:1:interface=localhost",
            "ssl:1:privateKey=k",
            "tls:1:privateKey=k:certKey=c",
            "haproxy:tcp:1",
            "haproxy:tcp:1:interface=127.0.0.1",
            "haproxy:unix:/run/netd.sock",
        ]
        self.assertEqual([isPrivateEndpoint(d) for d in private], [True] * 7)
        self.assertEqual([isPrivateEndpoint(d) for d in public], [False] * 9)

    def test_inheritedHost(self) -> None:
        """
        The host of an inherited socket is what it is bound to; a UNIX
        socket has none.
        """
        import socket

        from netd.systemd import inheritedHost

        for family, host in [
            (socket.AF_INET, "127.0.0.1"),
            (socket.AF_INET, "0.0.0.0"),
            (socket.AF_INET6, "::1"),
        ]:
            with socket.socket(family) as bound:
                bound.bind((host, 0))
                self.assertEqual(inheritedHost(bound.fileno()), host)
        with socket.socket(socket.AF_UNIX) as unix:
            self.assertIsNone(inheritedHost(unix.fileno()))


class ObjectsWiringTests(SynchronousTestCase):
    """
    L{makeService} builds the objects listeners from the options.
    """

    def factoryFor(self, *arguments: str) -> ObjectsFactory:
        options = Options([objects])
        options.parseOptions(list(arguments))
        reactor = MemoryReactor()
        makeService(options, reactor=reactor).startService()
        [(port, factory, _backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (50016, "127.0.0.1"))
        # Inside the access policy and the connection log.
        wrapped: ObjectsFactory = factory.wrappedFactory
        return wrapped

    def test_authkeyFile(self) -> None:
        """
        The authkey is the file's bytes without its final line end.
        """
        path = self.mktemp()
        with open(path, "wb") as stream:
            stream.write(b"k\x00ey\r\n")
        factory = self.factoryFor(f"--objects-authkey-file={path}")
        self.assertEqual(factory.authkey, b"k\x00ey")

    def test_handlerAndAllowed(self) -> None:
        """
        C{MODULE:CALLABLE} handlers and C{--objects-allow} names are
        imported at start-up.
        """
        factory = self.factoryFor(
            f"--objects-handler={__name__}:double",
            f"--objects-allow={__name__}:Point",
            "--objects-max-pending=3",
        )
        self.assertIs(factory.handler, double)
        self.assertEqual(factory.allowed, {(__name__, "Point"): Point})
        self.assertEqual(factory.maxPending, 3)

    def test_unknownHandler(self) -> None:
        """
        A handler or allowed name that cannot be imported is a
        L{StartupError} naming it.
        """
        for argument in [
            "--objects-handler=no.such.module:f",
            f"--objects-allow={__name__}:Missing",
            f"--objects-handler={__name__}:Point.__doc__",
        ]:
            error = self.assertRaises(StartupError, self.factoryFor, argument)
            self.assertIn("objects:", str(error))

    def test_authkeyErrors(self) -> None:
        """
        A missing or empty authkey file is a L{StartupError}; without one,
        C{$NETD_OBJECTS_AUTHKEY} is read, and without both there is no key.
        """
        self.assertRaises(StartupError, readAuthkey, "/nonexistent/key")
        empty = self.mktemp()
        open(empty, "w").close()
        self.assertRaises(StartupError, readAuthkey, empty)
        saved = os.environ.pop(AUTHKEY_VARIABLE, None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, AUTHKEY_VARIABLE, saved)
        self.assertIsNone(readAuthkey(None))
        os.environ[AUTHKEY_VARIABLE] = "clé"
        self.addCleanup(os.environ.pop, AUTHKEY_VARIABLE)
        self.assertEqual(readAuthkey(None), "clé".encode())


class ObjectsCommandTests(SynchronousTestCase):
    """
    C{netd-client objects} options.
    """

    def test_literal(self) -> None:
        """
        The argument is read with C{ast.literal_eval}; the port defaults to
        50016.
        """
        command = ObjectsCommand()
        command.parseOptions(["([1, 2], {'a': b'x'})"])
        self.assertEqual(command["request"], ([1, 2], {"a": b"x"}))
        self.assertEqual(command["port"], 50016)

    def test_notALiteral(self) -> None:
        """
        Code is not a literal, and a bad protocol is refused.
        """
        for arguments in [["__import__('os')"], ["(1,"], ["--protocol=9", "1"]]:
            self.assertRaises(UsageError, ObjectsCommand().parseOptions, arguments)
