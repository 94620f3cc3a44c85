# -*- test-case-name: tests.test_lifecycle -*-
"""
A reload (C{SIGHUP}): apply to a running netd what can change without a
restart, from freshly parsed options, and name what cannot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger


class Reload:
    """
    One reload of a L{NetdService}: global options, endpoints' own files,
    each service's options and its access policy.
    """

    def __init__(self, netd: Any, log: Logger) -> None:
        """
        @param netd: the running L{netd.lifecycle.NetdService}: its
            listeners, C{served} services, C{settings} and C{liveSettings}.
        @param log: where changes are logged.
        """
        self.netd = netd
        self.log = log

    def apply(self, fresh: Mapping[str, Any]) -> list[str]:
        """
        Apply what can change live; log each change.

        @param fresh: the newly parsed options (L{netd.tap.Options}).
        @return: the keys that changed but need a restart.
        """
        needsRestart = self._globals(fresh)
        self._endpoints(fresh)
        served = self.netd.served
        freshNames = [service.name for service in fresh["services"]]
        if sorted(freshNames) != sorted(served):
            needsRestart.append("services")
        for name in freshNames:
            if name in served:
                needsRestart += self._service(
                    served[name],
                    fresh["endpoints"][name],
                    fresh["serviceOptions"][name],
                )
                self._policy(served[name], fresh["policies"][name])
        return needsRestart

    def _globals(self, fresh: Mapping[str, Any]) -> list[str]:
        """
        Apply the global options that can change live (C{grace}); return
        the others that changed.
        """
        needsRestart = []
        for key, old in self.netd.settings.items():
            new = fresh[key]
            if new == old:
                continue
            apply = self.netd.liveSettings.get(key)
            if apply is None:
                needsRestart.append(key)
                continue
            try:
                apply(new)
            except Exception:
                self.log.failure("reload: applying {key} failed", key=key)
                needsRestart.append(key)
                continue
            self.netd.settings[key] = new
            self._applied(key, old, new)
        return needsRestart

    def _endpoints(self, fresh: Mapping[str, Any]) -> None:
        """
        Let every listening endpoint that offers C{reload()} re-read its
        own files (a TLS endpoint its key and certificates), when its
        description did not change.
        """
        for listener in self.netd:
            reload = getattr(getattr(listener, "endpoint", None), "reload", None)
            endpoints = fresh["endpoints"].get(listener.serviceName, [])
            if reload is None or listener.description not in endpoints:
                continue
            try:
                reload()
            except Exception as error:
                self.log.error(
                    "reload: {service} endpoint {endpoint} kept its old files: {error}",
                    service=listener.serviceName,
                    endpoint=listener.description,
                    error=str(error),
                )
            else:
                self.log.info(
                    "reload: {service} endpoint {endpoint} reloaded",
                    service=listener.serviceName,
                    endpoint=listener.description,
                )

    def _service(
        self, running: Any, endpoints: list[str], options: dict[str, Any]
    ) -> list[str]:
        name = running.plugin.name
        needsRestart = []
        if endpoints != running.endpoints:
            needsRestart.append(f"{name}.endpoints")
        changed = [key for key in options if options[key] != running.options.get(key)]
        if not changed:
            return needsRestart
        applied: set[str] = set()
        reconfigure = getattr(running.plugin, "reconfigure", None)
        if reconfigure is not None:
            factory = running.factory.wrappedFactory if running.factory else None
            try:
                applied = set(
                    reconfigure(options, changed, factory, running.datagramProtocols)
                )
            except Exception:
                self.log.failure(
                    "reload: {service} failed to reconfigure", service=name
                )
        for key in changed:
            if key in applied:
                self._applied(f"{name}.{key}", running.options.get(key), options[key])
                running.options[key] = options[key]
            else:
                needsRestart.append(f"{name}.{key}")
        return needsRestart

    def _policy(self, running: Any, settings: Any) -> None:
        """
        Judge new clients of a service by its new access policy; open
        connections stay open.
        """
        old = running.policy.settings
        if settings != old:
            running.policy.update(settings)
            self.log.info(
                "reload: {key} changed: {changes}",
                key=f"{running.plugin.name}.policy",
                changes=describePolicyChange(old, settings),
            )

    def _applied(self, key: str, old: Any, new: Any) -> None:
        self.log.info(
            "reload: {key} changed from {old!r} to {new!r}", key=key, old=old, new=new
        )


#: A policy's settings as the operator names them, and how each is shown.
_POLICY_FIELDS = (
    ("allow", "allow", lambda ranges: ", ".join(map(str, ranges)) or "any"),
    ("deny", "deny", lambda ranges: ", ".join(map(str, ranges)) or "none"),
    ("max-connections", "maxConnections", lambda n: str(n) if n else "no limit"),
    ("max-per-source", "maxPerSource", lambda n: str(n) if n else "no limit"),
    ("idle-timeout", "idleTimeout", lambda s: f"{s:g} s" if s else "never"),
    ("trusted-proxy", "trustedProxies", lambda ranges: ", ".join(map(str, ranges))),
)


def describePolicyChange(old: Any, new: Any) -> str:
    """
    What changed between two access policies, in the options' own words:
    C{max-per-source no limit -> 4; allow any -> 127.0.0.0/8, ::1}.
    """
    changes = []
    for option, attribute, show in _POLICY_FIELDS:
        before, after = getattr(old, attribute, None), getattr(new, attribute, None)
        if before != after:
            changes.append(f"{option} {show(before)} -> {show(after)}")
    return "; ".join(changes) or "nothing an operator sets"
