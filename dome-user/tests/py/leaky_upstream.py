"""An upstream MCP server (official Python SDK) that puts personal data in
every place a response can carry it, for the redaction tests, and sends
results as big as it is asked to, for the response limit.

Usage: leaky_upstream.py PORT
Serves Streamable HTTP on 127.0.0.1:PORT/mcp. Every value it leaks names
an address at leak.test, so a test can search a whole response for it.
"""

import sys

from typing import Annotated

import anyio
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CallToolResult,
    Completion,
    EmbeddedResource,
    ImageContent,
    PromptReference,
    ResourceLink,
    TextContent,
    TextResourceContents,
)
from pydantic import BaseModel

mcp = MCPServer("leaky-upstream")

# Base64 that a careless detector would take for a card number (it passes
# Luhn): image data must reach the client byte for byte.
PIXELS = "4111111111111111"


@mcp.tool()
def embedded() -> list:
    """Content of every kind, each with an address in it."""
    return [
        TextContent(type="text", text="plain ann@leak.test"),
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(
                uri="people://ann", mimeType="text/plain", text="embedded bob@leak.test"
            ),
        ),
        ResourceLink(
            type="resource_link",
            uri="people://carol",
            name="carol@leak.test",
            description="the profile of carol@leak.test",
        ),
        ImageContent(type="image", data=PIXELS, mimeType="image/png"),
    ]


@mcp.tool()
def keyed() -> dict[str, int]:
    """Records keyed by address."""
    return {"dan@leak.test": 1, "erin@leak.test": 2, "count": 2}


@mcp.tool()
def refuse() -> str:
    """Fails with a JSON-RPC error that names the caller."""
    raise MCPError(code=-32000, message="no access for fay@leak.test", data={"who": "fay@leak.test"})


@mcp.tool()
async def chatty(ctx: Context) -> str:
    """Reports progress and logs, both naming someone, then finishes."""
    await ctx.report_progress(1, 2, "working for gil@leak.test")
    await ctx.info("looked up hal@leak.test")
    await anyio.sleep(0.02)
    return "done"


@mcp.tool()
def hidden() -> CallToolResult:
    """Addresses in `_meta`, and behind zero-width and fullwidth characters."""
    return CallToolResult(
        content=[
            TextContent(
                type="text",
                text="zero-width oli\u200b@leak\u200d.test",
                _meta={"owner": "pam@leak.test"},
            ),
            TextContent(type="text", text="fullwidth \uff51\uff55\uff49\uff4e\uff20leak.test"),
        ],
        _meta={"owner": "ned@leak.test", "history": [{"by": "rob@leak.test"}]},
    )


@mcp.tool()
def deep() -> CallToolResult:
    """Structured content nested deeper than a JSON reader may go."""
    v: object = "ivy@leak.test"
    for _ in range(200):
        v = {"n": v}
    return CallToolResult(content=[TextContent(type="text", text="deep")], structuredContent={"deep": v})


@mcp.tool()
async def deep_streamed(ctx: Context) -> CallToolResult:
    """The same, after a progress message (so it comes as a stream)."""
    await ctx.report_progress(1, 1, "almost")
    return deep()


@mcp.tool()
def big(kib: int) -> str:
    """A result of about `kib` KiB."""
    return "x" * (kib * 1024)


@mcp.tool()
async def big_streamed(kib: int, ctx: Context) -> str:
    """The same, after a progress message (so it comes as a stream)."""
    await ctx.report_progress(1, 1, "almost")
    return "x" * (kib * 1024)


class Color(BaseModel):
    color: str


def ask_about_someone() -> Elicit[Color]:
    return Elicit("Which colour for pat@leak.test?", Color)


@mcp.tool()
def paint(thing: str, choice: Annotated[Color, Resolve(ask_about_someone)]) -> str:
    """Asks the client a question that names someone (elicitation)."""
    return f"{thing} painted {choice.color}"


@mcp.resource("people://all", mime_type="text/plain")
def people() -> str:
    """A directory listing."""
    return "jon@leak.test, kim@leak.test"


@mcp.prompt()
def contact(who: str) -> str:
    """A prompt that names someone."""
    return f"Write to {who} and copy lee@leak.test"


@mcp.completion()
async def complete(ref, argument, context):
    if isinstance(ref, PromptReference):
        return Completion(values=["max@leak.test", "nobody"])
    return None


if __name__ == "__main__":
    mcp.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
