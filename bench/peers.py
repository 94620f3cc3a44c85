"""
Echo servers to measure netd against, each printing C{PORT n} once it
listens on 127.0.0.1:

    python bench/peers.py twisted          # bare Twisted, wire.Echo
    python bench/peers.py twisted-uvloop   # the same on the asyncio reactor over uvloop
    python bench/peers.py asyncio          # a stdlib asyncio Protocol
    python bench/peers.py asyncio-uvloop   # the same on uvloop
"""

from __future__ import annotations

import asyncio
import sys


def twisted(uvloop: bool) -> None:
    if uvloop:
        installUvloopReactor()
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory
    from twisted.protocols.wire import Echo

    port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
    print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()


def installUvloopReactor() -> None:
    """
    Install Twisted's asyncio reactor on a uvloop event loop.
    """
    import uvloop
    from twisted.internet import asyncioreactor

    asyncioreactor.install(uvloop.new_event_loop())


class AsyncioEcho(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


async def asyncioServer() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(AsyncioEcho, "127.0.0.1", 0)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main(kind: str) -> None:
    if kind == "twisted":
        twisted(False)
    elif kind == "twisted-uvloop":
        twisted(True)
    elif kind == "asyncio":
        asyncio.run(asyncioServer())
    elif kind == "asyncio-uvloop":
        import uvloop

        uvloop.run(asyncioServer())
    else:
        raise SystemExit(f"unknown peer {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1])
