"""A tool that needs the client's input, through Dome.

Usage: client_elicit.py URL MODE
In the stateless era the upstream answers `input_required` and the client
retries with its answers and the request state; in the session era the
upstream asks mid-call. Prints JSON of what was seen.
"""

import json
import sys

import anyio
from mcp import Client
from mcp_types import ElicitResult


async def main(url: str, mode: str) -> None:
    asked = []

    async def on_elicit(context, params):
        asked.append(params.message)
        return ElicitResult(action="accept", content={"color": "teal"})

    async with Client(url, mode=mode, cache=None, elicitation_callback=on_elicit) as client:
        r = await client.call_tool("paint", {"thing": "fence"})
        print(json.dumps({"asked": asked, "text": r.content[0].text if r.content else "", "is_error": r.is_error}))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
