"""Lists tools and calls `echo` (or `demo.echo`) and `add` through Dome.

Usage: client_isolation.py URL MODE
Prints JSON: the tool names, echo's text, add's text or the error it got.
"""

import json
import sys

import anyio
from mcp import Client
from mcp.shared.exceptions import MCPError


async def main(url: str, mode: str) -> None:
    seen = {}
    async with Client(url, mode=mode, cache=None) as client:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        seen["tools"] = names
        echo = "echo" if "echo" in names else "demo.echo"
        r = await client.call_tool(echo, {"message": "still here"})
        seen["echo"] = r.content[0].text
        try:
            r = await client.call_tool("add", {"a": 40, "b": 2})
            seen["add"] = r.content[0].text
        except MCPError as e:
            seen["add_error"] = e.error.message
    print(json.dumps(seen))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
