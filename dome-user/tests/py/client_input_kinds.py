"""Prompts, reads and tools that need the client's input, through Dome.

Usage: client_input_kinds.py URL MODE [--no-elicitation]
Gets the `brief` prompt, reads `vault://one/gold` (both answer
`input_required` in the stateless era) and calls `approve` (which asks
mid-call, session style). With --no-elicitation the client declares no
elicitation capability. Prints JSON: per step its text, or its error's
code and message.
"""

import json
import sys

import anyio
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import ElicitResult


async def main(url: str, mode: str, elicit: bool) -> None:
    asked = []

    async def on_elicit(context, params):
        asked.append(params.message)
        if "brief" in params.message:
            return ElicitResult(action="accept", content={"audience": "operators"})
        if "Passphrase" in params.message:
            return ElicitResult(action="accept", content={"phrase": "open sesame"})
        return ElicitResult(action="accept", content={"approved": True})

    seen = {}
    kwargs = {"elicitation_callback": on_elicit} if elicit else {}
    async with Client(url, mode=mode, cache=None, **kwargs) as client:

        async def step(name, run):
            try:
                with anyio.fail_after(20):
                    seen[name] = {"text": await run()}
            except MCPError as e:
                seen[name] = {"code": e.error.code, "message": e.error.message}
            except Exception as e:  # noqa: BLE001 - what the client shows is the observation
                seen[name] = {"exception": f"{type(e).__name__}: {e}"}

        async def prompt():
            got = await client.get_prompt("brief", {"subject": "tides"})
            return got.messages[0].content.text

        async def read():
            got = await client.read_resource("vault://one/gold")
            return got.contents[0].text

        async def call():
            got = await client.call_tool("approve", {"action": "deploy"})
            return got.content[0].text if got.content else ""

        await step("prompt", prompt)
        await step("read", read)
        await step("call", call)
    seen["asked"] = asked
    print(json.dumps(seen))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], "--no-elicitation" not in sys.argv[3:])
