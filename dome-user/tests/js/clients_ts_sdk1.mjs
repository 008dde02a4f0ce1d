// Client-matrix driver (tests/clients.rs) for the TypeScript SDK v1
// (`@modelcontextprotocol/sdk`), which speaks the session era only.
// Usage: node clients_ts_sdk1.mjs PLAN_JSON (see clients_common.mjs).
import { headers, kinds, main, pkg } from "./clients_common.mjs";

const { Client } = await pkg("@modelcontextprotocol/sdk/dist/esm/client/index.js");
const { StreamableHTTPClientTransport } = await pkg("@modelcontextprotocol/sdk/dist/esm/client/streamableHttp.js");
const types = await pkg("@modelcontextprotocol/sdk/dist/esm/types.js");

const adapter = {
  async open(spec, _era, { onElicit, onSample, onLog } = {}) {
    const capabilities = {};
    if (onElicit) capabilities.elicitation = {};
    if (onSample) capabilities.sampling = {};
    const client = new Client({ name: "dome-client-matrix", version: "1" }, { capabilities });
    if (onElicit) client.setRequestHandler(types.ElicitRequestSchema, (req) => onElicit(req.params));
    if (onSample) client.setRequestHandler(types.CreateMessageRequestSchema, (req) => onSample(req.params));
    if (onLog) client.setNotificationHandler(types.LoggingMessageNotificationSchema, (n) => onLog(n.params));
    const transport = new StreamableHTTPClientTransport(new URL(spec.url), {
      requestInit: { headers: headers(spec) },
    });
    await client.connect(transport);
    return client;
  },
  call(client, name, args, opts = {}) {
    const { log, ...options } = opts;
    return client.callTool({ name, arguments: args }, undefined, options);
  },
  version(client) {
    return client.transport?.protocolVersion ?? client._negotiatedProtocolVersion ?? "2025-11-25?";
  },
};

await main(kinds(adapter));
