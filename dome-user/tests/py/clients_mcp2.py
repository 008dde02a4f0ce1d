"""Client-matrix driver (tests/clients.rs) for the official Python SDK 2.x
(`mcp`, target/pyenv), in both eras: `Client(..., mode="legacy")` speaks the
session era, `mode="2026-07-28"` the stateless one.

Usage: clients_mcp2.py PLAN_JSON (see clients_common.py).
"""

from contextlib import asynccontextmanager

import httpx2
from clients_common import headers, main
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CreateMessageResult, ElicitResult, PromptReference, TextContent


def text_of(content) -> str:
    return "".join(getattr(c, "text", "") for c in content)


class Adapter:
    def __init__(self, client: Client):
        self.c = client

    def version(self):
        return self.c.protocol_version

    async def tools(self):
        return [t.name for t in (await self.c.list_tools()).tools]

    async def call(self, name, args, on_progress=None):
        r = await self.c.call_tool(name, args, progress_callback=on_progress)
        return r.is_error, text_of(r.content)

    async def resources(self):
        return [str(r.uri) for r in (await self.c.list_resources()).resources]

    async def read(self, uri):
        return text_of((await self.c.read_resource(uri)).contents)

    async def prompts(self):
        return [p.name for p in (await self.c.list_prompts()).prompts]

    async def prompt(self, name, args):
        r = await self.c.get_prompt(name, args)
        return text_of(m.content for m in r.messages)

    async def complete(self, prompt, arg, value):
        r = await self.c.complete(PromptReference(type="ref/prompt", name=prompt), {"name": arg, "value": value})
        return r.completion.values


@asynccontextmanager
async def open_client(spec, era, on_elicit=None, on_sample=None, on_log=None):
    kw = {}
    if on_elicit:

        async def elicit(context, params):
            return ElicitResult(action="accept", content=await on_elicit(params.message))

        kw["elicitation_callback"] = elicit
    if on_sample:

        async def sample(context, params):
            answer = await on_sample(params.messages[0].content.text)
            return CreateMessageResult(role="assistant", content=TextContent(type="text", text=answer), model="fixed")

        kw["sampling_callback"] = sample
    if on_log:

        async def log(params):
            await on_log(params.data)

        # The stateless era sends logs only to requests that ask (SEP-2577).
        kw.update(logging_callback=log, log_level="info")
    mode = "legacy" if era == "session" else "2026-07-28"
    async with httpx2.AsyncClient(headers=headers(spec)) as http:
        transport = streamable_http_client(spec["url"], http_client=http)
        async with Client(transport, mode=mode, cache=None, **kw) as c:
            yield Adapter(c)


if __name__ == "__main__":
    main(open_client)
