# -*- test-case-name: tests.test_tap -*-
"""
The TOML config file: reading it, and checking its values against the
options they stand for.

The file mirrors the command line: top-level keys are netd's global options,
and a table per service holds that service's options by their short names
plus C{endpoints}::

    services = ["echo", "daytime"]

    [echo]
    endpoints = ["tcp:7", "udp:7"]
    prefix = ""
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from typing import Any

from twisted.python.usage import UsageError


def loadConfig(path: str) -> dict[str, Any]:
    """
    Read a TOML config file.

    @raise UsageError: one line naming the file and the problem, when it
        cannot be read or is not valid TOML.
    """
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except OSError as error:
        raise UsageError(
            f"cannot read config file {path!r}: {error.strerror}"
        ) from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"config file {path!r} is not valid TOML: {error}") from error


def configValue(key: str, value: Any, coerce: Callable[[str], Any] | None) -> Any:
    """
    Turn a config value into what the command-line option would give.

    A string goes through the option's C{coerce}, as on the command line; a
    TOML number is accepted for a numeric option and a list of strings for a
    repeatable one; anything else is the wrong type.

    @param key: the dotted key, for the error message (C{echo.delay}).
    @raise UsageError: naming the key and the value.
    """
    if isinstance(value, str):
        try:
            return coerce(value) if coerce is not None else value
        except ValueError as error:
            raise UsageError(f"bad value for {key}: {value!r} ({error})") from error
    if coerce in (int, float) and isinstance(value, int | float):
        if isinstance(value, bool) or (coerce is int and not isinstance(value, int)):
            raise UsageError(f"{key} must be a {coerce.__name__}, not {value!r}")
        return coerce(value)
    if coerce not in (None, str) and not isinstance(value, list | dict):
        # A custom coerce (say, a parser of sizes): give it the text.
        return configValue(key, str(value), coerce)
    raise UsageError(f"{key} must be a string, not {value!r}")


def configFlag(key: str, value: Any) -> bool:
    """
    Check a config value for a flag option.

    @raise UsageError: naming the key unless C{value} is a TOML boolean.
    """
    if not isinstance(value, bool):
        raise UsageError(f"{key} must be true or false, not {value!r}")
    return value


def configStrings(key: str, value: Any) -> list[str]:
    """
    Check a config value for a repeatable option: a string or a list of them.

    @raise UsageError: naming the key otherwise.
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise UsageError(f"{key} must be a list of strings, not {value!r}")
