// Several addresses (clients/CONTRACT.md, "Several addresses"): a watch and
// the reads move to the next server when the one in use goes away; writes
// are not retried.
//
// Two single servers do not share revisions; server B starts on a copy of A's
// data folder taken while A was stopped cleanly, so that both hold the same
// revisions. A real cluster's failover is tested once the cluster exists.
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, it } from "node:test";

import { Code, ConnectError, ConnstateClient, DisconnectCause } from "../src/index.js";
import { Recorder, contiguous } from "./support/recorder.js";
import { TestServer, connected, disconnected, newClient, within } from "./support/server.js";

function connects(prefix: string, count: number) {
  return Array.from({ length: count }, (_, i) => connected(`${prefix}${i}`, i + 1));
}

function lost(prefix: string, count: number) {
  return Array.from({ length: count }, (_, i) => disconnected(`${prefix}${i}`, i + 1, DisconnectCause.SOCKET_CLOSED));
}

/** A and B on the same data, and the revision of what A recorded. */
async function twoServers(): Promise<{ a: TestServer; b: TestServer; first: bigint; dispose: () => Promise<void> }> {
  let a = await TestServer.start({ args: ["--shutdown-grace", "1s"] });
  const writer = newClient(a);
  const first = (await writer.ingest("sdk-test", connects("d:acme:fo:a", 30))).revision;
  writer.close();
  const bDir = mkdtempSync(path.join(tmpdir(), "connstate-ts-b-"));
  await a.stop();
  cpSync(a.dataDir, bDir, { recursive: true });
  a = await a.restart();
  const b = await TestServer.start({ dataDir: bDir, args: a.args });
  return {
    a,
    b,
    first,
    dispose: async () => {
      await a.dispose();
      await b.stop();
      rmSync(bDir, { recursive: true, force: true });
    },
  };
}

async function kill(server: TestServer): Promise<void> {
  const exited = new Promise((resolve) => server.process.once("exit", resolve));
  server.process.kill("SIGKILL");
  await exited;
}

describe("several addresses", () => {
  const name = "moves the watch and the reads to the next address, with no gap and no duplicate";
  it(name, { timeout: 60_000 }, async () => {
    const { a, b, first, dispose } = await twoServers();
    const both = `${a.address},${b.address}`;
    const watcher = new ConnstateClient({ address: both });
    const reader = new ConnstateClient({ address: [a.address, b.address] });
    try {
      const rec = new Recorder(watcher.watch({ startRevision: 0n, backoff: { initialMs: 50, maxMs: 500 } }));
      await rec.untilRevision(first, 10_000);
      assert.equal((await reader.get("d:acme:fo:a3")).clientId, "d:acme:fo:a3"); // on A

      await kill(a); // never comes back
      // Reads are retried on the next address.
      const read = await within("get after A went away", 20_000, reader.get("d:acme:fo:a7"));
      assert.equal(read.clientId, "d:acme:fo:a7");

      // Only B has these; the watch gets them there, right after the last
      // revision it delivered from A.
      const onB = newClient(b);
      const rev = (await onB.ingest("sdk-test", lost("d:acme:fo:a", 30))).revision;
      onB.close();
      await rec.untilRevision(rev, 20_000);
      assert.ok(rec.events.every((e) => e.type === "change"), rec.describe(5));
      assert.equal(contiguous(rec.changeRevisions(), 0n, rev), undefined, "no gap, no duplicate");
      await rec.close();
    } finally {
      watcher.close();
      reader.close();
      await dispose();
    }
  });

  it("does not retry a write on the next address", { timeout: 30_000 }, async () => {
    const { a, b, first, dispose } = await twoServers();
    const client = new ConnstateClient({ address: [a.address, b.address] });
    try {
      assert.equal((await client.get("d:acme:fo:a1")).clientId, "d:acme:fo:a1"); // on A
      await kill(a);
      await assert.rejects(
        client.ingest("sdk-test", lost("d:acme:fo:a", 1)),
        // Node reports the connection reset by the kill as a cancelled stream.
        (e) => e instanceof ConnectError && (e.code === Code.Unavailable || e.code === Code.Canceled),
      );
      const onB = newClient(b);
      assert.ok((await onB.get("d:acme:fo:a0")).revision <= first, "nothing written on B");
      onB.close();
      // The next call goes to B.
      assert.equal((await client.ingest("sdk-test", lost("d:acme:fo:a", 1))).revision, first + 1n);
    } finally {
      client.close();
      await dispose();
    }
  });
});
