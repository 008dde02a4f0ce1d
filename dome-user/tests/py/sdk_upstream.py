"""An upstream MCP server written with the official Python SDK (MCPServer).

Usage: sdk_upstream.py PORT
Serves Streamable HTTP on 127.0.0.1:PORT/mcp in both protocol eras.
"""

import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer

mcp = MCPServer("sdk-upstream")


@mcp.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@mcp.tool()
def echo(message: str) -> str:
    """Echoes with a marker (clashes with the demo upstream's echo)."""
    return f"sdk:{message}"


@mcp.tool()
async def countdown(n: int, ctx: Context) -> str:
    """Counts down, reporting progress."""
    for i in range(n):
        await ctx.report_progress(i + 1, n, f"tick {i + 1}")
        await anyio.sleep(0.02)
    return "liftoff"


@mcp.tool()
def fail(reason: str) -> str:
    """Always fails with the given reason."""
    raise ValueError(reason)


if __name__ == "__main__":
    mcp.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
