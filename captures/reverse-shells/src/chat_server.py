"""A small WebSocket chat room: every text message a client sends is broadcast to all clients, and two simulated
room members post lines of their own at human intervals (messages pushed from the server side).

Usage: python3 chat_server.py HOST PORT SEED      (needs the `websockets` library; Debian python3-websockets)
"""
import asyncio
import json
import random
import sys
import time

import websockets

CLIENTS: set = set()
LINES = ["morning all", "is the staging deploy done?", "ci is green again", "who broke the lint job :)",
         "pushing the fix now", "lunch in 10?", "reviewing #412", "ok thanks", "ping me when it's merged", "brb"]


async def broadcast(user: str, text: str) -> None:
    message = json.dumps({"user": user, "text": text, "ts": round(time.time(), 3)})
    for ws in list(CLIENTS):
        try:
            await ws.send(message)
        except websockets.ConnectionClosed:
            pass


async def handler(ws, path=None) -> None:
    CLIENTS.add(ws)
    try:
        await ws.send(json.dumps({"type": "welcome", "room": "#build", "members": 3}))
        async for text in ws:
            await broadcast("you", text if isinstance(text, str) else text.decode(errors="replace"))
    finally:
        CLIENTS.discard(ws)


async def members(rng: random.Random) -> None:
    while True:
        await asyncio.sleep(rng.uniform(1.5, 5.0))
        await broadcast(rng.choice(["dana", "lee"]), rng.choice(LINES))


async def main(host: str, port: int, seed: int) -> None:
    async with websockets.serve(handler, host, port):
        await members(random.Random(seed))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
