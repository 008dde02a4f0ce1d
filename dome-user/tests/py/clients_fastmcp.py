"""Client-matrix driver (tests/clients.rs) for fastmcp's `Client` (in
target/clients/fastmcp), in both eras: `mode="legacy"` speaks the session
era, `mode="2026-07-28"` the stateless one.

Usage: clients_fastmcp.py PLAN_JSON (see clients_common.py).
"""

from contextlib import asynccontextmanager

from clients_common import headers, main
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp_types import PromptReference


def text_of(content) -> str:
    return "".join(getattr(c, "text", "") for c in content)


class Adapter:
    def __init__(self, client: Client):
        self.c = client

    def version(self):
        return self.c.protocol_version

    async def tools(self):
        return [t.name for t in await self.c.list_tools()]

    async def call(self, name, args, on_progress=None):
        r = await self.c.call_tool(name, args, progress_handler=on_progress, raise_on_error=False)
        return r.is_error, text_of(r.content)

    async def resources(self):
        return [str(r.uri) for r in await self.c.list_resources()]

    async def read(self, uri):
        return text_of(await self.c.read_resource(uri))

    async def prompts(self):
        return [p.name for p in await self.c.list_prompts()]

    async def prompt(self, name, args):
        r = await self.c.get_prompt(name, args)
        return text_of(m.content for m in r.messages)

    async def complete(self, prompt, arg, value):
        r = await self.c.complete(PromptReference(type="ref/prompt", name=prompt), {"name": arg, "value": value})
        return r.values


@asynccontextmanager
async def open_client(spec, era, on_elicit=None, on_sample=None, on_log=None):
    kw = {}
    if on_elicit:

        async def elicit(message, response_type, params, context):
            return await on_elicit(message)

        kw["elicitation_handler"] = elicit
    if on_sample:

        async def sample(messages, params, context):
            return await on_sample(messages[0].content.text)

        kw["sampling_handler"] = sample
    if on_log:

        async def log(message):
            await on_log(message.data)

        kw["log_handler"] = log
    mode = "legacy" if era == "session" else "2026-07-28"
    transport = StreamableHttpTransport(spec["url"], headers=headers(spec))
    async with Client(transport, mode=mode, **kw) as c:
        yield Adapter(c)


if __name__ == "__main__":
    main(open_client)
