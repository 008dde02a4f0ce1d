"""An upstream MCP server written with the official Python SDK (MCPServer).

Usage: sdk_upstream.py PORT [FLAVOR]
Serves Streamable HTTP on 127.0.0.1:PORT/mcp in both protocol eras. FLAVOR
(default `one`) names its resources and marks its prompt, so two instances
offer distinguishable content.
"""

import sys
from typing import Annotated

import anyio
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve, Sample
from mcp_types import Completion, CreateMessageResult, InputRequiredResult, PromptReference, SamplingMessage, TextContent
from pydantic import BaseModel

FLAVOR = sys.argv[2] if len(sys.argv) > 2 else "one"
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


class Color(BaseModel):
    color: str


def ask_color() -> Elicit[Color]:
    return Elicit("Which colour?", Color)


@mcp.tool()
def paint(thing: str, choice: Annotated[Color, Resolve(ask_color)]) -> str:
    """Paints a thing in a colour the client is asked for (elicitation)."""
    return f"{thing} painted {choice.color}"


class Approval(BaseModel):
    approved: bool


@mcp.tool()
async def approve(action: str, ctx: Context) -> str:
    """Asks mid-call, session style (`ctx.elicit`): works only in the session era."""
    answer = await ctx.elicit(f"Approve {action}?", Approval)
    approved = answer.action == "accept" and answer.data.approved
    return f"{action}: {'approved' if approved else 'refused'}"


def ask_llm_question(question: str) -> Sample:
    return Sample([SamplingMessage(role="user", content=TextContent(type="text", text=question))], max_tokens=50)


@mcp.tool()
def ask_llm(question: str, answer: Annotated[CreateMessageResult, Resolve(ask_llm_question)]) -> str:
    """Asks the client's model a question (sampling)."""
    content = answer.content
    text = content.text if isinstance(content, TextContent) else ""
    return f"the model says: {text}"


def _ask(key: str, message: str, field: str) -> InputRequiredResult:
    schema = {"type": "object", "properties": {field: {"type": "string"}}, "required": [field]}
    return InputRequiredResult.model_validate(
        {
            "resultType": "input_required",
            "inputRequests": {key: {"method": "elicitation/create", "params": {"message": message, "requestedSchema": schema}}},
        }
    )


def _given(ctx: Context, key: str, field: str) -> str | None:
    answer = (ctx.input_responses or {}).get(key)
    if answer is None:
        return None
    data = answer.model_dump(by_alias=True, exclude_none=True) if hasattr(answer, "model_dump") else dict(answer)
    return (data.get("content") or {}).get(field)


@mcp.prompt()
def brief(subject: str, ctx: Context) -> str | InputRequiredResult:
    """A prompt that asks the client who it is for first (stateless era: input_required)."""
    audience = _given(ctx, "audience", "audience")
    if audience is None:
        return _ask("audience", "Who is the brief for?", "audience")
    return f"Brief on {subject} for {audience} from {FLAVOR}"


@mcp.resource(f"vault://{FLAVOR}/{{item}}")
def vault(item: str, ctx: Context) -> str | InputRequiredResult:
    """A templated resource that asks for a passphrase first (stateless era: input_required)."""
    phrase = _given(ctx, "phrase", "phrase")
    if phrase is None:
        return _ask("phrase", f"Passphrase for {item}?", "phrase")
    return f"{item} opened with {phrase}"


@mcp.resource(f"notes://{FLAVOR}/readme", mime_type="text/plain")
def readme() -> str:
    """A text resource."""
    return f"readme of {FLAVOR}"


@mcp.resource(f"blob://{FLAVOR}/bytes", mime_type="application/octet-stream")
def blob() -> bytes:
    """A binary resource."""
    return bytes([0, 1, 2, 250, 251, 252])


@mcp.resource(f"users://{FLAVOR}/{{user_id}}")
def user(user_id: str) -> str:
    """A templated resource."""
    return f"user {user_id} of {FLAVOR}"


@mcp.prompt()
def greet(name: str) -> str:
    """Greets someone."""
    return f"Hello {name} from {FLAVOR}"


@mcp.completion()
async def complete(ref, argument, context):
    if isinstance(ref, PromptReference) and argument.name == "name":
        return Completion(values=[f"{argument.value}-{FLAVOR}"])
    return None


if __name__ == "__main__":
    mcp.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
