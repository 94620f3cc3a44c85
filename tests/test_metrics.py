"""
Tests for L{netd.metrics}: C{--metrics ENDPOINT}, what netd counts, and
C{/metrics} scraped over loopback and read with prometheus_client's own
parser.
"""

from __future__ import annotations

import os
import resource
import socket
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from netd import __version__
from netd.metrics import NO_METRICS, refusalReason
from netd.policy import (
    Policy,
    PolicyFactory,
    PolicySettings,
    parseNetwork,
)
from netd.prometheus import DescriptorCollector, ListenerFactory, PrometheusMetrics
from netd.services.echo.plugin import echo
from netd.tap import Options, makeService
from tests.common import (
    TWISTD,
    Certificates,
    exchange,
    makeCertificates,
    runCommand,
    runNetd,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parseSamples(text: str) -> Samples:
    """
    Every sample of a scrape, by name and labels.
    """
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """
    One sample's value; a missing sample fails the test with what there is.
    """
    key = (name, frozenset(labels.items()))
    if key not in samples:
        names = sorted({n for n, _ in samples})
        raise AssertionError(f"no sample {name}{labels}; names: {names}")
    return samples[key]


@implementer(IPolicyForHTTPS)
class TrustTestCA:
    """
    HTTPS for a scrape: trust the test CA, and present its client
    certificate.
    """

    def __init__(self, certificates: Certificates) -> None:
        self.certificates = certificates

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        from twisted.internet import ssl

        with open(self.certificates.ca, "rb") as stream:
            authority = ssl.Certificate.loadPEM(stream.read())
        with open(self.certificates.clientCert, "rb") as stream:
            cert = stream.read()
        with open(self.certificates.clientKey, "rb") as stream:
            key = stream.read()
        return ssl.optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=authority,
            clientCertificate=ssl.PrivateCertificate.loadPEM(key + cert),
        )


@defer.inlineCallbacks
def scrape(
    port: int, path: bytes = b"/metrics", tls: Certificates | None = None
) -> defer.Generator:
    """
    GET C{/metrics} over loopback (HTTPS with the test certificates when
    C{tls}); return the parsed samples.
    """
    if tls is None:
        agent = Agent(_reactor)
        url = b"http://127.0.0.1:%d%s" % (port, path)
    else:
        agent = Agent(_reactor, contextFactory=TrustTestCA(tls))
        url = b"https://127.0.0.1:%d%s" % (port, path)
    response = yield agent.request(b"GET", url)
    body = yield readBody(response)
    if response.code != 200:
        raise AssertionError(f"HTTP {response.code}: {body!r}")
    (contentType,) = response.headers.getRawHeaders(b"content-type")
    assert contentType.startswith(b"text/plain"), contentType
    return parseSamples(body.decode("utf-8"))


class OptionTests(SynchronousTestCase):
    """
    C{--metrics ENDPOINT} and the config file's C{metrics}.
    """

    def parse(self, *argv: str, toml: str | None = None) -> Options:
        if toml is not None:
            path = self.mktemp()
            with open(path, "w") as stream:
                stream.write(toml)
            argv = ("--config", path, *argv)
        options = Options(services=[echo])
        options.parseOptions(list(argv))
        return options

    def test_offByDefault(self) -> None:
        """
        Without C{--metrics}, netd counts nothing and serves nothing more.
        """
        options = self.parse("--echo", "tcp:0")
        self.assertIsNone(options["metrics"])
        netd = makeService(options, reactor=MemoryReactorClock())
        self.assertIs(netd.metrics, NO_METRICS)
        self.assertEqual([listener.serviceName for listener in netd], ["echo"])
        (listener,) = netd
        self.assertIsInstance(listener.factory, PolicyFactory)

    def test_endpoint(self) -> None:
        """
        C{--metrics ENDPOINT} adds a C{metrics} listener, and each service
        listener reports to its own metrics.
        """
        options = self.parse("--echo", "tcp:0", "--metrics", "tcp:9109")
        reactor = MemoryReactorClock()
        netd = makeService(options, reactor=reactor)
        self.assertIsInstance(netd.metrics, PrometheusMetrics)
        listeners = {listener.serviceName: listener for listener in netd}
        self.assertEqual(sorted(listeners), ["echo", "metrics"])
        self.assertEqual(listeners["metrics"].description, "tcp:9109")
        self.assertIsInstance(listeners["echo"].factory, ListenerFactory)
        netd.startService()
        self.addCleanup(netd.stopService)
        self.assertEqual(sorted(port for port, *_ in reactor.tcpServers), [0, 9109])

    def test_configFile(self) -> None:
        """
        C{metrics = "ENDPOINT"} at the top of the config file sets it; the
        command line wins.
        """
        toml = 'metrics = "tcp:9109:interface=127.0.0.1"\n'
        self.assertEqual(
            self.parse(toml=toml)["metrics"], "tcp:9109:interface=127.0.0.1"
        )
        self.assertEqual(
            self.parse("--metrics", "tcp:9110", toml=toml)["metrics"], "tcp:9110"
        )

    def test_wrongType(self) -> None:
        """
        A config value that is not a string is refused, naming the key.
        """
        error = self.assertRaises(UsageError, self.parse, toml="metrics = 9109\n")
        self.assertIn("metrics must be a string", str(error))

    def test_datagramRefused(self) -> None:
        """
        Prometheus scrapes over HTTP: a UDP endpoint is refused, quoted.
        """
        error = self.assertRaises(UsageError, self.parse, "--metrics", "udp:9109")
        self.assertIn("'udp:9109'", str(error))

    def test_reloadNeedsRestart(self) -> None:
        """
        A reload reports a changed C{--metrics} as needing a restart, and
        counts itself by outcome.
        """
        path = self.mktemp()
        with open(path, "w") as stream:
            stream.write('metrics = "tcp:9109"\n')
        options = Options(services=[echo])
        options.parseOptions(["--config", path, "--echo", "tcp:0"])
        netd = makeService(options, reactor=MemoryReactorClock())
        with open(path, "w") as stream:
            stream.write('metrics = "tcp:9110"\n')
        self.assertTrue(netd.reload())
        with open(path, "w") as stream:
            stream.write("metrics = [\n")
        self.assertFalse(netd.reload())
        registry = netd.metrics.registry
        for outcome, count in [("needs-restart", 1), ("failed", 1), ("applied", 0)]:
            self.assertEqual(
                registry.get_sample_value("netd_reloads_total", {"outcome": outcome}),
                count,
            )


class RefusalReasonTests(SynchronousTestCase):
    """
    L{refusalReason} labels the access policy's own refusals.
    """

    def test_policyRefusals(self) -> None:
        """
        Each refusal of L{PolicyFactory} gets its label.
        """
        from twisted.internet.address import IPv4Address

        client = IPv4Address("TCP", "192.0.2.7", 1234)

        def reason(settings: PolicySettings, open: int = 0) -> str | None:
            factory = PolicyFactory(
                "echo", Factory(), Policy(settings), MemoryReactorClock()
            )
            for _index in range(open):
                factory.protocols[Protocol()] = 1
            factory.perSource = {client.host: open}
            found = factory.refusal(client.host)
            return None if found is None else refusalReason(found)

        self.assertEqual(
            reason(PolicySettings(deny=(parseNetwork("192.0.2.0/24"),))), "denied"
        )
        self.assertEqual(
            reason(PolicySettings(allow=(parseNetwork("10.0.0.0/8"),))), "not-allowed"
        )
        self.assertEqual(reason(PolicySettings(maxConnections=1), 1), "max-connections")
        self.assertEqual(reason(PolicySettings(maxPerSource=1), 1), "max-per-source")
        self.assertEqual(refusalReason("service"), "service")
        self.assertEqual(refusalReason("something new"), "other")


class ListenerCountsTests(SynchronousTestCase):
    """
    A listener's plain counts, as the registry reports them.
    """

    def test_durations(self) -> None:
        """
        Each connection lands in the first bucket at or above its duration
        (buckets are cumulative, as Prometheus wants), with bytes summed and
        the open connections counted.
        """
        metrics = PrometheusMetrics(MemoryReactorClock())
        listener = metrics.service("echo").streamListener("tcp:0")
        listener.opened()
        listener.opened()
        listener.opened()
        listener.closed(1, 2, 0.1)
        listener.closed(10, 20, 5000.0)
        labels = {"service": "echo", "listener": "tcp:0"}

        def sample(name: str, **more: str) -> float | None:
            return metrics.registry.get_sample_value(name, {**labels, **more})

        buckets = "netd_connection_duration_seconds_bucket"
        self.assertEqual(sample(buckets, le="0.01"), 0)
        self.assertEqual(sample(buckets, le="0.1"), 1)
        self.assertEqual(sample(buckets, le="3600.0"), 1)
        self.assertEqual(sample(buckets, le="+Inf"), 2)
        self.assertEqual(sample("netd_connection_duration_seconds_count"), 2)
        self.assertEqual(sample("netd_connection_duration_seconds_sum"), 5000.1)
        self.assertEqual(sample("netd_connections_accepted_total"), 3)
        self.assertEqual(sample("netd_connections_active"), 1)
        self.assertEqual(sample("netd_received_bytes_total"), 11)
        self.assertEqual(sample("netd_sent_bytes_total"), 22)

    def test_unknownReasons(self) -> None:
        """
        A refusal or a drop for a reason netd did not list still counts.
        """
        metrics = PrometheusMetrics(MemoryReactorClock())
        service = metrics.service("echo")
        service.streamListener("tcp:0").refused("out of descriptors")
        service.datagramListener("udp:0").dropped("queue-full")
        self.assertEqual(
            metrics.registry.get_sample_value(
                "netd_connections_refused_total",
                {"service": "echo", "listener": "tcp:0", "reason": "other"},
            ),
            1,
        )
        self.assertEqual(
            metrics.registry.get_sample_value(
                "netd_datagrams_dropped_total",
                {"service": "echo", "listener": "udp:0", "reason": "queue-full"},
            ),
            1,
        )


class DescriptorCollectorTests(SynchronousTestCase):
    """
    L{DescriptorCollector} reads descriptors at each collection.
    """

    def test_counts(self) -> None:
        """
        The open count is what the directory lists (less the one listing
        it), the limit the soft C{RLIMIT_NOFILE}.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        for name in ("0", "1", "2", "3"):
            open(os.path.join(directory, name), "w").close()
        found = {
            family.name: family.samples[0].value
            for family in DescriptorCollector(directory).collect()
        }
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertEqual(
            found, {"netd_descriptors_open": 3, "netd_descriptors_limit": soft}
        )

    def test_noProc(self) -> None:
        """
        Where there is no descriptor directory, only the limit is reported.
        """
        names = [family.name for family in DescriptorCollector(self.mktemp()).collect()]
        self.assertEqual(names, ["netd_descriptors_limit"])

    def test_realDescriptors(self) -> None:
        """
        Opening a descriptor raises the count of this very process by one.
        """
        if not os.path.isdir("/proc/self/fd"):
            raise self.skipTest("no /proc/self/fd")  # type: ignore[misc]
        collector = DescriptorCollector()

        def count() -> float:
            (family, *_) = collector.collect()
            return float(family.samples[0].value)

        before = count()
        with socket.socket() as _:
            self.assertEqual(count(), before + 1)


class ScrapeTests(TestCase):
    """
    A netd built by C{makeService} on the real reactor, driven with real
    traffic on loopback, then scraped.
    """

    @defer.inlineCallbacks
    def setUp(self) -> defer.Generator:
        root = self.mktemp()
        os.makedirs(root)
        with open(os.path.join(root, "hello.txt"), "wb") as stream:
            stream.write(b"hello\n" * 100)
        keyFile = self.mktemp()
        with open(keyFile, "wb") as stream:
            stream.write(b"s3cret")
        config = self.mktemp()
        with open(config, "w") as stream:
            stream.write('[daytime.policy]\ndeny = ["127.0.0.1"]\n')
        loopback = "tcp:0:interface=127.0.0.1"
        options = Options()
        options.parseOptions(
            [
                "--config",
                config,
                "--services",
                "echo,getfile,daytime,objects",
                "--echo",
                loopback,
                "--echo",
                "udp:0:interface=127.0.0.1",
                "--echo-udp-rate",
                "0.5",
                "--getfile",
                loopback,
                "--getfile-root",
                root,
                "--daytime",
                loopback,
                "--objects",
                loopback,
                "--objects-authkey-file",
                keyFile,
                "--objects-handler",
                "add",
                "--metrics",
                loopback,
            ]
        )
        self.netd = makeService(options, reactor=_reactor)
        self.netd.startService()
        self.addCleanup(self.netd.stopService)
        ports = yield defer.gatherResults(
            [listener.whenListening() for listener in self.netd]
        )
        self.ports = {}
        for listener, port in zip(self.netd, ports, strict=True):
            kind = "UDP" if listener.description.startswith("udp") else "TCP"
            self.ports[listener.serviceName, kind] = port.getHost().port

    def endpoint(self, service: str) -> Any:
        return TCP4ClientEndpoint(_reactor, "127.0.0.1", self.ports[service, "TCP"])

    @defer.inlineCallbacks
    def test_streams(self) -> defer.Generator:
        """
        Connections accepted, refused by reason and open; bytes both ways
        and durations, per service and listener.
        """
        yield exchange(self.endpoint("echo"), b"hello")
        yield exchange(self.endpoint("echo"), b"world!")
        received = yield exchange(self.endpoint("daytime"))
        self.assertEqual(received, b"")
        samples = yield scrape(self.ports["metrics", "TCP"])
        echoListener = {"service": "echo", "listener": "tcp:0:interface=127.0.0.1"}
        daytime = {"service": "daytime", "listener": "tcp:0:interface=127.0.0.1"}
        self.assertEqual(
            value(samples, "netd_connections_accepted_total", **echoListener), 2
        )
        self.assertEqual(
            value(samples, "netd_received_bytes_total", **echoListener), 11
        )
        self.assertEqual(
            value(samples, "netd_sent_bytes_total", **echoListener),
            len(b"Echo=>hello") + len(b"Echo=>world!"),
        )
        self.assertEqual(
            value(samples, "netd_connection_duration_seconds_count", **echoListener),
            2,
        )
        self.assertEqual(value(samples, "netd_connections_active", **echoListener), 0)
        self.assertEqual(
            value(
                samples, "netd_connections_refused_total", reason="denied", **daytime
            ),
            1,
        )
        self.assertEqual(
            value(
                samples,
                "netd_connections_refused_total",
                reason="max-connections",
                **daytime,
            ),
            0,
        )
        self.assertEqual(
            value(samples, "netd_connections_accepted_total", **daytime), 0
        )

    @defer.inlineCallbacks
    def test_active(self) -> defer.Generator:
        """
        A connection open during the scrape is counted as active.
        """
        from twisted.internet.endpoints import connectProtocol

        client = yield connectProtocol(self.endpoint("echo"), Protocol())
        self.addCleanup(client.transport.abortConnection)
        samples = yield scrape(self.ports["metrics", "TCP"])
        self.assertEqual(
            value(
                samples,
                "netd_connections_active",
                service="echo",
                listener="tcp:0:interface=127.0.0.1",
            ),
            1,
        )

    @defer.inlineCallbacks
    def test_datagrams(self) -> defer.Generator:
        """
        Datagrams received, answered, and dropped by the per-source rate
        (half a reply a second: a burst of one).
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.setblocking(False)
            address = ("127.0.0.1", self.ports["echo", "UDP"])
            client.sendto(b"one", address)
            client.sendto(b"two", address)
            samples = yield scrape(self.ports["metrics", "TCP"])
            self.assertEqual(client.recv(100), b"Echo=>one")
        labels = {"service": "echo", "listener": "udp:0:interface=127.0.0.1"}
        self.assertEqual(value(samples, "netd_datagrams_received_total", **labels), 2)
        self.assertEqual(value(samples, "netd_datagrams_sent_total", **labels), 1)
        self.assertEqual(
            value(
                samples, "netd_datagrams_dropped_total", reason="rate-limit", **labels
            ),
            1,
        )
        self.assertEqual(
            value(samples, "netd_datagrams_dropped_total", reason="policy", **labels),
            0,
        )

    @defer.inlineCallbacks
    def test_getfile(self) -> defer.Generator:
        """
        Complete transfers, and errors by code.
        """
        received = yield exchange(self.endpoint("getfile"), b"hello.txt\n")
        self.assertEqual(received, b"hello\n" * 100)
        received = yield exchange(self.endpoint("getfile"), b"GETFILE/1 0 missing\n")
        self.assertTrue(received.startswith(b"ERR 404"), received)
        samples = yield scrape(self.ports["metrics", "TCP"])
        self.assertEqual(
            value(
                samples,
                "netd_getfile_transfers_total",
                service="getfile",
                outcome="complete",
            ),
            1,
        )
        self.assertEqual(
            value(samples, "netd_getfile_errors_total", service="getfile", code="404"),
            1,
        )
        self.assertEqual(
            value(
                samples,
                "netd_sent_bytes_total",
                service="getfile",
                listener="tcp:0:interface=127.0.0.1",
            ),
            len(received) + 600,
        )

    @defer.inlineCallbacks
    def test_objects(self) -> defer.Generator:
        """
        Requests with their time, replies that carry an exception, and
        clients that fail the handshake.
        """
        from netd.services.objects.client import connectObjects
        from netd.services.objects.wire import AuthenticationError

        client = yield connectObjects(self.endpoint("objects"), b"s3cret")
        self.addCleanup(client.transport.loseConnection)
        reply = yield client.call((1, 2))
        self.assertEqual(reply, 3)
        yield self.assertFailure(client.call((1, "x")), TypeError)
        yield self.assertFailure(
            connectObjects(self.endpoint("objects"), b"wrong"), AuthenticationError
        )
        samples = yield scrape(self.ports["metrics", "TCP"])
        service = {"service": "objects"}
        self.assertEqual(value(samples, "netd_objects_requests_total", **service), 2)
        self.assertEqual(
            value(samples, "netd_objects_request_duration_seconds_count", **service), 2
        )
        self.assertEqual(value(samples, "netd_objects_errors_total", **service), 1)
        self.assertEqual(
            value(samples, "netd_objects_auth_failures_total", **service), 1
        )
        self.assertEqual(
            value(samples, "netd_objects_worker_restarts_total", **service), 0
        )

    @defer.inlineCallbacks
    def test_process(self) -> defer.Generator:
        """
        The version, the descriptors in use and their limit, and no reload
        yet.
        """
        samples = yield scrape(self.ports["metrics", "TCP"])
        self.assertEqual(value(samples, "netd_build_info", version=__version__), 1)
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertEqual(value(samples, "netd_descriptors_limit"), soft)
        # At least the listeners (5) and the scrape's connection are open.
        self.assertGreaterEqual(value(samples, "netd_descriptors_open"), 6)
        self.assertEqual(value(samples, "netd_reloads_total", outcome="applied"), 0)

    @defer.inlineCallbacks
    def test_onlyMetrics(self) -> defer.Generator:
        """
        Only C{/metrics} is served.
        """
        error = yield self.assertFailure(
            scrape(self.ports["metrics", "TCP"], b"/"), AssertionError
        )
        self.assertIn("HTTP 404", str(error))


class TwistdTests(TestCase):
    """
    C{twistd -n netd --metrics tcp:0}: the port is logged, and scraped.
    """

    @defer.inlineCallbacks
    def test_scrape(self) -> defer.Generator:
        """
        A real netd logs where its metrics listen; a scrape there counts
        the connection made before it.
        """
        netd = yield runNetd(
            self,
            "--services",
            "echo",
            "--echo",
            "tcp:0:interface=127.0.0.1",
            "--metrics",
            "tcp:0:interface=127.0.0.1",
            listeners=2,
        )
        endpoint = TCP4ClientEndpoint(_reactor, "127.0.0.1", netd.port("echo"))
        yield exchange(endpoint, b"hi")
        samples = yield scrape(netd.port("metrics"))
        self.assertEqual(
            value(
                samples,
                "netd_connections_accepted_total",
                service="echo",
                listener="tcp:0:interface=127.0.0.1",
            ),
            1,
        )
        self.assertEqual(value(samples, "netd_build_info", version=__version__), 1)
        self.assertNotIn(b"GET /metrics", netd.output)

    @defer.inlineCallbacks
    def test_portInUse(self) -> defer.Generator:
        """
        A metrics port in use stops start-up with one line naming it.
        """
        workDirectory = self.mktemp()
        os.makedirs(workDirectory)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
            out, err, code = yield runCommand(
                TWISTD,
                "--nodaemon",
                "--pidfile=",
                "netd",
                "--services",
                "echo",
                "--echo",
                "tcp:0:interface=127.0.0.1",
                "--metrics",
                endpoint,
                path=workDirectory,
            )
        self.assertEqual(code, 1)
        lines = (out + err).decode().splitlines()
        self.assertTrue(
            lines[-1].startswith(f"netd: metrics: cannot listen on {endpoint!r}"),
            lines,
        )

    @defer.inlineCallbacks
    def test_tls(self) -> defer.Generator:
        """
        Over netd's C{tls:} endpoint with a client CA, as the README
        advises, a scrape with the client certificate is served.
        """
        certificates = makeCertificates(self)
        netd = yield runNetd(
            self,
            "--services",
            "echo",
            "--echo",
            "tcp:0:interface=127.0.0.1",
            "--metrics",
            certificates.endpoint(clientCA=True),
            listeners=2,
        )
        samples = yield scrape(netd.port("metrics"), tls=certificates)
        self.assertEqual(value(samples, "netd_build_info", version=__version__), 1)
