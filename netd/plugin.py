# -*- test-case-name: tests.test_plugin -*-
"""
netd's service plugin interface, and how the tap finds its services.

A netd service is any object providing L{INetdService} (and Twisted's
L{IPlugin}) in a module of some C{twisted/plugins/} directory. netd's own
services are registered in C{twisted/plugins/netd_plugin.py}; a third party
adds one by shipping a dropin of its own, with no change to netd.

This module is imported by dropins, so it must stay light: nothing here may
import the reactor or a protocol module.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from twisted.plugin import IPlugin, getPlugins
from twisted.python.usage import UsageError
from zope.interface import Attribute, Interface, implementer


class INetdService(Interface):
    """
    A service that netd can serve on any number of endpoints.

    Option names are the service's own (C{"prefix"}); netd exposes each as
    C{--NAME-OPTION} on the command line (C{--echo-prefix}) and as C{OPTION}
    in the service's table of the config file.
    """

    name = Attribute(
        "C{str}: the service's name in C{--services}, its endpoint option "
        "C{--NAME} and its logs. Lower case letters, digits and dashes."
    )
    description = Attribute("C{str}: one line for C{--help}.")
    defaultEndpoints = Attribute(
        "C{Sequence[str]}: the endpoints served when the operator names none; "
        "C{udp:PORT[:interface=ADDR]} for datagram listeners."
    )
    stream = Attribute("C{bool}: whether the service speaks over TCP-like streams.")
    datagram = Attribute("C{bool}: whether the service also speaks over UDP.")
    optParameters = Attribute(
        "C{Sequence}: L{twisted.python.usage.Options}-style parameters "
        "C{[name, None, default, doc, coerce]}, named without the service prefix."
    )
    optFlags = Attribute(
        "C{Sequence}: L{twisted.python.usage.Options}-style flags "
        "C{[name, None, doc]}, named without the service prefix."
    )
    optRepeatable = Attribute(
        "C{Sequence}: repeatable options C{[name, None, doc]}, named without "
        "the service prefix; each gives a C{list[str]} (a list of strings in "
        "the config file). Optional: netd treats a missing one as empty."
    )
    enabledByDefault = Attribute(
        "C{bool}: whether the service runs when C{--services} names none "
        "(optional, true when missing): a service that only some operators "
        "want, such as chargen, sets it false and runs only when named."
    )
    clientCommands = Attribute(
        "C{Sequence}: the service's C{netd-client} commands, each "
        "C{(name, 'module.OptionsClass', description)}, the class a "
        "L{netd.cli.ClientCommand} imported only when its command runs. "
        "Optional: netd treats a missing one as empty."
    )

    def validate(options: Mapping[str, Any]) -> None:
        """
        Check the service's own options together, before anything is built.

        @param options: the service's options by their short names.
        @raise twisted.python.usage.UsageError: quoting the bad value.
        """

    def validateEndpoints(options: Mapping[str, Any], endpoints: Sequence[str]) -> None:
        """
        Check the service's options against the endpoints it will listen on
        (optional: netd skips a provider without it).

        @param endpoints: the endpoint descriptions, defaults filled in.
        @raise twisted.python.usage.UsageError: quoting the bad value.
        """

    def extraDescriptors(options: Mapping[str, Any]) -> int:
        """
        How many descriptors the service may hold beyond one per connection
        and listener (files it opens...), set aside from the descriptor
        budget (optional: netd counts none without it; see
        L{netd.budgets.DescriptorBudget}).
        """

    def makeFactory(options: Mapping[str, Any], reactor: Any) -> Any:
        """
        Build the one L{IProtocolFactory} shared by all the service's stream
        endpoints.

        @param options: the service's options by their short names.
        @param reactor: the reactor, for its clock and anything else it needs.

        A provider whose C{makeFactory} takes a keyword argument C{metrics}
        is given the service's L{netd.metrics.ServiceMetrics} (do-nothing
        ones when C{--metrics} is off).
        """

    def makeDatagramProtocol(options: Mapping[str, Any], reactor: Any) -> Any:
        """
        Build a L{twisted.internet.protocol.DatagramProtocol} for one UDP
        endpoint (called once per endpoint: a datagram protocol is bound to
        one port).

        A provider whose C{makeDatagramProtocol} takes a keyword argument
        C{metrics} is given the endpoint's
        L{netd.metrics.DatagramListenerMetrics}.
        """

    def listeningNote(options: Mapping[str, Any]) -> str | None:
        """
        Optional: what the operator should read beside each of the service's
        stream listening lines (getfile: C{serving /srv/files}), or L{None}.
        """

    def reconfigure(
        options: Mapping[str, Any],
        changed: Collection[str],
        factory: Any,
        datagramProtocols: Sequence[Any],
    ) -> Collection[str]:
        """
        Optional: apply changed options to a running service, on C{SIGHUP}.

        netd calls this with what C{makeFactory} and C{makeDatagramProtocol}
        built, after the new options passed L{validate}. Whatever is applied
        must not drop an open connection; whether it reaches connections
        already open or only new ones is the service's choice (say which in
        its docs). Providers without this method, and the default of
        L{ServicePlugin}, apply nothing: every change then needs a restart,
        and netd logs so.

        @param options: all the service's options, new values included.
        @param changed: the names of the options whose value changed.
        @param factory: the service's own stream factory, or L{None} when it
            has no stream endpoint.
        @param datagramProtocols: one per UDP endpoint.
        @return: the names of the changed options it applied; netd reports
            the others as needing a restart.
        """


class IGracefulProtocol(Interface):
    """
    Optional, for a service's stream protocol: how to stop gracefully.

    When netd stops (C{SIGTERM}), it stops accepting, then calls
    L{stopGracefully} on every open connection whose protocol provides this
    interface, waits up to its grace period (C{--grace}) for all of them to
    end, and then aborts the rest. A protocol without it is simply given the
    grace period: fine for short exchanges, but an idle client would hold
    the stop for the whole of it.
    """

    def stopGracefully() -> None:
        """
        Finish what is in flight (a reply, a transfer), then close; close at
        once when nothing is. Read no new request.
        """


@implementer(IPlugin, INetdService)
class ServicePlugin:
    """
    A convenient base for L{INetdService} providers: subclasses set the
    attributes and override the C{make*} methods they support.

    Subclasses import their protocol modules inside the C{make*} methods, so
    that loading a dropin never imports more than this module.
    """

    name: str = ""
    description: str = ""
    defaultEndpoints: Sequence[str] = ()
    stream: bool = True
    datagram: bool = False
    optParameters: Sequence[Sequence[Any]] = ()
    optFlags: Sequence[Sequence[Any]] = ()
    optRepeatable: Sequence[Sequence[Any]] = ()
    enabledByDefault: bool = True
    clientCommands: Sequence[tuple[str, str, str]] = ()

    def validate(self, options: Mapping[str, Any]) -> None:
        """
        Accept any combination of options; override to check them together.
        """

    def validateEndpoints(
        self, options: Mapping[str, Any], endpoints: Sequence[str]
    ) -> None:
        """
        Accept any endpoints; override to check options against them.
        """

    def extraDescriptors(self, options: Mapping[str, Any]) -> int:
        """
        No descriptors beyond connections; override when the service opens
        files or pipes of its own.
        """
        return 0

    def listeningNote(self, options: Mapping[str, Any]) -> str | None:
        """
        Nothing to add to the listening lines; override to say more.
        """
        return None

    def makeFactory(self, options: Mapping[str, Any], reactor: Any) -> Any:
        """
        Subclasses with C{stream = True} build their protocol factory here.
        """
        raise NotImplementedError(f"{self.name} does not speak over streams")

    def makeDatagramProtocol(self, options: Mapping[str, Any], reactor: Any) -> Any:
        """
        Subclasses with C{datagram = True} build their datagram protocol here.
        """
        raise NotImplementedError(f"{self.name} does not speak over UDP")

    def reconfigure(
        self,
        options: Mapping[str, Any],
        changed: Collection[str],
        factory: Any,
        datagramProtocols: Sequence[Any],
    ) -> Collection[str]:
        """
        Apply nothing: by default every change needs a restart.
        """
        return ()

    def __repr__(self) -> str:
        return f"<netd service {self.name!r}>"


#: The option of every L{DatagramServicePlugin}: C{--NAME-udp-rate}.
UDP_RATE_OPTION = [
    "udp-rate",
    None,
    20.0,
    "UDP replies a second to any one source.",
    float,
]


class DatagramServicePlugin(ServicePlugin):
    """
    A base for services that also answer over UDP, where every reply is
    limited per source (C{--NAME-udp-rate}; a UDP source is easily forged,
    and an unlimited server amplifies floods towards the forged victim).

    Subclasses include L{UDP_RATE_OPTION} in their C{optParameters} and
    call this C{validate} from their own.
    """

    datagram = True
    optParameters: Sequence[Sequence[Any]] = [UDP_RATE_OPTION]

    def validate(self, options: Mapping[str, Any]) -> None:
        """
        Refuse a reply rate that is not positive.
        """
        if options["udp-rate"] <= 0:
            raise UsageError(
                f"--{self.name}-udp-rate must be positive, not {options['udp-rate']!r}"
            )

    def limiter(self, options: Mapping[str, Any], reactor: Any) -> Any:
        """
        The per-source reply limit of one UDP endpoint: C{udp-rate} replies
        a second, in bursts of up to two seconds' worth.
        """
        from netd.datagram import PerSourceRateLimiter

        limiter = PerSourceRateLimiter(reactor)
        limiter.setRate(options["udp-rate"])
        return limiter


def discoverServices(plugins: Any = None) -> list[INetdService]:
    """
    Find every installed netd service.

    @param plugins: where to look, a plugin package such as
        C{twisted.plugins}; by default every C{twisted/plugins/} directory
        on C{sys.path}.
    @return: the services sorted by name; when the same name is found twice
        (the same dropin seen through two C{sys.path} entries), the first wins.
    """
    found: dict[str, INetdService] = {}
    for service in getPlugins(INetdService, plugins):
        found.setdefault(service.name, service)
    return [found[name] for name in sorted(found)]
