"""A WebSocket chat (server and client) on `websockets` (PyPI), the benign counterpart of a tunnel in WebSocket:
short JSON messages typed by a person (a typing indicator, then the message), other people's messages pushed by the
server, and RFC 6455 ping/pong keepalives from both sides.

Usage: python ws_chat.py server HOST PORT
       python ws_chat.py client URI DURATION_S
"""
from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import websockets

LINES = ["hi all", "is the build green again?", "ok, looking at the flaky test now", "lunch at 12?",
         "pushed a fix, can someone review", "thanks!", "the staging deploy is slow today", "brb"]
PEERS = ["ana", "bo", "chen", "dita"]


async def serve(host: str, port: int) -> None:
    rng = random.Random(9)

    async def room(ws):
        async def others():
            while True:
                await asyncio.sleep(rng.uniform(1.0, 4.0))
                await ws.send(json.dumps({"type": "message", "from": rng.choice(PEERS),
                                          "text": rng.choice(LINES), "ts": time.time()}))

        task = asyncio.create_task(others())
        try:
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("type") == "message":
                    await ws.send(json.dumps({"type": "ack", "id": msg.get("id"), "ts": time.time()}))
        except websockets.ConnectionClosed:
            pass
        finally:
            task.cancel()

    async with websockets.serve(room, host, port, ping_interval=4, ping_timeout=10):
        await asyncio.Future()


async def client(uri: str, duration: float) -> None:
    rng = random.Random(4)
    end = time.time() + duration
    async with websockets.connect(uri, ping_interval=5, ping_timeout=10) as ws:
        async def read():
            async for _ in ws:
                pass

        reader = asyncio.create_task(read())
        n = 0
        while time.time() < end - 2:
            await asyncio.sleep(rng.uniform(1.5, 4.0))  # reading, thinking
            await ws.send(json.dumps({"type": "typing", "room": "dev"}))
            text = rng.choice(LINES)
            await asyncio.sleep(len(text) * rng.uniform(0.08, 0.2))  # typing the line
            n += 1
            await ws.send(json.dumps({"type": "message", "room": "dev", "id": n, "text": text}))
        await asyncio.sleep(max(0.0, end - time.time()))
        reader.cancel()


def main() -> None:
    if sys.argv[1] == "server":
        asyncio.run(serve(sys.argv[2], int(sys.argv[3])))
    else:
        asyncio.run(client(sys.argv[2], float(sys.argv[3])))


if __name__ == "__main__":
    main()
