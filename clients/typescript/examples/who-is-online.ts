// Prints who is online: a table of the connected clients (from a snapshot),
// then every arrival and departure as it happens.
//
//   node dist/examples/who-is-online.js [address] [--seconds N]
//
// address defaults to $CONNSTATE_ADDRESS or 127.0.0.1:50051; without
// --seconds it runs until interrupted, then prints the table once more.
import {
  ChangeKind,
  ConnectionStatus,
  type ConnectionState,
  ConnstateClient,
  MqttProtocol,
  toDate,
} from "../src/index.js";

const args = process.argv.slice(2);
const secondsAt = args.indexOf("--seconds");
const seconds = secondsAt >= 0 ? Number(args[secondsAt + 1]) : undefined;
const address =
  args.find((a, i) => !a.startsWith("--") && i !== secondsAt + 1) ?? process.env.CONNSTATE_ADDRESS ?? "127.0.0.1:50051";

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
  console.log(`${rows.length} online at revision ${revision}`);
  console.log(line(header));
  for (const c of cells) console.log(line(c));
}

const client = new ConnstateClient({ address });
const online = new Map<string, ConnectionState>();
const stop = new AbortController();
process.once("SIGINT", () => stop.abort());
if (seconds !== undefined) setTimeout(() => stop.abort(), seconds * 1000).unref();

let revision = 0n;
const watch = client.watch({
  includeSnapshot: true,
  filter: { connectionStatus: ConnectionStatus.CONNECTED },
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
        console.log("--- live ---");
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
} finally {
  client.close();
}
printTable(online, revision);
