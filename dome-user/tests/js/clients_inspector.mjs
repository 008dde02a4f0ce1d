// Client-matrix driver (tests/clients.rs) for the MCP Inspector's CLI mode
// (`@modelcontextprotocol/inspector` 2.x: `mcp-inspector --cli URL --transport
// http --protocol-era legacy|modern --format json --method M …`; the
// separate `@modelcontextprotocol/inspector-cli` is its deprecated v1 and
// does not run outside the Inspector's own tree). Each feature is one or two
// runs of the CLI, as a user would type them; what it prints (stdout and
// stderr) is what it shows. It has no way to answer completion, progress,
// logs, cancellation, elicitation or sampling: those kinds are absent.
// Its catalog file goes to a temporary folder (MCP_CATALOG_PATH), not $HOME.
// Usage: node clients_inspector.mjs PLAN_JSON (see clients_common.mjs).
import { spawn } from "node:child_process";
import { join } from "node:path";
import { main } from "./clients_common.mjs";

import { tmpdir } from "node:os";

const CLI = join(process.env.DOME_CLIENTS_NODE_DIR, "node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js");
const catalog = join(tmpdir(), `dome-clients-inspector-${process.pid}.json`);

/** Runs the CLI: {code, out (stdout), shown (stdout and stderr)}. */
function inspector(spec, args) {
  const era = ERA === "session" ? "legacy" : "modern";
  const argv = [CLI, "--cli", spec.url, "--transport", "http", "--protocol-era", era, "--format", "json", "-q"];
  if (spec.key) argv.push("--header", `Authorization: Bearer ${spec.key}`);
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...argv, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, MCP_CATALOG_PATH: catalog },
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("close", (code) => resolve({ code, out, shown: `${out}\n${err}`.trim() }));
  });
}

async function json(spec, args) {
  const r = await inspector(spec, args);
  if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.shown.slice(-500)}`);
  const v = JSON.parse(r.out);
  return v.result ?? v;
}

const ERA = JSON.parse(process.argv[2]).era;
const toolArgs = (args) => ["--tool-args-json", JSON.stringify(args)];
const text = (r) => (r.content ?? []).map((c) => c.text ?? "").join("");

await main({
  async connect(spec) {
    await json(spec, ["--method", "tools/list"]);
    return null;
  },
  async list_tools(spec) {
    const names = (await json(spec, ["--method", "tools/list"])).tools.map((t) => t.name).sort();
    return JSON.stringify(names) === JSON.stringify([...spec.expect].sort()) ? null : `tools ${names}`;
  },
  async call(spec) {
    const r = await json(spec, ["--method", "tools/call", "--tool-name", spec.tool, ...toolArgs(spec.args)]);
    return !r.isError && text(r) === spec.expect ? null : `result ${JSON.stringify(r).slice(0, 300)}`;
  },
  async error_call(spec) {
    for (let i = 0; i < (spec.repeat ?? 1); i++) {
      const r = await inspector(spec, ["--method", "tools/call", "--tool-name", spec.tool, ...toolArgs(spec.args)]);
      if (r.code !== 0 || /"isError":\s*true/.test(r.out)) return r.shown.slice(-600);
    }
    return null;
  },
  async error_connect(spec) {
    const r = await inspector(spec, ["--method", "tools/list"]);
    return r.code !== 0 ? r.shown.slice(-600) : null;
  },
  async resources(spec) {
    const uris = (await json(spec, ["--method", "resources/list"])).resources.map((r) => r.uri);
    if (!uris.includes(spec.uri)) return `resources ${uris}`;
    const r = await json(spec, ["--method", "resources/read", "--uri", spec.uri]);
    return r.contents[0]?.text === spec.expect ? null : `read ${JSON.stringify(r).slice(0, 300)}`;
  },
  async prompt(spec) {
    const names = (await json(spec, ["--method", "prompts/list"])).prompts.map((p) => p.name);
    if (!names.includes(spec.name)) return `prompts ${names}`;
    const args = Object.entries(spec.args).flatMap(([k, v]) => ["--prompt-args", `${k}=${v}`]);
    const r = await json(spec, ["--method", "prompts/get", "--prompt-name", spec.name, ...args]);
    return r.messages[0]?.content?.text === spec.expect ? null : `prompt ${JSON.stringify(r).slice(0, 300)}`;
  },
});
