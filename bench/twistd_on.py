"""
Run twistd on another reactor than the default one:

    python bench/twistd_on.py asyncio|uvloop TWISTD-ARGUMENTS...

C{twistd --reactor=asyncio} takes the stdlib loop; for uvloop the reactor
must be installed on a uvloop loop before twistd starts.
"""

from __future__ import annotations

import asyncio
import sys

if __name__ == "__main__":
    from twisted.internet import asyncioreactor

    kind = sys.argv.pop(1)
    if kind == "uvloop":
        import uvloop

        asyncioreactor.install(uvloop.new_event_loop())
    elif kind == "asyncio":
        asyncioreactor.install(asyncio.new_event_loop())
    else:
        raise SystemExit(f"unknown loop {kind!r}")
    from twisted.scripts.twistd import run

    sys.argv[0] = "twistd"
    run()
