"""Client-matrix driver (tests/clients.rs) for the official Python SDK 1.x
(`mcp`, the newest 1.x, in target/clients/mcp1): `ClientSession` over
`streamablehttp_client`, session era only.

Usage: clients_mcp1.py PLAN_JSON (see clients_common.py).
"""

from contextlib import asynccontextmanager

from clients_common import headers, main
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.types import CreateMessageResult, ElicitResult, PromptReference, TextContent


def text_of(content) -> str:
    return "".join(getattr(c, "text", "") for c in content)


class Adapter:
    def __init__(self, session: ClientSession, version: str):
        self.s = session
        self.v = version

    def version(self):
        return self.v

    async def tools(self):
        return [t.name for t in (await self.s.list_tools()).tools]

    async def call(self, name, args, on_progress=None):
        r = await self.s.call_tool(name, args, progress_callback=on_progress)
        return r.isError, text_of(r.content)

    async def resources(self):
        return [str(r.uri) for r in (await self.s.list_resources()).resources]

    async def read(self, uri):
        return text_of((await self.s.read_resource(uri)).contents)

    async def prompts(self):
        return [p.name for p in (await self.s.list_prompts()).prompts]

    async def prompt(self, name, args):
        r = await self.s.get_prompt(name, args)
        return text_of(m.content for m in r.messages)

    async def complete(self, prompt, arg, value):
        r = await self.s.complete(PromptReference(type="ref/prompt", name=prompt), {"name": arg, "value": value})
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

        kw["logging_callback"] = log
    async with streamablehttp_client(spec["url"], headers=headers(spec)) as (read, write, _):
        async with ClientSession(read, write, **kw) as session:
            init = await session.initialize()
            yield Adapter(session, init.protocolVersion)


if __name__ == "__main__":
    main(open_client)
