#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from
real outputs: the messages an MCP client sends and the responses the bundled
demo upstream answers them with (HTTP/1.1 heads, chunked and SSE bodies),
the shipped config and policy, a real audit segment written by the audit
writer, and credentials the `auth` target's registry and identity provider
accept. Run from the workspace root after `cargo build -p dome-user -p dome-demo`:

    python3 fuzz/seeds.py

Each seed starts with the knob byte its target reads first (see the
target's doc comment). Files named `crash-*` are inputs a fuzz run once
failed on, committed by hand as regressions: this script keeps them."""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MESSAGES = {
    "initialize": {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "seed", "version": "1"}}},
    "tools_list": {"jsonrpc": "2.0", "id": "l1", "method": "tools/list", "params": {
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}},
    "echo_stateless": {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"message": "h\u00e9llo"}, "_meta": {
            "progressToken": "p1", "dome/intent": "say hello",
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}}},
    "slow_progress": {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "slow", "arguments": {"steps": 3, "delay_ms": 1},
        "_meta": {"progressToken": 42, "io.modelcontextprotocol/logLevel": "info",
                  "io.modelcontextprotocol/protocolVersion": "2026-07-28"}}},
    "records": {"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {
        "name": "records", "arguments": {"count": 2},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}},
    "cancelled": {"jsonrpc": "2.0", "method": "notifications/cancelled",
                  "params": {"requestId": 12, "reason": "no"}},
}


def exchange(port, body, accept):
    req = (
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"accept: {accept}\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(req)
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                return out
            out += b


def dechunk(body):
    out = b""
    while body:
        line, _, body = body.partition(b"\r\n")
        n = int(line.split(b";")[0], 16)
        if n == 0:
            return out
        out += body[:n]
        body = body[n + 2:]
    return out


def demo_seeds():
    exe = os.path.join(ROOT, "target", "debug", "dome-demo-upstream")
    port = free_port()
    demo = subprocess.Popen([exe, f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        for name, msg in MESSAGES.items():
            body = json.dumps(msg, ensure_ascii=False).encode()
            write("envelope", name, b"c" + body)
            for accept in ["application/json", "application/json, text/event-stream"]:
                wire = exchange(port, body, accept)
                sse = "event-stream" in accept
                tag = name + ("_sse" if sse else "")
                # h1: knob 0x40 cuts the wire about a quarter in.
                write("h1", tag, b"\x40" + wire)
                head, _, rest = wire.partition(b"\r\n\r\n")
                if b"text/event-stream" in head.lower():
                    events = dechunk(rest) if b"chunked" in head.lower() else rest
                    write("sse", tag, b"\x35" + events)
    finally:
        demo.kill()
        demo.wait()
    write("envelope", "batch", b"c" + json.dumps(
        [MESSAGES["tools_list"], MESSAGES["cancelled"]]).encode())
    write("envelope", "response", b"c" + b'{"jsonrpc":"2.0","id":9,"result":{"content":[]}}')
    write("h1", "head_100_continue",
          b"\x01HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nx:  \t\r\n\r\n")
    write("h1", "chunked_trailers",
          b"\x7fHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
          b"5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\n")
    write("sse", "line_ends", b"\x07data: a\r\ndata: b\r\rdata: c\n\n: keep-alive\r\n\r\nid: 1\ndata:\n\n")


def config_seeds():
    with open(os.path.join(ROOT, "configs", "dome.toml"), "rb") as f:
        write("config", "dome", f.read())
    write("config", "tenants", b"""[server]
listen = "127.0.0.1:8090"
[auth]
required = true
data_dir = "data"
[[tenant]]
name = "acme"
delegation = true
budget = { calls_per_s = 10.0, burst = 20 }
[tenant.jwt]
issuer = "https://idp.example"
jwks_file = "jwks.json"
required_scopes = ["mcp"]
[[agent]]
id = "acme-bot"
tenant = "acme"
labels = ["support"]
api_keys = ["00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"]
tool_budgets = { refund = { calls_per_s = 1.0, burst = 1 } }
[[upstream]]
name = "demo"
url = "http://127.0.0.1:8091/mcp"
prefix = "on_conflict"
""")


def policy_seeds():
    pdir = os.path.join(ROOT, "configs", "policies")
    for f in sorted(os.listdir(pdir)):
        with open(os.path.join(pdir, f), "rb") as fh:
            write("policy", "text_" + f.replace(".toml", ""), b"\x01" + fh.read())
    # Structured mode: the bytes are choices; a few spread patterns.
    write("policy", "choices_a", b"\x00" + bytes(range(0, 256, 3)))
    write("policy", "choices_b", b"\x00" + bytes((i * 37 + 11) % 256 for i in range(160)))
    write("policy", "choices_c", b"\x00" + bytes((i * 101 + 7) % 256 for i in range(240)))


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def auth_seeds():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key = Ed25519PrivateKey.from_private_bytes(bytes([7] * 32))

    def jwt(claims, kid="k1"):
        head = b64(json.dumps({"alg": "EdDSA", "typ": "JWT", "kid": kid}).encode())
        body = b64(json.dumps(claims).encode())
        sig = key.sign(f"{head}.{body}".encode())
        return f"{head}.{body}.{b64(sig)}"

    claims = {"iss": "https://idp.fuzz", "aud": "https://dome.fuzz/mcp", "sub": "alice",
              "client_id": "fuzz-bot", "exp": 2000, "nbf": 1000, "scope": "mcp other"}
    user = dict(claims)
    del user["client_id"]
    api_key = "dome_fuzz-bot_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
    write("auth", "api_key", f"Bearer {api_key}".encode())
    write("auth", "api_key_user", f"Bearer {api_key}\n\n\nbob@acme.test".encode())
    write("auth", "api_key_user_token",
          f"Bearer {api_key}\nx=1\n{jwt(user)}\n".encode())
    write("auth", "jwt", f"Bearer {jwt(claims)}".encode())
    write("auth", "jwt_scp", f"bearer {jwt(dict(claims, scope=None, scp=['mcp']))}".encode())
    write("auth", "jwt_no_scope", f"Bearer {jwt(dict(claims, scope='other'))}".encode())
    write("auth", "jwt_unknown_kid", f"Bearer {jwt(claims, kid='k2')}".encode())
    write("auth", "query_token", f"Bearer {api_key}\naccess_token=abc".encode())
    write("auth", "basic", b"Basic YWxhZGRpbjpvcGVuc2VzYW1l")


def audit_seeds():
    out = tempfile.mkdtemp(prefix="dome-fuzz-seeds-")
    try:
        env = dict(os.environ, DOME_FUZZ_SEEDS=out)
        subprocess.run(["cargo", "test", "-q", "-p", "dome-user", "--lib",
                        "audit::tests::writes_the_fuzz_seeds", "--", "--ignored", "--exact"],
                       cwd=ROOT, env=env, check=True)
        seg = sorted(f for f in os.listdir(out) if f.endswith(".seg"))[0]
        with open(os.path.join(out, seg), "rb") as f:
            whole = f.read()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    write("audit_recover", "segment", b"\x00" + whole)
    write("audit_recover", "segment_after_another", b"\x02" + whole)
    # A torn tail: the last frame cut in half (start-up recovery's case).
    write("audit_recover", "torn_tail", b"\x00" + whole[: len(whole) - 100])
    # A byte flipped mid-segment, CRCs resealed: reaches the record decoder.
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0x55
    write("audit_recover", "flipped_resealed", b"\x01" + bytes(flipped))


def main():
    # Inputs a fuzz run once failed on (`crash-*`, committed by hand as
    # regressions) stay; every other seed is written afresh.
    if os.path.isdir(CORPUS):
        for t in os.listdir(CORPUS):
            d = os.path.join(CORPUS, t)
            for f in os.listdir(d):
                if not f.startswith("crash-"):
                    os.remove(os.path.join(d, f))
    demo_seeds()
    config_seeds()
    policy_seeds()
    auth_seeds()
    audit_seeds()
    for t in sorted(os.listdir(CORPUS)):
        print(t, len(os.listdir(os.path.join(CORPUS, t))), "seeds")


if __name__ == "__main__":
    sys.exit(main())
