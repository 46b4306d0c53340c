import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import {
  Code,
  ConnectError,
  ConnectionStatus,
  DisconnectCause,
  DisconnectInitiator,
  LogKind,
  type ConnstateClient,
} from "../src/index.js";
import { type TestServer, connected, disconnected, newClient, startOnFreePort } from "./support/server.js";

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of it) out.push(item);
  return out;
}

async function errorOf(promise: Promise<unknown>): Promise<ConnectError> {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof ConnectError, `a ConnectError, got ${String(e)}`);
    return e;
  }
  assert.fail("expected the call to fail");
}

describe("queries", () => {
  let server: TestServer;
  let client: ConnstateClient;

  before(async () => {
    server = await startOnFreePort();
    client = newClient(server);
    const events = [];
    for (let i = 0; i < 30; i++) {
      events.push(connected(`d:local:page:c${String(i).padStart(2, "0")}`, 1));
    }
    const res = await client.ingest("sdk-test", events);
    assert.equal(res.accepted, 30);
    assert.equal(res.revision, 30n);
  });

  after(async () => {
    client?.close();
    await server?.dispose();
  });

  it("gets one client's state", async () => {
    const state = await client.get("d:local:page:c07");
    assert.equal(state.clientId, "d:local:page:c07");
    assert.equal(state.connectionStatus, ConnectionStatus.CONNECTED);
    assert.equal(state.typeId, "page");
    assert.equal(state.deviceId, "c07");
    assert.equal(state.broker, "sdk-test");
    assert.equal(state.clientAddr, "192.0.2.10");
    assert.equal(state.connectionId, 1n);
  });

  it("lists every client exactly once across pages", async () => {
    const pages = await collect(client.listPages({ pageSize: 7, filter: { clientIdPrefix: "d:local:page:" } }));
    assert.ok(pages.length >= 5, `at least 5 pages of 7, got ${pages.length}`);
    for (const page of pages.slice(0, -1)) assert.notEqual(page.nextPageToken, "");
    assert.equal(pages.at(-1)!.nextPageToken, "");

    const states = await collect(client.list({ pageSize: 7, filter: { clientIdPrefix: "d:local:page:" } }));
    const ids = states.map((s) => s.clientId);
    assert.equal(ids.length, 30);
    assert.equal(new Set(ids).size, 30, "no duplicates");
    const expected = Array.from({ length: 30 }, (_, i) => `d:local:page:c${String(i).padStart(2, "0")}`);
    assert.deepEqual(ids, expected, "ordered by client id");
  });

  it("lists in a requested order", async () => {
    const states = await collect(
      client.list({ pageSize: 4, orderBy: "last_connect_time desc", filter: { clientIdPrefix: "d:local:page:" } }),
    );
    assert.equal(states.length, 30);
    assert.equal(states[0]!.clientId, "d:local:page:c29");
    assert.equal(states[29]!.clientId, "d:local:page:c00");
  });

  it("lists a client's connection log, newest first, across pages", async () => {
    const id = "d:local:log:l1";
    await client.ingest("sdk-test", [
      connected(id, 1),
      disconnected(id, 1, DisconnectCause.KEEP_ALIVE_TIMEOUT),
      connected(id, 2),
      disconnected(id, 2, DisconnectCause.CLIENT_DISCONNECT),
      connected(id, 3),
    ]);
    const entries = await collect(client.logs({ clientId: id, pageSize: 2 }));
    assert.deepEqual(
      entries.map((e) => e.kind),
      [LogKind.CONNECTED, LogKind.DISCONNECTED, LogKind.CONNECTED, LogKind.DISCONNECTED, LogKind.CONNECTED],
    );
    const revisions = entries.map((e) => e.revision);
    assert.deepEqual([...revisions].sort((a, b) => (a > b ? -1 : 1)), revisions, "newest first");
    const keepalive = entries[3]!;
    assert.equal(keepalive.initiator, DisconnectInitiator.NETWORK);
    assert.equal(keepalive.reasonCode, 0x8d);
    assert.equal(keepalive.closeCode, 160);

    const disconnects = await collect(client.logs({ clientId: id, kinds: [LogKind.DISCONNECTED] }));
    assert.equal(disconnects.length, 2);
  });

  it("surfaces NOT_FOUND as a ConnectError with its code", async () => {
    const err = await errorOf(client.get("d:local:nobody:here"));
    assert.equal(err.code, Code.NotFound);
  });

  it("surfaces INVALID_ARGUMENT, distinct from NOT_FOUND", async () => {
    const err = await errorOf(client.get(""));
    assert.equal(err.code, Code.InvalidArgument);
    assert.match(err.rawMessage, /client_id/);

    const bad = await errorOf(client.ingest("sdk-test", [connected("d:local:x:ok", 1), connected("", 1)]));
    assert.equal(bad.code, Code.InvalidArgument);
    assert.match(bad.rawMessage, /events\[1\]\.client_id/);

    const page = await errorOf(client.list({ pageSize: 5000 }).next());
    assert.equal(page.code, Code.InvalidArgument);
  });

  it("deletes a client", async () => {
    const id = "d:local:del:d1";
    const ingested = await client.ingest("sdk-test", [connected(id, 1)]);
    const revision = await client.delete(id);
    assert.ok(revision > ingested.revision);
    assert.equal((await errorOf(client.get(id))).code, Code.NotFound);
    assert.equal((await errorOf(client.delete(id))).code, Code.NotFound);
  });

  it("reads and updates settings", async () => {
    const settings = await client.getSettings();
    assert.equal(settings.enabled, true);
    const updated = await client.updateSettings({ logMaxEntriesPerClient: 500 }, ["log_max_entries_per_client"]);
    assert.equal(updated.logMaxEntriesPerClient, 500);
    assert.equal((await client.getSettings()).logMaxEntriesPerClient, 500);
  });

  it("exposes the generated clients", async () => {
    const res = await client.rpc.states.listConnectionStates({ pageSize: 1 });
    assert.equal(res.states.length, 1);
    assert.ok(res.revision >= 30n);
    assert.equal(await client.currentRevision(), res.revision);
  });
});
