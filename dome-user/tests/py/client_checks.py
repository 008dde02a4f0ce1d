"""Drives Dome with the official Python SDK client and checks what it sees.

Usage: client_checks.py URL MODE
MODE is `legacy` (initialize handshake, session era) or `2026-07-28`
(stateless era). Prints one JSON object with what was observed; exits 1 with
the reason on the first check that fails.
"""

import json
import sys

import anyio
from mcp import Client
from mcp.shared.exceptions import MCPError


def check(cond, what):
    if not cond:
        print(f"CHECK FAILED: {what}", file=sys.stderr)
        sys.exit(1)


async def main(url: str, mode: str) -> None:
    seen = {}
    async with Client(url, mode=mode, cache=None) as client:
        seen["protocol_version"] = client.protocol_version
        tools = await client.list_tools()
        names = sorted(t.name for t in tools.tools)
        seen["tools"] = names

        r = await client.call_tool("demo.echo", {"message": "hello through dome"})
        check(not r.is_error, f"demo.echo failed: {r}")
        seen["demo_echo"] = r.content[0].text

        r = await client.call_tool("sdk.echo", {"message": "hi"})
        check(not r.is_error, f"sdk.echo failed: {r}")
        seen["sdk_echo"] = r.content[0].text

        r = await client.call_tool("add", {"a": 20, "b": 22})
        check(not r.is_error, f"add failed: {r}")
        seen["add"] = r.content[0].text

        progress = []

        async def on_progress(p, total, message):
            progress.append([p, total, message])

        r = await client.call_tool("slow", {"steps": 4, "delay_ms": 20}, progress_callback=on_progress)
        check(not r.is_error, f"slow failed: {r}")
        seen["slow"] = r.content[0].text
        seen["slow_progress"] = progress

        progress2 = []

        async def on_progress2(p, total, message):
            progress2.append([p, total, message])

        r = await client.call_tool("countdown", {"n": 3}, progress_callback=on_progress2)
        check(not r.is_error, f"countdown failed: {r}")
        seen["countdown"] = r.content[0].text
        seen["countdown_progress"] = progress2

        r = await client.call_tool("fail", {"reason": "no such luck"})
        seen["fail_is_error"] = r.is_error
        seen["fail_text"] = r.content[0].text if r.content else ""

        try:
            await client.call_tool("no_such_tool", {})
            seen["unknown_tool_error"] = None
        except MCPError as e:
            seen["unknown_tool_error"] = e.error.code

    print(json.dumps(seen))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
