// The SDK contract (clients/CONTRACT.md) as the TypeScript SDK implements it:
// unbounded retries with capped, jittered delays; heartbeats opt-in;
// cancellation through `signal` and `Symbol.asyncDispose`.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { type ConnectionWatch, type WatchEvent } from "../src/index.js";
import { Recorder } from "./support/recorder.js";
import { connected, eventually, newClient, startOnFreePort, within } from "./support/server.js";

const changes = (events: WatchEvent[]) => events.filter((e) => e.type === "change");
const rev = (e: WatchEvent | void) => (e && "revision" in e ? e.revision : undefined);

describe("SDK contract", () => {
  it("keeps retrying past ten attempts while the server is down, with capped jittered delays", async () => {
    let server = await startOnFreePort();
    const client = newClient(server);
    try {
      const delays: number[] = [];
      const rec = new Recorder(
        client.watch({ startRevision: 0n, backoff: { initialMs: 10, maxMs: 20 }, onRetry: (_e, _a, d) => delays.push(d) }),
      );
      const first = await client.ingest("sdk-test", [connected("d:local:c:a", 1)]);
      await rec.untilRevision(first.revision);
      await server.stop();
      // Keep pulling while the server is away, so that the watch retries.
      const after = rec.until("a change after the restart", (ev) => changes(ev).length >= 2, 30_000);
      await eventually("25 failed attempts", async () => (delays.length >= 25 ? true : undefined), 20_000, 20);
      server = await server.restart();
      const second = await eventually("the restarted server", async () => {
        try {
          return await client.ingest("sdk-test", [connected("d:local:c:b", 1)]);
        } catch {
          return undefined;
        }
      });
      await after;
      assert.deepEqual(
        changes(rec.events).map((e) => e.revision),
        [first.revision, second.revision],
      );
      assert.ok(delays.every((d) => d >= 8 && d <= 20), `delays within [initial·0.8, max]: ${delays}`);
      assert.ok(new Set(delays.slice(5)).size > 1, `capped delays are jittered: ${delays}`);
      await rec.close();
    } finally {
      client.close();
      await server.dispose();
    }
  });

  it("delivers heartbeats only when asked to", async () => {
    const server = await startOnFreePort();
    const client = newClient(server);
    try {
      const silent = new Recorder(client.watch({ heartbeatIntervalMs: 1000 }));
      const beating = new Recorder(client.watch({ heartbeatIntervalMs: 1000, heartbeats: true }));
      const silentChange = silent.until("the change", (ev) => changes(ev).length >= 1);
      await beating.until("two heartbeats", (ev) => ev.filter((e) => e.type === "heartbeat").length >= 2);
      const res = await client.ingest("sdk-test", [connected("d:local:h:a", 1)]);
      await silentChange;
      assert.deepEqual(
        silent.events.map((e) => e.type),
        ["change"],
      );
      assert.equal(rev(silent.events[0]), res.revision);
      await silent.close();
      await beating.close();
    } finally {
      client.close();
      await server.dispose();
    }
  });

  it("ends a watch promptly when its signal aborts, live or during a backoff", async () => {
    const server = await startOnFreePort();
    const client = newClient(server);
    try {
      const live = new AbortController();
      const watch = client.watch({ startRevision: 0n, signal: live.signal });
      const it = watch[Symbol.asyncIterator]();
      const res = await client.ingest("sdk-test", [connected("d:local:g:a", 1)]);
      assert.equal(rev((await within("the change", 10_000, it.next())).value), res.revision);
      const pending = it.next();
      live.abort();
      assert.equal((await within("the end after abort", 2_000, pending)).done, true);

      const backingOff = new AbortController();
      const retries: number[] = [];
      const retrying = client.watch({
        startRevision: res.revision,
        signal: backingOff.signal,
        backoff: { initialMs: 60_000, maxMs: 60_000 },
        onRetry: (_e, attempt) => retries.push(attempt),
      });
      const next = retrying[Symbol.asyncIterator]().next();
      await server.stop();
      await eventually("a retry", async () => (retries.length > 0 ? true : undefined));
      backingOff.abort();
      assert.equal((await within("the end during a 60 s backoff", 2_000, next)).done, true);

      const aborted = new AbortController();
      aborted.abort();
      const never = client.watch({ startRevision: 0n, signal: aborted.signal });
      assert.equal((await within("an already aborted signal", 2_000, never[Symbol.asyncIterator]().next())).done, true);
    } finally {
      client.close();
      await server.dispose();
    }
  });

  it("closes client and watch with await using (Symbol.asyncDispose)", async () => {
    const server = await startOnFreePort();
    try {
      let watch: ConnectionWatch;
      let iterator: AsyncIterator<WatchEvent>;
      let pending: Promise<IteratorResult<WatchEvent>>;
      {
        await using client = newClient(server);
        {
          await using w = client.watch({ startRevision: 0n });
          watch = w;
          iterator = w[Symbol.asyncIterator]();
          const res = await client.ingest("sdk-test", [connected("d:local:d:a", 1)]);
          assert.equal(rev((await within("the change", 10_000, iterator.next())).value), res.revision);
        }
        assert.equal((await within("the disposed watch", 2_000, iterator.next())).done, true);
        assert.equal(await client.currentRevision(), 1n, "the client still works");
        // A watch left open is ended with its client.
        iterator = client.watch({ startRevision: 1n })[Symbol.asyncIterator]();
        pending = iterator.next();
      }
      assert.equal((await within("the watch of a disposed client", 2_000, pending)).done, true);
      void watch;
    } finally {
      await server.dispose();
    }
  });
});
