"""
The package's layout rules, read from the code's own imports: a service
package imports the core, never another service; the core imports no
service; the dropin imports only services' plugin modules.
"""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.common import PROJECT

NETD = os.path.join(PROJECT, "netd")


def importedModules(path: str) -> set[str]:
    """
    Every module a source file imports, at any depth (lazy imports too).
    """
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def sources(folder: str) -> list[str]:
    return [
        os.path.join(where, name)
        for where, _dirs, names in os.walk(folder)
        for name in names
        if name.endswith(".py")
    ]


def serviceOf(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] == ["netd", "services"] and len(parts) > 2:
        return parts[2]
    return None


class LayoutTests(SynchronousTestCase):
    """
    Imports follow the layout of DESIGN.md.
    """

    def test_servicesImportNoOtherService(self) -> None:
        """
        No module of a service package imports another service's package.
        """
        services = os.path.join(NETD, "services")
        names = [
            name
            for name in os.listdir(services)
            if os.path.isdir(os.path.join(services, name)) and name != "__pycache__"
        ]
        self.assertIn("echo", names)
        crossings = []
        for name in names:
            for path in sources(os.path.join(services, name)):
                for module in importedModules(path):
                    other = serviceOf(module)
                    if other is not None and other != name:
                        crossings.append((os.path.relpath(path, PROJECT), module))
        self.assertEqual(crossings, [])

    def test_coreImportsNoService(self) -> None:
        """
        No core module (C{netd/*.py}) imports a service package.
        """
        core = [
            os.path.join(NETD, name)
            for name in os.listdir(NETD)
            if name.endswith(".py")
        ]
        self.assertIn(os.path.join(NETD, "tap.py"), core)
        found = [
            (os.path.basename(path), module)
            for path in core
            for module in importedModules(path)
            if serviceOf(module) is not None
        ]
        self.assertEqual(found, [])

    def test_dropinImportsOnlyPlugins(self) -> None:
        """
        The dropin imports services' C{plugin} modules and nothing else of
        theirs, so that C{twistd --help} loads no protocol.
        """
        dropin = os.path.join(PROJECT, "twisted", "plugins", "netd_plugin.py")
        modules = [m for m in importedModules(dropin) if serviceOf(m) is not None]
        self.assertNotEqual(modules, [])
        for module in modules:
            self.assertEqual(module.split(".")[3], "plugin", module)
