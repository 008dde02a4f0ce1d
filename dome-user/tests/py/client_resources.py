"""Prompts, resources, templates and completion through Dome.

Usage: client_resources.py URL MODE
Prints JSON of what was seen; exits 1 with the reason on a failed check.
"""

import base64
import json
import sys

import anyio
from mcp import Client
from mcp_types import PromptReference


async def main(url: str, mode: str) -> None:
    seen = {}
    async with Client(url, mode=mode, cache=None) as client:
        caps = client.server_capabilities
        seen["caps"] = [k for k in ("completions", "logging", "prompts", "resources", "tools") if getattr(caps, k, None) is not None]
        seen["prompts"] = sorted(p.name for p in (await client.list_prompts()).prompts)
        got = await client.get_prompt("two.greet", {"name": "Ada"})
        seen["greet_two"] = got.messages[0].content.text
        seen["resources"] = sorted(str(r.uri) for r in (await client.list_resources()).resources)
        seen["templates"] = sorted(t.uri_template for t in (await client.list_resource_templates()).resource_templates)
        text = await client.read_resource("notes://one/readme")
        seen["readme_one"] = text.contents[0].text
        blob = await client.read_resource("blob://two/bytes")
        seen["blob_two"] = list(base64.b64decode(blob.contents[0].blob))
        templated = await client.read_resource("users://two/42")
        seen["user_two_42"] = templated.contents[0].text
        done = await client.complete(PromptReference(type="ref/prompt", name="one.greet"), {"name": "name", "value": "Gr"})
        seen["completion"] = done.completion.values
    print(json.dumps(seen))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
