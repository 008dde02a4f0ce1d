"""Two `subscriptions/listen` streams through Dome (2026-07-28 client).

Usage: client_listen.py URL TOUCH_URL TOOLS_CHANGED_URL STATS_URL
Stream A asks for updates of demo://counter, stream B for tool list changes.
TOUCH_URL makes the upstream update the resource, TOOLS_CHANGED_URL change
its tool list. Prints JSON: each stream's honored filter and events, and the
upstream's open listen streams while both were open and after both closed.
"""

import json
import sys
import urllib.request

import anyio
from mcp import Client
from mcp.shared.subscriptions import ResourceUpdated, ToolsListChanged


def post(url: str) -> dict:
    return json.loads(urllib.request.urlopen(urllib.request.Request(url, method="POST")).read())


def get(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url).read())


def describe(event) -> list:
    if isinstance(event, ResourceUpdated):
        return ["resource_updated", event.uri]
    if isinstance(event, ToolsListChanged):
        return ["tools_list_changed"]
    return [type(event).__name__]


async def main(url: str, touch: str, tools_changed: str, stats: str) -> None:
    out = {"a": [], "b": []}
    async with Client(url, mode="2026-07-28", cache=None) as client:
        async with client.listen(resource_subscriptions=["demo://counter"]) as a:
            async with client.listen(tools_list_changed=True) as b:
                out["a_honored"] = a.honored.model_dump(by_alias=True, exclude_none=True)
                out["b_honored"] = b.honored.model_dump(by_alias=True, exclude_none=True)
                out["upstream_listens_open"] = (await anyio.to_thread.run_sync(get, stats))["listens"]

                async def drain(sub, into):
                    async for event in sub:
                        into.append(describe(event))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(drain, a, out["a"])
                    tg.start_soon(drain, b, out["b"])
                    await anyio.to_thread.run_sync(post, touch)
                    await anyio.to_thread.run_sync(post, tools_changed)
                    with anyio.move_on_after(5):
                        while not (out["a"] and out["b"]):
                            await anyio.sleep(0.05)
                    await anyio.sleep(0.5)  # time for a misrouted event to show up
                    tg.cancel_scope.cancel()
        text = (await client.read_resource("demo://counter")).contents[0].text
        out["counter"] = text
    # Dome lets go of the upstream subscription once no stream wants it.
    with anyio.move_on_after(5):
        while True:
            listens = (await anyio.to_thread.run_sync(get, stats))["listens"]
            if not any(l["uris"] for l in listens):
                break
            await anyio.sleep(0.1)
    out["upstream_listens_after"] = listens
    print(json.dumps(out))


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:5])
