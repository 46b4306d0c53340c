// Prints who is online: a table of the connected clients (from a snapshot),
// then every arrival and departure as it happens.
//
//   node dist/examples/who-is-online.js [--address HOST:PORT]
//       [--api-key KEY --api-token TOKEN] [--prefix P] [--seconds N]
//       [--snapshot-only]
//
// The address and credentials fall back to CONNSTATE_ADDRESS,
// CONNSTATE_API_KEY and CONNSTATE_API_TOKEN (the address to
// 127.0.0.1:50051). Without --seconds or --snapshot-only it runs until
// interrupted, then prints the table once more.
import { parseArgs } from "node:util";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ChangeKind,
  ConnectionStatus,
  type ConnectionState,
  ConnstateClient,
  MqttProtocol,
  toDate,
} from "../src/index.js";

const env = (name: string): string | undefined => process.env[name] || undefined;
const { values: flags } = parseArgs({
  options: {
    address: { type: "string", default: env("CONNSTATE_ADDRESS") ?? "127.0.0.1:50051" },
    "api-key": { type: "string", default: env("CONNSTATE_API_KEY") },
    "api-token": { type: "string", default: env("CONNSTATE_API_TOKEN") },
    prefix: { type: "string", default: "" },
    seconds: { type: "string" },
    "snapshot-only": { type: "boolean", default: false },
  },
});
const apiKey = flags["api-key"];
const token = flags["api-token"];
if ((apiKey === undefined) !== (token === undefined)) {
  console.error("who-is-online: give the API key and its token together (--api-key/--api-token)");
  process.exit(2);
}
const seconds = flags.seconds !== undefined ? Number(flags.seconds) : undefined;

const protocols: Record<number, string> = {
  [MqttProtocol.V3_1]: "3.1",
  [MqttProtocol.V3_1_1]: "3.1.1",
  [MqttProtocol.V5_0]: "5.0",
};

function time(state: ConnectionState): string {
  return toDate(state.lastConnectTime)?.toISOString().replace(".000Z", "Z") ?? "-";
}

function printTable(online: Map<string, ConnectionState>, revision: bigint): void {
  const rows = [...online.values()].sort((a, b) => a.clientId.localeCompare(b.clientId));
  const header = ["CLIENT", "SINCE", "FROM", "MQTT", "BROKER"];
  const cells = rows.map((s) => [
    s.clientId,
    time(s),
    `${s.clientAddr}:${s.port}`,
    protocols[s.mqttConnectProtocol] ?? "?",
    s.broker,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((v, i) => v.padEnd(widths[i]!)).join("  ").trimEnd();
  console.log(`== online at revision ${revision}`);
  console.log(line(header));
  for (const c of cells) console.log(line(c));
  console.log(`${rows.length} online`);
}

const client = new ConnstateClient({
  address: flags.address,
  ...(apiKey !== undefined && token !== undefined ? { credentials: { apiKey, token } } : {}),
});
const online = new Map<string, ConnectionState>();
const stop = new AbortController();
process.once("SIGINT", () => stop.abort());
if (seconds !== undefined) setTimeout(() => stop.abort(), seconds * 1000).unref();

let revision = 0n;
const watch = client.watch({
  includeSnapshot: true,
  filter: { connectionStatus: ConnectionStatus.CONNECTED, clientIdPrefix: flags.prefix },
  signal: stop.signal,
});
try {
  for await (const event of watch) {
    switch (event.type) {
      case "resync":
        console.log(`(resynchronising: ${event.reason.rawMessage})`);
        online.clear();
        break;
      case "snapshot":
        if (event.state) online.set(event.state.clientId, event.state);
        break;
      case "snapshotComplete":
        revision = event.revision;
        printTable(online, revision);
        if (flags["snapshot-only"]) stop.abort();
        else console.log("--- live ---");
        break;
      case "change": {
        revision = event.revision;
        const { change } = event;
        const state = change.state;
        if (change.kind === ChangeKind.ALL_DELETED) {
          online.clear();
          console.log(`[${revision}] all state deleted`);
        } else if (state?.connectionStatus === ConnectionStatus.CONNECTED) {
          const fresh = !online.has(change.clientId);
          online.set(change.clientId, state);
          if (fresh) console.log(`[${revision}] + ${change.clientId} from ${state.clientAddr} (${online.size} online)`);
        } else if (online.delete(change.clientId)) {
          const why = change.logEntry?.message ?? (change.kind === ChangeKind.DELETED ? "deleted" : "offline");
          console.log(`[${revision}] - ${change.clientId}: ${why} (${online.size} online)`);
        }
        break;
      }
      case "heartbeat":
        break;
    }
  }
} catch (e) {
  // The status code's name as in the other SDKs (UNAUTHENTICATED, ...).
  const code = e instanceof ConnectError ? Code[e.code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase() : "";
  console.error(`who-is-online: ${code} ${e instanceof Error ? e.message : String(e)}`);
  process.exitCode = 1;
} finally {
  client.close();
}
if (process.exitCode !== 1 && !flags["snapshot-only"]) printTable(online, revision);
