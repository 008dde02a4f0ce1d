// What the TypeScript drivers of the client matrix (tests/clients.rs) share:
// the plan (see tests/py/clients_common.py: the same format), the run loop
// with a timeout per feature, and the features written once against an
// adapter that hides how an SDK connects, registers handlers and calls.
import { join } from "node:path";
import { pathToFileURL } from "node:url";

/** Imports a file of an installed package (under target/clients/node). */
export function pkg(path) {
  const dir = process.env.DOME_CLIENTS_NODE_DIR;
  return import(pathToFileURL(join(dir, "node_modules", path)).href);
}

/** What a client shows of an error: its name and text, and the JSON-RPC
 * code and data where the SDK keeps them. */
export function shown(e) {
  if (e === null || typeof e !== "object") return String(e);
  const parts = [`${e.name ?? e.constructor?.name}: ${e.message}`];
  if (e.code !== undefined) parts.push(`code=${JSON.stringify(e.code)}`);
  if (e.data !== undefined) parts.push(`data=${JSON.stringify(e.data)}`);
  if (e.cause) parts.push(`cause: ${shown(e.cause)}`);
  return parts.join(" ").slice(0, 600);
}

export const headers = (spec) => (spec.key ? { Authorization: `Bearer ${spec.key}` } : {});
const text = (r) => (r.content ?? []).map((c) => c.text ?? "").join("");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function judgeError(spec, t) {
  if (t === null || t === undefined) return "no error reached the client";
  return spec.expect_any.some((s) => t.toLowerCase().includes(s.toLowerCase())) ? null : `the client showed: ${t}`;
}

/** The features, on an adapter `a`:
 * a.open(spec, era, {onElicit, onSample, onLog}) -> connected client;
 * a.call(client, name, args, opts) -> CallToolResult (opts: onprogress, signal, meta);
 * a.version(client) -> the negotiated protocol version. */
export function kinds(a) {
  const withClient = async (spec, era, fn, handlers = {}) => {
    const c = await a.open(spec, era, handlers);
    try {
      return await fn(c);
    } finally {
      await c.close().catch(() => {});
    }
  };
  const elicit = (spec, asked) => ({
    onElicit: async (params) => {
      asked.push(params.message);
      return { action: "accept", content: spec.answer };
    },
  });
  // A feature whose upstream asks the client mid-call: `handlers(asked)`
  // answer it and note what was asked; `run` gives [the text got, the
  // whole result]. It passes with the expected text, once asked.
  const asking = (spec, era, handlers, label, run) => {
    const asked = [];
    return withClient(
      spec,
      era,
      async (c) => {
        const [got, r] = await run(c);
        return got === spec.expect && asked.length
          ? null
          : `asked ${JSON.stringify(asked)}, ${label} ${JSON.stringify(r).slice(0, 300)}`;
      },
      handlers(asked),
    );
  };
  return {
    connect: (spec, era) =>
      withClient(spec, era, async (c) => {
        const want = era === "session" ? "2025-11-25" : "2026-07-28";
        const v = a.version(c);
        return v === want ? null : `protocol version ${v}`;
      }),
    list_tools: (spec, era) =>
      withClient(spec, era, async (c) => {
        const names = (await c.listTools()).tools.map((t) => t.name).sort();
        return JSON.stringify(names) === JSON.stringify([...spec.expect].sort()) ? null : `tools ${names}`;
      }),
    call: (spec, era) =>
      withClient(spec, era, async (c) => {
        const r = await a.call(c, spec.tool, spec.args);
        return !r.isError && text(r) === spec.expect ? null : `result ${JSON.stringify(r).slice(0, 300)}`;
      }),
    error_call: (spec, era) =>
      withClient(spec, era, async (c) => {
        for (let i = 0; i < (spec.repeat ?? 1); i++) {
          const r = await a.call(c, spec.tool, spec.args);
          if (r.isError) return `tool error: ${text(r)}`;
        }
        return null;
      }),
    error_connect: (spec, era) =>
      withClient(spec, era, async (c) => {
        await c.listTools();
        return null;
      }),
    resources: (spec, era) =>
      withClient(spec, era, async (c) => {
        const uris = (await c.listResources()).resources.map((r) => r.uri);
        if (!uris.includes(spec.uri)) return `resources ${uris}`;
        const r = await c.readResource({ uri: spec.uri });
        return r.contents[0]?.text === spec.expect ? null : `read ${JSON.stringify(r).slice(0, 300)}`;
      }),
    prompt: (spec, era) =>
      withClient(spec, era, async (c) => {
        const names = (await c.listPrompts()).prompts.map((p) => p.name);
        if (!names.includes(spec.name)) return `prompts ${names}`;
        const r = await c.getPrompt({ name: spec.name, arguments: spec.args });
        return r.messages[0]?.content?.text === spec.expect ? null : `prompt ${JSON.stringify(r).slice(0, 300)}`;
      }),
    completion: (spec, era) =>
      withClient(spec, era, async (c) => {
        const r = await c.complete({
          ref: { type: "ref/prompt", name: spec.prompt },
          argument: { name: spec.arg, value: spec.value },
        });
        const v = r.completion.values;
        return JSON.stringify(v) === JSON.stringify(spec.expect) ? null : `values ${JSON.stringify(v)}`;
      }),
    progress: (spec, era) =>
      withClient(spec, era, async (c) => {
        const seen = [];
        const r = await a.call(c, spec.tool, spec.args, { onprogress: (p) => seen.push(p.progress) });
        return text(r) === spec.expect && seen.length === spec.count
          ? null
          : `result ${JSON.stringify(text(r))}, progress ${JSON.stringify(seen)}`;
      }),
    logs: (spec, era) => {
      const seen = [];
      return withClient(
        spec,
        era,
        async (c) => {
          const r = await a.call(c, spec.tool, spec.args, { log: true });
          await sleep(200);
          return text(r) === spec.expect && seen.includes(spec.log)
            ? null
            : `result ${JSON.stringify(text(r))}, logs ${JSON.stringify(seen)}`;
        },
        { onLog: (params) => seen.push(String(params.data)) },
      );
    },
    cancel: (spec, era) =>
      withClient(spec, era, async (c) => {
        const abort = new AbortController();
        const started = Date.now();
        const timer = setTimeout(() => abort.abort("cancelled by the test"), spec.after_ms);
        let outcome;
        try {
          await a.call(c, spec.tool, spec.args, { signal: abort.signal });
          outcome = "the call finished before it was cancelled";
        } catch (e) {
          if (!abort.signal.aborted) throw e;
        } finally {
          clearTimeout(timer);
        }
        if (outcome) return outcome;
        const ms = Date.now() - started;
        if (ms > spec.after_ms + 1500) return `cancelling took ${ms} ms`;
        const r = await a.call(c, spec.then.tool, spec.then.args);
        return text(r) === spec.then.expect ? null : `the call after the cancelled one: ${JSON.stringify(r).slice(0, 300)}`;
      }),
    elicit_call: (spec, era) =>
      asking(spec, era, (asked) => elicit(spec, asked), "result", async (c) => {
        const r = await a.call(c, spec.tool, spec.args);
        return [r.isError ? undefined : text(r), r];
      }),
    elicit_prompt: (spec, era) =>
      asking(spec, era, (asked) => elicit(spec, asked), "prompt", async (c) => {
        const r = await c.getPrompt({ name: spec.name, arguments: spec.args });
        return [r.messages?.[0]?.content?.text, r];
      }),
    elicit_resource: (spec, era) =>
      asking(spec, era, (asked) => elicit(spec, asked), "read", async (c) => {
        const r = await c.readResource({ uri: spec.uri });
        return [r.contents?.[0]?.text, r];
      }),
    sample_call: (spec, era) =>
      asking(
        spec,
        era,
        (asked) => ({
          onSample: async (params) => {
            asked.push(params.messages[0]?.content?.text);
            return { role: "assistant", model: "fixed-test-model", content: { type: "text", text: spec.answer } };
          },
        }),
        "result",
        async (c) => {
          const r = await a.call(c, spec.tool, spec.args);
          return [r.isError ? undefined : text(r), r];
        },
      ),
  };
}

/** Runs the plan in argv[2] with `impl` ({kind: async (spec, era) => null | string})
 * and prints {feature: {ok, detail, ms}}. */
export async function main(impl) {
  const plan = JSON.parse(process.argv[2]);
  const out = {};
  for (const [name, spec] of Object.entries(plan.features)) {
    const fn = impl[spec.kind];
    const started = Date.now();
    let detail;
    if (!fn) {
      out[name] = { ok: false, detail: `this client has no API for ${spec.kind}` };
      continue;
    }
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => resolve("timed out"), plan.timeout_s * 1000);
    });
    const work = (async () => {
      if (spec.kind.startsWith("error_")) {
        let t;
        try {
          t = await fn(spec, plan.era);
        } catch (e) {
          t = shown(e);
        }
        return judgeError(spec, t);
      }
      try {
        return await fn(spec, plan.era);
      } catch (e) {
        return shown(e);
      }
    })();
    detail = await Promise.race([work, timeout]);
    clearTimeout(timer);
    out[name] = { ok: detail === null, detail: detail ?? "", ms: Date.now() - started };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
  // A client left hanging (a timed-out feature) must not keep the process alive.
  process.exit(0);
}
