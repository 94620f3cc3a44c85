"""
Echo servers to measure netd against, each printing C{PORT n} once it
listens on 127.0.0.1:

    python bench/peers.py twisted          # bare Twisted, wire.Echo
    python bench/peers.py twisted-uvloop   # the same on the asyncio reactor over uvloop
    python bench/peers.py asyncio          # a stdlib asyncio Protocol
    python bench/peers.py asyncio-uvloop   # the same on uvloop

With C{SERVICE=PORT} arguments (C{echo}, C{daytime}, C{time}, C{echo-udp})
a peer serves each of those on 127.0.0.1:PORT instead, prints C{READY} and
serves until killed (bench/suite.py runs them so):

    python bench/peers.py twisted echo=7007 daytime=7013 time=7037 echo-udp=7007
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time

#: Seconds from 1900 (RFC 868's epoch) to 1970.
RFC868_OFFSET = 2208988800


def daytimeReply() -> bytes:
    """
    An RFC 867 reply: the local time as C{time.ctime()} gives it, CR LF.
    """
    return time.ctime().encode("ascii") + b"\r\n"


def timeReply() -> bytes:
    """
    An RFC 868 reply: 32-bit seconds since 1900.
    """
    return struct.pack("!I", (int(time.time()) + RFC868_OFFSET) & 0xFFFFFFFF)


def twisted(uvloop: bool) -> None:
    if uvloop:
        installUvloopReactor()
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory
    from twisted.protocols.wire import Echo

    port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
    print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()


def twistedServices(ports: dict[str, int]) -> None:
    """
    Bare Twisted: C{wire.Echo}, a daytime and a time protocol as
    C{wire.Daytime} and C{wire.Time} are (C{wire.Daytime} adds C{str} to
    C{bytes}, so it fails on Python 3), and a C{DatagramProtocol} echo.
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
    from twisted.protocols.wire import Echo

    class Daytime(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(daytimeReply())
            self.transport.loseConnection()

    class Time(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(timeReply())
            self.transport.loseConnection()

    class DatagramEcho(DatagramProtocol):
        def datagramReceived(self, data: bytes, address: tuple[str, int]) -> None:
            self.transport.write(data, address)

    protocols = {"echo": Echo, "daytime": Daytime, "time": Time}
    for name, port in ports.items():
        if name == "echo-udp":
            reactor.listenUDP(port, DatagramEcho(), interface="127.0.0.1")
        else:
            factory = Factory.forProtocol(protocols[name])
            reactor.listenTCP(port, factory, interface="127.0.0.1")
    print("READY", flush=True)
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


class AsyncioReply(asyncio.Protocol):
    """
    Write one reply on connect (daytime, time), then close.
    """

    reply = staticmethod(daytimeReply)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.reply())  # type: ignore[attr-defined]
        transport.close()


class AsyncioTime(AsyncioReply):
    reply = staticmethod(timeReply)


class AsyncioDatagramEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, address: tuple[str, int]) -> None:
        self.transport.sendto(data, address)  # type: ignore[attr-defined]


async def asyncioServices(ports: dict[str, int]) -> None:
    """
    The same services as L{twistedServices} on an asyncio loop.
    """
    loop = asyncio.get_running_loop()
    protocols = {"echo": AsyncioEcho, "daytime": AsyncioReply, "time": AsyncioTime}
    servers = []
    for name, port in ports.items():
        if name == "echo-udp":
            await loop.create_datagram_endpoint(
                AsyncioDatagramEcho, local_addr=("127.0.0.1", port)
            )
        else:
            servers.append(await loop.create_server(protocols[name], "127.0.0.1", port))
    print("READY", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


async def asyncioServer() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(AsyncioEcho, "127.0.0.1", 0)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main(kind: str, services: list[str]) -> None:
    if services:
        ports = {}
        for service in services:
            name, port = service.split("=")
            ports[name] = int(port)
        if kind == "twisted":
            twistedServices(ports)
        elif kind == "asyncio":
            asyncio.run(asyncioServices(ports))
        elif kind == "asyncio-uvloop":
            import uvloop

            uvloop.run(asyncioServices(ports))
        else:
            raise SystemExit(f"no services for peer {kind!r}")
        return
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
    main(sys.argv[1], sys.argv[2:])
