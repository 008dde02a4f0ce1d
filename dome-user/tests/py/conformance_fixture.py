"""The upstream the official conformance suite's server scenarios expect
(tools, resources and prompts with fixed names), written with the Python SDK.

Usage: conformance_fixture.py PORT
Serves Streamable HTTP on 127.0.0.1:PORT/mcp. `cargo xtask conformance` puts
Dome in front of it and runs the suite against both, so a failure can be told
apart: the fixture's or Dome's.
"""

import base64
import json
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import (
    AudioContent,
    Completion,
    EmbeddedResource,
    ImageContent,
    PromptMessage,
    TextContent,
    TextResourceContents,
)

# A 1x1 red PNG and a minimal WAV (44-byte header, no samples).
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
        "0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082"
    )
).decode()
WAV = base64.b64encode(
    b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x40\x1f\x00\x00\x80\x3e\x00\x00\x02\x00\x10\x00data\x00\x00\x00\x00"
).decode()

mcp = MCPServer("dome-conformance-fixture")


@mcp.tool()
def test_simple_text() -> list:
    return [TextContent(type="text", text="This is a simple text response for testing.")]


@mcp.tool()
def test_image_content() -> list:
    return [ImageContent(type="image", data=PNG, mimeType="image/png")]


@mcp.tool()
def test_audio_content() -> list:
    return [AudioContent(type="audio", data=WAV, mimeType="audio/wav")]


@mcp.tool()
def test_embedded_resource() -> list:
    return [
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(
                uri="test://embedded-resource", mimeType="text/plain", text="This is an embedded resource content."
            ),
        )
    ]


@mcp.tool()
def test_multiple_content_types() -> list:
    return [
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=PNG, mimeType="image/png"),
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(
                uri="test://mixed-content-resource",
                mimeType="application/json",
                text=json.dumps({"test": "data", "value": 123}),
            ),
        ),
    ]


@mcp.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    await ctx.info("Tool execution started")
    await anyio.sleep(0.05)
    await ctx.info("Tool processing data")
    await anyio.sleep(0.05)
    await ctx.info("Tool execution completed")
    return "Logging test completed"


@mcp.tool()
def test_error_handling() -> str:
    raise ValueError("This tool intentionally returns an error for testing")


@mcp.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    for p in (0, 50, 100):
        await ctx.report_progress(p, 100)
        await anyio.sleep(0.05)
    return "Progress test completed"


@mcp.resource("test://static-text", mime_type="text/plain")
def static_text() -> str:
    return "This is the content of the static text resource."


@mcp.resource("test://static-binary", mime_type="image/png")
def static_binary() -> bytes:
    return base64.b64decode(PNG)


@mcp.resource("test://template/{id}/data", mime_type="application/json")
def template_data(id: str) -> str:
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@mcp.resource("test://watched-resource", mime_type="text/plain")
def watched() -> str:
    return "Watched resource content."


@mcp.prompt()
def test_simple_prompt() -> str:
    return "This is a simple prompt for testing."


@mcp.prompt()
def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
    return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"


@mcp.prompt()
def test_prompt_with_embedded_resource(resourceUri: str) -> list:
    return [
        PromptMessage(
            role="user",
            content=EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri=resourceUri, mimeType="text/plain", text="Embedded resource content for testing."
                ),
            ),
        ),
        PromptMessage(role="user", content=TextContent(type="text", text="Please process the embedded resource above.")),
    ]


@mcp.prompt()
def test_prompt_with_image() -> list:
    return [
        PromptMessage(role="user", content=ImageContent(type="image", data=PNG, mimeType="image/png")),
        PromptMessage(role="user", content=TextContent(type="text", text="Please analyze the image above.")),
    ]


@mcp.completion()
async def complete(ref, argument, context):
    return Completion(values=[v for v in ("paris", "park", "party") if v.startswith(argument.value)], total=3, hasMore=False)


if __name__ == "__main__":
    mcp.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
