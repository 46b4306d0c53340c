// The shared scenarios of the SDK contract (clients/CONTRACT.md) that the
// other test files do not cover: a server killed for 40 s, a snapshot cut off
// half way, and auth mode with a read-only key.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  ChangeKind,
  Code,
  ConnectError,
  type ConnstateClient,
  ConnstateClient as Client,
  DisconnectCause,
  DisconnectInitiator,
} from "../src/index.js";
import { Recorder, contiguous } from "./support/recorder.js";
import { type TestServer, connected, disconnected, newClient, startOnFreePort, within } from "./support/server.js";

function connects(prefix: string, count: number) {
  return Array.from({ length: count }, (_, i) => connected(`${prefix}${i}`, i + 1));
}

/** The disconnects a broker reports when it loses the connections of `connects`. */
function lost(prefix: string, count: number) {
  return Array.from({ length: count }, (_, i) => disconnected(`${prefix}${i}`, i + 1, DisconnectCause.SOCKET_CLOSED));
}

const ADMIN = { apiKey: "sdk-test-admin", token: "sdk-test-token-0123456789" };
const AUTH_ARGS = ["--auth", "true", "--admin-key", ADMIN.apiKey, "--admin-token", ADMIN.token];

describe("shared scenarios", () => {
  it("resumes after the server was killed for 40 s, with no gap and no duplicate", { timeout: 150_000 }, async () => {
    let server: TestServer = await startOnFreePort([]);
    let client = newClient(server);
    const watcher = newClient(server);
    try {
      const start = (await client.ingest("sdk-test", connects("d:local:k:before", 10))).revision;
      const retries: { code: Code; delayMs: number }[] = [];
      // The default backoff: unbounded retries, 5 s cap.
      const rec = new Recorder(
        watcher.watch({ startRevision: start, onRetry: (e, _attempt, delayMs) => retries.push({ code: e.code, delayMs }) }),
      );
      let rev = start;
      for (let batch = 0; batch < 3; batch++) {
        rev = (await client.ingest("sdk-test", connects(`d:local:k:live${batch}-`, 20))).revision;
      }
      await rec.untilRevision(rev, 20_000);
      // More changes race with the kill; the recorder keeps pulling meanwhile.
      await client.ingest("sdk-test", connects("d:local:k:midway", 20));
      const exited = new Promise((resolve) => server.process.once("exit", resolve));
      server.process.kill("SIGKILL");
      await exited;
      // The downtime of the scenario, while the watch pulls (and retries).
      const during = rec.until("the 40 s downtime", () => false, 40_000).catch(() => undefined);
      await during;
      server = await server.restart();
      client.close();
      // A new writer: the old one's HTTP/2 session is gone with the server.
      client = newClient(server);
      let reported = lost("d:local:k:before", 10);
      for (let batch = 0; batch < 3; batch++) reported = reported.concat(lost(`d:local:k:live${batch}-`, 20));
      reported = reported.concat(lost("d:local:k:midway", 20));
      const reportedRevision = (await client.ingest("sdk-test", reported)).revision;
      // Resumed within the watch's own backoff cap (5 s, +20 %).
      await rec.untilRevision(reportedRevision, 8_000);
      for (let batch = 0; batch < 3; batch++) {
        rev = (await client.ingest("sdk-test", connects(`d:local:k:after${batch}-`, 20))).revision;
      }
      await rec.untilRevision(rev, 30_000);
      assert.ok(rec.events.every((e) => e.type === "change"));
      assert.equal(contiguous(rec.changeRevisions(), start, rev), undefined, "every change once, in order");
      const gone = rec.events.filter((e) => e.type === "change" && e.change.kind === ChangeKind.DISCONNECTED);
      assert.equal(gone.length, 90, "the disconnects the broker reported after the restart");
      assert.ok(
        gone.every((e) => e.type === "change" && e.change.state?.lastDisconnectInitiator === DisconnectInitiator.NETWORK),
      );
      assert.ok(retries.length >= 5, `attempts throughout the downtime: ${retries.length}`);
      assert.ok(retries.every((r) => r.delayMs <= 5000), "no delay beyond the cap");
      await rec.close();
    } finally {
      client.close();
      watcher.close();
      await server.dispose();
    }
  });

  it("starts a snapshot cut off half way over: resync, the whole snapshot, then live", async () => {
    let server = await startOnFreePort(["--shutdown-grace", "1s"]);
    const client = newClient(server);
    try {
      const total = 4000;
      for (let batch = 0; batch < total / 1000; batch++) {
        await client.ingest("sdk-test", connects(`d:local:big${batch}-`, 1000));
      }
      const rec = new Recorder(client.watch({ includeSnapshot: true, backoff: { initialMs: 50, maxMs: 500 } }));
      await rec.until("three snapshot records", (ev) => ev.length >= 3);
      assert.deepEqual(rec.events.map((e) => e.type), ["snapshot", "snapshot", "snapshot"]);
      server = await server.restart();
      await rec.until("the resync", (ev) => ev.some((e) => e.type === "resync"), 30_000);
      const cut = rec.events.findIndex((e) => e.type === "resync");
      assert.ok(cut >= 3 && cut < total, `the snapshot was cut off after ${cut} records`);
      assert.ok(rec.events.slice(0, cut).every((e) => e.type === "snapshot"));
      await rec.until("the snapshot again", (ev) => ev.at(-1)?.type === "snapshotComplete", 30_000);
      const again = rec.events.slice(cut + 1, -1);
      assert.ok(again.every((e) => e.type === "snapshot"));
      const ids = new Set(again.map((e) => (e.type === "snapshot" ? e.state?.clientId : "")));
      assert.equal(again.length, total);
      assert.equal(ids.size, total, "the whole snapshot again");
      const live = await within("ingest after restart", 10_000, client.ingest("sdk-test", [connected("d:local:after", 1)]));
      await rec.untilRevision(live.revision);
      assert.deepEqual(rec.changeRevisions(), [live.revision]);
      await rec.close();
    } finally {
      client.close();
      await server.dispose();
    }
  });

  it("auth mode: a read-only key reads and watches, and cannot write", async () => {
    const server = await startOnFreePort(AUTH_ARGS);
    const admin: ConnstateClient = new Client({ address: server.address, credentials: ADMIN });
    try {
      await admin.ingest("sdk-test", connects("d:local:ro:r", 12));
      const basic = Buffer.from(`${ADMIN.apiKey}:${ADMIN.token}`).toString("base64");
      const response = await fetch(`http://${await server.rest}/api/v0002/apikeys`, {
        method: "POST",
        headers: { authorization: `Basic ${basic}`, "content-type": "application/json" },
        body: JSON.stringify({ role: "read-only", description: "typescript sdk test" }),
        signal: AbortSignal.timeout(10_000),
      });
      assert.ok(response.ok, `create key: ${response.status}`);
      const { key, token } = (await response.json()) as { key: string; token: string };
      const reader = new Client({ address: server.address, credentials: { apiKey: key, token } });
      try {
        assert.equal((await reader.get("d:local:ro:r0")).clientId, "d:local:ro:r0");
        let listed = 0;
        for await (const _ of reader.list({ filter: { clientIdPrefix: "d:local:ro:" } })) listed++;
        assert.equal(listed, 12);
        // A watch sends the credentials too: r1, r10, r11, then complete.
        const rec = new Recorder(reader.watch({ includeSnapshot: true, filter: { clientIdPrefix: "d:local:ro:r1" } }));
        await rec.until("the snapshot", (ev) => ev.at(-1)?.type === "snapshotComplete");
        assert.deepEqual(
          rec.events.map((e) => e.type),
          ["snapshot", "snapshot", "snapshot", "snapshotComplete"],
        );
        await rec.close();
        await assert.rejects(
          reader.ingest("sdk-test", [connected("d:local:ro:intruder", 1)]),
          (e: unknown) => e instanceof ConnectError && e.code === Code.PermissionDenied,
        );
        await assert.rejects(
          reader.delete("d:local:ro:r0"),
          (e: unknown) => e instanceof ConnectError && e.code === Code.PermissionDenied,
        );
      } finally {
        reader.close();
      }
      await assert.rejects(
        admin.get("d:local:ro:intruder"),
        (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound,
        "nothing was written",
      );
      // Without credentials: refused.
      const anonymous = new Client({ address: server.address });
      try {
        await assert.rejects(
          anonymous.get("d:local:ro:r0"),
          (e: unknown) => e instanceof ConnectError && e.code === Code.Unauthenticated,
        );
      } finally {
        anonymous.close();
      }
    } finally {
      admin.close();
      await server.dispose();
    }
  });
});
