"""The official Python SDK client through Dome with an API key.

Usage: client_auth.py URL KEY MODE
Sends the key (and the end user, in Dome-User) on every request. Prints
JSON: the tools listed, the identity headers the upstream's `whoami` tool
saw, and whether the same client without the key was served.
"""

import json
import sys

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, key: str, mode: str) -> None:
    out = {}
    headers = {"Authorization": f"Bearer {key}", "Dome-User": "carol"}
    async with httpx2.AsyncClient(headers=headers) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client:
            out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
            r = await client.call_tool("whoami", {})
            out["whoami"] = json.loads(r.content[0].text)
    try:
        async with Client(url, mode=mode, cache=None) as client:
            await client.list_tools()
        out["anonymous"] = "served"
    except Exception as e:  # the SDK raises on the 401
        out["anonymous"] = f"refused: {type(e).__name__}"
    print(json.dumps(out))


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:4])
