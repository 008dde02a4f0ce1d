"""The upstream the official conformance suite's server scenarios expect
(tools, resources and prompts with fixed names), written with the Python SDK.

Usage: conformance_fixture.py PORT
Serves Streamable HTTP on 127.0.0.1:PORT/mcp. `cargo xtask conformance` puts
Dome in front of it and runs the suite against both, so a failure can be told
apart: the fixture's or Dome's.
"""

import base64
import hashlib
import hmac
import json
import sys
from typing import Annotated

import anyio
from mcp.server.lowlevel.server import HandlerEntry
from mcp.server.mcpserver import Context, MCPServer, Resolve, Sample, UserMessage
from mcp.shared.exceptions import MCPError
from mcp_types import (
    AudioContent,
    Completion,
    CreateMessageResult,
    InputRequiredResult,
    EmbeddedResource,
    EmptyResult,
    SamplingMessage,
    SubscribeRequestParams,
    UnsubscribeRequestParams,
    ImageContent,
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
    """Returns simple text."""
    return [TextContent(type="text", text="This is a simple text response for testing.")]


@mcp.tool()
def test_image_content() -> list:
    """Returns an image."""
    return [ImageContent(type="image", data=PNG, mimeType="image/png")]


@mcp.tool()
def test_audio_content() -> list:
    """Returns audio."""
    return [AudioContent(type="audio", data=WAV, mimeType="audio/wav")]


@mcp.tool()
def test_embedded_resource() -> list:
    """Returns an embedded resource."""
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
    """Returns text, an image and a resource."""
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
    """Logs three messages while it runs."""
    await ctx.info("Tool execution started")
    await anyio.sleep(0.05)
    await ctx.info("Tool processing data")
    await anyio.sleep(0.05)
    await ctx.info("Tool execution completed")
    return "Logging test completed"


@mcp.tool()
def test_error_handling() -> str:
    """Always fails."""
    raise ValueError("This tool intentionally returns an error for testing")


@mcp.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Reports progress 0, 50, 100."""
    for p in (0, 50, 100):
        await ctx.report_progress(p, 100)
        await anyio.sleep(0.05)
    return "Progress test completed"


@mcp.resource("test://static-text", mime_type="text/plain")
def static_text() -> str:
    """A static text resource."""
    return "This is the content of the static text resource."


@mcp.resource("test://static-binary", mime_type="image/png")
def static_binary() -> bytes:
    """A static binary resource."""
    return base64.b64decode(PNG)


@mcp.resource("test://template/{id}/data", mime_type="application/json")
def template_data(id: str) -> str:
    """Data by id."""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@mcp.resource("test://watched-resource", mime_type="text/plain")
def watched() -> str:
    """A resource to subscribe to."""
    return "Watched resource content."


@mcp.prompt()
def test_simple_prompt() -> str:
    """A prompt without arguments."""
    return "This is a simple prompt for testing."


@mcp.prompt()
def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
    """A prompt with two arguments."""
    return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"


@mcp.prompt()
def test_prompt_with_embedded_resource(resourceUri: str) -> list:
    """A prompt embedding a resource."""
    return [
        UserMessage(
            content=EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri=resourceUri, mimeType="text/plain", text="Embedded resource content for testing."
                ),
            ),
        ),
        UserMessage(content=TextContent(type="text", text="Please process the embedded resource above.")),
    ]


@mcp.prompt()
def test_prompt_with_image() -> list:
    """A prompt with an image."""
    return [
        UserMessage(content=ImageContent(type="image", data=PNG, mimeType="image/png")),
        UserMessage(content=TextContent(type="text", text="Please analyze the image above.")),
    ]


@mcp.completion()
async def complete(ref, argument, context):
    return Completion(values=[v for v in ("paris", "park", "party") if v.startswith(argument.value)], total=3, hasMore=False)


@mcp.tool()
async def test_sampling(prompt: str, ctx: Context) -> str:
    """Asks the client's LLM."""
    result = await ctx.session.create_message(
        [SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
        max_tokens=100,
        related_request_id=ctx.request_id,
    )
    text = getattr(result.content, "text", "")
    return f"LLM response: {text}"


@mcp.tool()
async def test_elicitation(message: str, ctx: Context) -> str:
    """Asks the user."""
    schema = {
        "type": "object",
        "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"},
        },
        "required": ["username", "email"],
    }
    r = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
    return f"User response: action={r.action}, content={json.dumps(r.content)}"


@mcp.tool()
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """Asks with defaults for every primitive type."""
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "default": "John Doe"},
            "age": {"type": "integer", "default": 30},
            "score": {"type": "number", "default": 95.5},
            "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
            "verified": {"type": "boolean", "default": True},
        },
    }
    r = await ctx.session.elicit_form("Please review your information", schema, related_request_id=ctx.request_id)
    return f"Elicitation completed: action={r.action}, content={json.dumps(r.content)}"


@mcp.tool()
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """Asks with every enum variant."""
    schema = {
        "type": "object",
        "properties": {
            "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
            "titledSingle": {
                "type": "string",
                "oneOf": [
                    {"const": "value1", "title": "First Option"},
                    {"const": "value2", "title": "Second Option"},
                    {"const": "value3", "title": "Third Option"},
                ],
            },
            "legacyEnum": {
                "type": "string",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"],
            },
            "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
            "titledMulti": {
                "type": "array",
                "items": {
                    "anyOf": [
                        {"const": "value1", "title": "First Choice"},
                        {"const": "value2", "title": "Second Choice"},
                        {"const": "value3", "title": "Third Choice"},
                    ]
                },
            },
        },
    }
    r = await ctx.session.elicit_form("Please choose", schema, related_request_id=ctx.request_id)
    return f"Elicitation completed: action={r.action}, content={json.dumps(r.content)}"


# --- 2026-07-28: multi-round-trip requests (SEP-2322) ---------------------

ELICIT_NAME = {
    "method": "elicitation/create",
    "params": {
        "message": "What is your name?",
        "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    },
}
SAMPLE_CAPITAL = {
    "method": "sampling/createMessage",
    "params": {
        "messages": [{"role": "user", "content": {"type": "text", "text": "What is the capital of France?"}}],
        "maxTokens": 100,
    },
}
LIST_ROOTS = {"method": "roots/list", "params": {}}
SECRET = b"dome-conformance-fixture"


def _input_required(requests: dict, state: str | None = None) -> InputRequiredResult:
    body = {"resultType": "input_required", "inputRequests": requests}
    if state is not None:
        body["requestState"] = state
    return InputRequiredResult.model_validate(body)


def _answer(ctx: Context, key: str):
    responses = ctx.input_responses or {}
    return responses.get(key)


def _dump(value) -> dict:
    return value.model_dump(by_alias=True, exclude_none=True) if hasattr(value, "model_dump") else dict(value)


def _sign(state: str) -> str:
    return state + "." + hmac.new(SECRET, state.encode(), hashlib.sha256).hexdigest()


def _verified(signed: str | None) -> str | None:
    if not signed or "." not in signed:
        return None
    state, mac = signed.rsplit(".", 1)
    ok = hmac.compare_digest(mac, hmac.new(SECRET, state.encode(), hashlib.sha256).hexdigest())
    return state if ok else None


@mcp.tool()
def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    """Asks for a name with an input_required result."""
    got = _answer(ctx, "user_name")
    if got is None:
        return _input_required({"user_name": ELICIT_NAME})
    return f"Hello, {_dump(got).get('content', {}).get('name', '')}!"


@mcp.tool()
def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
    """Asks the client's LLM with an input_required result."""
    got = _answer(ctx, "capital_question")
    if got is None:
        return _input_required({"capital_question": SAMPLE_CAPITAL})
    return f"The model said: {_dump(got).get('content', {}).get('text', '')}"


@mcp.tool()
def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
    """Asks for the client's roots with an input_required result."""
    got = _answer(ctx, "client_roots")
    if got is None:
        return _input_required({"client_roots": LIST_ROOTS})
    roots = [r.get("uri") for r in _dump(got).get("roots", [])]
    return f"Roots: {', '.join(roots)}"


@mcp.tool()
def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
    """Round-trips its request state."""
    if _answer(ctx, "confirm") is None:
        return _input_required(
            {
                "confirm": {
                    "method": "elicitation/create",
                    "params": {
                        "message": "Please confirm",
                        "requestedSchema": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
                    },
                }
            },
            _sign("round-1"),
        )
    if _verified(ctx.request_state) != "round-1":
        raise MCPError(code=-32602, message="requestState failed its integrity check")
    return "state-ok"


@mcp.tool()
def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
    """Three rounds with evolving state."""
    state = _verified(ctx.request_state)
    if state is None:
        return _input_required(
            {"step1": {"method": "elicitation/create", "params": {"message": "Step 1: What is your name?",
             "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}},
            _sign("round-1"),
        )
    if state == "round-1":
        return _input_required(
            {"step2": {"method": "elicitation/create", "params": {"message": "Step 2: What is your favorite color?",
             "requestedSchema": {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}}}},
            _sign("round-2"),
        )
    return "All rounds complete"


@mcp.tool()
def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
    """Asks three things at once."""
    if _verified(ctx.request_state) != "multi":
        return _input_required(
            {
                "user_name": ELICIT_NAME,
                "greeting": {"method": "sampling/createMessage", "params": {"messages": [{"role": "user", "content": {"type": "text", "text": "Generate a greeting"}}], "maxTokens": 50}},
                "client_roots": LIST_ROOTS,
            },
            _sign("multi"),
        )
    return "Received all inputs"


@mcp.tool()
def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
    """Refuses a request state that was changed."""
    if ctx.request_state is None:
        return _input_required({"user_name": ELICIT_NAME}, _sign("tamper-check"))
    if _verified(ctx.request_state) != "tamper-check":
        raise MCPError(code=-32602, message="requestState failed its integrity check")
    return "state verified"


@mcp.tool()
def test_input_required_result_capabilities(ctx: Context) -> str | InputRequiredResult:
    """Asks only for what the client can answer."""
    if ctx.input_responses:
        return "Received the inputs"
    caps = ctx.client_capabilities
    requests = {}
    if caps is not None and caps.elicitation is not None:
        requests["user_name"] = ELICIT_NAME
    if caps is not None and caps.sampling is not None:
        requests["capital_question"] = SAMPLE_CAPITAL
    if not requests:
        return "The client can answer nothing"
    return _input_required(requests)


@mcp.prompt()
def test_input_required_result_prompt(ctx: Context) -> str | InputRequiredResult:
    """A prompt that needs context first."""
    got = _answer(ctx, "user_context")
    if got is None:
        return _input_required(
            {"user_context": {"method": "elicitation/create", "params": {"message": "What context should the prompt use?",
             "requestedSchema": {"type": "object", "properties": {"context": {"type": "string"}}, "required": ["context"]}}}}
        )
    return f"Use this context: {_dump(got).get('content', {}).get('context', '')}"


@mcp.tool()
def test_streaming_elicitation(ctx: Context) -> str | InputRequiredResult:
    """Asks for a name; on the stateless wire only as an input_required result."""
    got = _answer(ctx, "user_name")
    if got is None:
        return _input_required({"user_name": ELICIT_NAME})
    return "Thanks"


@mcp.tool()
async def test_logging_tool(ctx: Context) -> str:
    """Logs; a stateless caller that set no logLevel must not hear it."""
    await ctx.info("a log line")
    return "logged"


def _need_sampling() -> Sample:
    return Sample([SamplingMessage(role="user", content=TextContent(type="text", text="ping"))], max_tokens=5)


@mcp.tool()
def test_missing_capability(answer: Annotated[CreateMessageResult, Resolve(_need_sampling)]) -> str:
    """Needs the client's sampling capability."""
    return "sampled"


@mcp.tool()
async def test_trigger_tool_change(ctx: Context) -> str:
    """Announces a tool list change to `subscriptions/listen` streams."""
    await ctx.notify_tools_changed()
    return "tool list changed"


@mcp.tool()
async def test_trigger_prompt_change(ctx: Context) -> str:
    """Announces a prompt list change to `subscriptions/listen` streams."""
    await ctx.notify_prompts_changed()
    return "prompt list changed"


async def _subscribe(ctx, params) -> EmptyResult:
    return EmptyResult()


# MCPServer handles subscriptions through `subscriptions/listen`; the session
# era's resources/subscribe is registered on its low-level server.
for _method in ("resources/subscribe", "resources/unsubscribe"):
    _params = SubscribeRequestParams if _method.endswith("/subscribe") else UnsubscribeRequestParams
    mcp._lowlevel_server._request_handlers[_method] = HandlerEntry(_params, _subscribe)


if __name__ == "__main__":
    mcp.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
