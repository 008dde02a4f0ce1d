// Client-matrix driver (tests/clients.rs) for the TypeScript SDK v2
// (`@modelcontextprotocol/client`), in both eras: `versionNegotiation:
// {mode: 'legacy'}` (its default) speaks the session era, `{mode: {pin:
// '2026-07-28'}}` the stateless one.
// Usage: node clients_ts_client2.mjs PLAN_JSON (see clients_common.mjs).
import { headers, kinds, main, pkg } from "./clients_common.mjs";

const sdk = await pkg("@modelcontextprotocol/client/dist/index.mjs");
const { Client, StreamableHTTPClientTransport, LOG_LEVEL_META_KEY } = sdk;

const adapter = {
  async open(spec, era, { onElicit, onSample, onLog } = {}) {
    const capabilities = {};
    if (onElicit) capabilities.elicitation = {};
    if (onSample) capabilities.sampling = {};
    const mode = era === "session" ? "legacy" : { pin: "2026-07-28" };
    const client = new Client(
      { name: "dome-client-matrix", version: "1" },
      { capabilities, versionNegotiation: { mode } },
    );
    if (onElicit) client.setRequestHandler("elicitation/create", (req) => onElicit(req.params));
    if (onSample) client.setRequestHandler("sampling/createMessage", (req) => onSample(req.params));
    if (onLog) client.setNotificationHandler("notifications/message", (n) => onLog(n.params));
    const transport = new StreamableHTTPClientTransport(new URL(spec.url), {
      requestInit: { headers: headers(spec) },
    });
    await client.connect(transport);
    return client;
  },
  call(client, name, args, opts = {}) {
    const { log, ...options } = opts;
    const params = { name, arguments: args };
    // Stateless servers log only for requests that ask to (SEP-2577).
    if (log) params._meta = { [LOG_LEVEL_META_KEY]: "info" };
    return client.callTool(params, options);
  },
  version(client) {
    return client.getNegotiatedProtocolVersion();
  },
};

await main(kinds(adapter));
