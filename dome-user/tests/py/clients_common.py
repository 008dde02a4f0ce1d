"""What every Python driver of the client matrix (tests/clients.rs) shares.

A driver is run as `DRIVER PLAN_JSON`. The plan names the era (`session` or
`stateless`), a per-feature timeout and, per feature, a `kind` and what it
needs (url, key, tool, arguments, what to expect). The features are written
once here (`kinds`) against an adapter each driver supplies: an async
context manager `open(spec, era, on_elicit=, on_sample=, on_log=)` yielding
an object with `version()`, `tools()`, `call(name, args, on_progress=None)`
(-> (is_error, text)), `resources()`, `read(uri)`, `prompts()`,
`prompt(name, args)`, `complete(prompt, arg, value)`. A feature returns None
on success or a short string saying what was wrong; the `error_*` kinds
return the text the client shows for the error it got (None when there was
no error) and `run` judges it. Prints one JSON object: {feature: {"ok": bool, "detail": str}}.
"""

import json
import sys
import time

import anyio


def shown(e: BaseException) -> str:
    """What a client shows of an exception: its type and text, and the
    JSON-RPC code, message and data where the client keeps them."""
    if isinstance(e, BaseExceptionGroup) and len(e.exceptions) >= 1:
        return " | ".join(shown(x) for x in e.exceptions)
    parts = [f"{type(e).__name__}: {e}"]
    err = getattr(e, "error", None)
    for obj in (err, e):
        if obj is None:
            continue
        for attr in ("code", "message", "data"):
            v = getattr(obj, attr, None)
            if v is not None and not callable(v):
                parts.append(f"{attr}={json.dumps(v, default=str)}")
    if e.__cause__ is not None:
        parts.append("cause: " + shown(e.__cause__))
    return " ".join(parts)[:600]


def headers(spec) -> dict:
    return {"Authorization": f"Bearer {spec['key']}"} if spec.get("key") else {}


def judge_error(spec, text):
    if text is None:
        return "no error reached the client"
    if any(s.lower() in text.lower() for s in spec["expect_any"]):
        return None
    return f"the client showed: {text}"


def kinds(open_client):
    async def connect(spec, era):
        async with open_client(spec, era) as c:
            want = "2025-11-25" if era == "session" else "2026-07-28"
            if c.version() != want:
                return f"protocol version {c.version()}"

    async def list_tools(spec, era):
        async with open_client(spec, era) as c:
            names = sorted(await c.tools())
            if names != sorted(spec["expect"]):
                return f"tools {names}"

    async def call(spec, era):
        async with open_client(spec, era) as c:
            is_error, text = await c.call(spec["tool"], spec["args"])
            if is_error or text != spec["expect"]:
                return f"result {text!r} (error: {is_error})"

    async def error_call(spec, era):
        async with open_client(spec, era) as c:
            for _ in range(spec.get("repeat", 1)):
                is_error, text = await c.call(spec["tool"], spec["args"])
                if is_error:
                    return f"tool error: {text}"
        return None

    async def error_connect(spec, era):
        async with open_client(spec, era) as c:
            await c.tools()
        return None

    async def resources(spec, era):
        async with open_client(spec, era) as c:
            uris = await c.resources()
            if spec["uri"] not in uris:
                return f"resources {uris}"
            text = await c.read(spec["uri"])
            if text != spec["expect"]:
                return f"read {text!r}"

    async def prompt(spec, era):
        async with open_client(spec, era) as c:
            names = await c.prompts()
            if spec["name"] not in names:
                return f"prompts {names}"
            text = await c.prompt(spec["name"], spec["args"])
            if text != spec["expect"]:
                return f"prompt {text!r}"

    async def completion(spec, era):
        async with open_client(spec, era) as c:
            values = await c.complete(spec["prompt"], spec["arg"], spec["value"])
            if values != spec["expect"]:
                return f"values {values}"

    async def progress(spec, era):
        seen = []

        async def on_progress(p, total, message):
            seen.append(p)

        async with open_client(spec, era) as c:
            is_error, text = await c.call(spec["tool"], spec["args"], on_progress=on_progress)
            if text != spec["expect"] or len(seen) != spec["count"]:
                return f"result {text!r}, progress {seen}"

    async def logs(spec, era):
        seen = []

        async def on_log(data):
            seen.append(str(data))

        async with open_client(spec, era, on_log=on_log) as c:
            is_error, text = await c.call(spec["tool"], spec["args"])
            await anyio.sleep(0.2)
            if text != spec["expect"] or spec["log"] not in seen:
                return f"result {text!r}, logs {seen}"

    async def cancel(spec, era):
        async with open_client(spec, era) as c:
            started = time.monotonic()
            with anyio.move_on_after(spec["after_ms"] / 1000) as scope:
                await c.call(spec["tool"], spec["args"])
            if not scope.cancelled_caught:
                return "the call finished before it was cancelled"
            ms = (time.monotonic() - started) * 1000
            if ms > spec["after_ms"] + 1500:
                return f"cancelling took {ms:.0f} ms"
            then = spec["then"]
            is_error, text = await c.call(then["tool"], then["args"])
            if text != then["expect"]:
                return f"the call after the cancelled one: {text!r} (error: {is_error})"

    def asking(spec, asked):
        async def on_elicit(message):
            asked.append(message)
            return spec["answer"]

        return on_elicit

    async def elicit_call(spec, era):
        asked = []
        async with open_client(spec, era, on_elicit=asking(spec, asked)) as c:
            is_error, text = await c.call(spec["tool"], spec["args"])
            if is_error or text != spec["expect"] or not asked:
                return f"asked {asked}, result {text!r} (error: {is_error})"

    async def elicit_prompt(spec, era):
        asked = []
        async with open_client(spec, era, on_elicit=asking(spec, asked)) as c:
            text = await c.prompt(spec["name"], spec["args"])
            if text != spec["expect"] or not asked:
                return f"asked {asked}, prompt {text!r}"

    async def elicit_resource(spec, era):
        asked = []
        async with open_client(spec, era, on_elicit=asking(spec, asked)) as c:
            text = await c.read(spec["uri"])
            if text != spec["expect"] or not asked:
                return f"asked {asked}, read {text!r}"

    async def sample_call(spec, era):
        asked = []

        async def on_sample(question):
            asked.append(question)
            return spec["answer"]

        async with open_client(spec, era, on_sample=on_sample) as c:
            is_error, text = await c.call(spec["tool"], spec["args"])
            if is_error or text != spec["expect"] or not asked:
                return f"asked {asked}, result {text!r} (error: {is_error})"

    return {k: v for k, v in locals().items() if k != "open_client" and k != "asking"}


async def run(kinds, plan) -> dict:
    out = {}
    for name, spec in plan["features"].items():
        kind = spec["kind"]
        fn = kinds.get(kind)
        started = time.monotonic()
        if fn is None:
            out[name] = {"ok": False, "detail": f"this client has no API for {kind}"}
            continue
        try:
            with anyio.fail_after(plan.get("timeout_s", 15)):
                if kind.startswith("error_"):
                    try:
                        text = await fn(spec, plan["era"])
                    except Exception as e:  # noqa: BLE001 - what the client raised is the point
                        text = shown(e)
                    detail = judge_error(spec, text)
                else:
                    detail = await fn(spec, plan["era"])
        except TimeoutError:
            detail = "timed out"
        except BaseException as e:  # noqa: BLE001 - ExceptionGroups included
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            detail = shown(e)
        out[name] = {"ok": detail is None, "detail": detail or "", "ms": int((time.monotonic() - started) * 1000)}
    return out


def main(open_client):
    """Runs the plan in argv[1] with the driver's adapter; prints the result."""
    plan = json.loads(sys.argv[1])
    result = anyio.run(run, kinds(open_client), plan)
    print(json.dumps(result))
    sys.stdout.flush()
