"""A WebSocket client that carries a byte stream in binary messages: stdin/stdout (an ssh ProxyCommand) or a local
TCP port, for WebSocket-to-TCP relays such as websockify that ship no client of their own.

Usage: python ws_stdio.py URI [--proxy URL]                     relay stdin/stdout
       python ws_stdio.py URI [--proxy URL] --listen HOST:PORT  relay every connection (one WebSocket each)
Built on `websockets` (PyPI): masked client frames, one binary message per read, RFC 6455 pings every 20 s; with
--proxy http://HOST:PORT the WebSocket goes through that proxy's CONNECT (websockets >= 15), without it through no
proxy at all (the environment's *_proxy variables are ignored).
"""
from __future__ import annotations

import asyncio
import sys

import websockets


async def pump_to_ws(reader: asyncio.StreamReader, ws) -> None:
    while True:
        data = await reader.read(65536)
        if not data:
            await ws.close()
            return
        await ws.send(data)


async def pump_from_ws(ws, write) -> None:
    async for message in ws:
        await write(message if isinstance(message, bytes) else message.encode())


PROXY: str | None = None


async def relay(uri: str, reader: asyncio.StreamReader, write, close) -> None:
    # "binary" is the subprotocol websockify expects from byte-stream clients (websockify README)
    async with websockets.connect(uri, subprotocols=["binary"], max_size=None, ping_interval=20,
                                  proxy=PROXY) as ws:
        up = asyncio.create_task(pump_to_ws(reader, ws))
        try:
            await pump_from_ws(ws, write)
        finally:
            up.cancel()
            close()


async def stdio(uri: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    async def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    await relay(uri, reader, write, lambda: None)


async def listen(uri: str, host: str, port: int) -> None:
    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()
        try:
            await relay(uri, reader, write, writer.close)
        except (OSError, websockets.ConnectionClosed):
            writer.close()

    server = await asyncio.start_server(conn, host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    global PROXY
    args = sys.argv[1:]
    uri = args.pop(0)
    if args[:1] == ["--proxy"]:
        PROXY = args[1]
        args = args[2:]
    if args[:1] == ["--listen"]:
        host, _, port = args[1].rpartition(":")
        asyncio.run(listen(uri, host, int(port)))
    else:
        try:
            asyncio.run(stdio(uri))
        except websockets.ConnectionClosed:
            pass


if __name__ == "__main__":
    main()
