"""Two session-era clients through Dome; only the subscriber hears of an update.

Usage: client_subscribe.py URL TOUCH_URL
A subscribes to demo://counter, B does not; TOUCH_URL makes the upstream
update the resource. Prints JSON: the notifications each client received.
"""

import json
import sys
import urllib.request

import anyio
from mcp import Client


def collector(into):
    async def handle(message):
        root = getattr(message, "root", message)
        method = getattr(root, "method", None)
        if method:
            params = getattr(root, "params", None)
            uri = str(getattr(params, "uri", "")) if params is not None else ""
            into.append([method, uri])

    return handle


async def main(url: str, touch: str) -> None:
    a, b = [], []
    async with Client(url, mode="legacy", cache=None, message_handler=collector(a)) as ca:
        async with Client(url, mode="legacy", cache=None, message_handler=collector(b)):
            await ca.subscribe_resource("demo://counter")
            await anyio.sleep(0.5)  # let both GET streams open
            await anyio.to_thread.run_sync(lambda: urllib.request.urlopen(urllib.request.Request(touch, method="POST")).read())
            with anyio.move_on_after(5):
                while not any(m == "notifications/resources/updated" for m, _ in a):
                    await anyio.sleep(0.05)
            await anyio.sleep(0.5)  # B gets a fair chance to (wrongly) hear it
            text = (await ca.read_resource("demo://counter")).contents[0].text
    print(json.dumps({"a": a, "b": b, "counter": text}))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
