"""An MCP server that requires a bearer token, written with the official
Python SDK (MCPServer as an OAuth resource server: a `token_verifier` and
`auth` settings). It knows one token; any other is refused by the SDK's own
bearer middleware with its 401 (`WWW-Authenticate: Bearer
error="invalid_token", error_description="Authentication required"`).
Like Dome for an API key, it names no OAuth metadata (no
`resource_server_url`), and it serves no authorization endpoints.

Usage: bearer_upstream.py PORT TOKEN
Serves Streamable HTTP on 127.0.0.1:PORT/mcp in both protocol eras, with
one tool, `echo`.
"""

import sys

from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

TOKEN = sys.argv[2]


class OneToken:
    """Accepts TOKEN and nothing else."""

    async def verify_token(self, token: str) -> AccessToken | None:
        if token != TOKEN:
            return None
        return AccessToken(token=token, client_id="the-one-client", scopes=[])


mcp = MCPServer(
    "bearer-upstream",
    token_verifier=OneToken(),
    # The issuer is never contacted: the server only checks tokens.
    auth=AuthSettings(issuer_url="http://127.0.0.1:9/", resource_server_url=None),
)


@mcp.tool()
def echo(message: str) -> str:
    """Echoes a message."""
    return message


if __name__ == "__main__":
    mcp.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
