import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  ChangeKind,
  Code,
  ConnectError,
  ConnectionStatus,
  ConnstateClient,
  type ConnectionState,
  DisconnectCause,
  DisconnectInitiator,
  type WatchEvent,
} from "../src/index.js";
import { Recorder, contiguous } from "./support/recorder.js";
import {
  type TestServer,
  connected,
  disconnected,
  eventually,
  newClient,
  startOnFreePort,
  within,
} from "./support/server.js";

function connects(prefix: string, count: number, connectionId = 1) {
  return Array.from({ length: count }, (_, i) => connected(`${prefix}${i}`, connectionId));
}

/** Runs `body` with a fresh server and client, then cleans up. */
async function withServer(
  args: string[],
  body: (ctx: { server: TestServer; client: ConnstateClient; setServer: (s: TestServer) => void }) => Promise<void>,
): Promise<void> {
  let server = await startOnFreePort(args);
  const client = newClient(server);
  try {
    await body({ server, client, setServer: (s) => (server = s) });
  } finally {
    client.close();
    await server.dispose();
  }
}

/** The client ids and revisions a consumer's view holds after applying `events`. */
function applyView(events: WatchEvent[]): Map<string, ConnectionState> {
  const view = new Map<string, ConnectionState>();
  for (const e of events) {
    if (e.type === "resync") view.clear();
    if (e.type === "snapshot" && e.state) view.set(e.state.clientId, e.state);
    if (e.type === "change") {
      if (e.change.kind === ChangeKind.DELETED) view.delete(e.change.clientId);
      else if (e.change.kind === ChangeKind.ALL_DELETED) view.clear();
      else if (e.change.state) view.set(e.change.state.clientId, e.change.state);
    }
  }
  return view;
}

describe("watch", () => {
  it("delivers live changes in revision order, from now", async () => {
    await withServer([], async ({ client }) => {
      const before = await client.ingest("sdk-test", connects("d:local:w:old", 3));
      const rec = new Recorder(client.watch({ heartbeatIntervalMs: 1000, heartbeats: true }));
      // The watch starts at the current revision even before it is pulled.
      const first = rec.until("a heartbeat", (ev) => ev.some((e) => e.type === "heartbeat"));
      await first;
      const res = await client.ingest("sdk-test", connects("d:local:w:new", 10));
      await rec.untilRevision(res.revision);
      assert.equal(contiguous(rec.changeRevisions(), before.revision, res.revision), undefined);
      const change = rec.events.find((e) => e.type === "change");
      assert.ok(change && change.type === "change");
      assert.equal(change.change.kind, ChangeKind.CONNECTED);
      assert.equal(change.change.clientId, "d:local:w:new0");
      assert.equal(rec.watch.lastRevision, res.revision);
      await rec.close();
    });
  });

  it("replays from a start revision, and follows a filter", async () => {
    await withServer([], async ({ client }) => {
      await client.ingest("sdk-test", connects("d:local:a:", 5));
      await client.ingest("sdk-test", connects("g:local:b:", 5));
      const rec = new Recorder(client.watch({ startRevision: 2n, filter: { clientIdPrefix: "d:local:a:" } }));
      const res = await client.ingest("sdk-test", [disconnected("d:local:a:1", 1), disconnected("g:local:b:1", 1)]);
      await rec.until("the disconnect", (ev) =>
        ev.some((e) => e.type === "change" && e.change.kind === ChangeKind.DISCONNECTED),
      );
      assert.deepEqual(rec.changeRevisions(), [3n, 4n, 5n, res.revision - 1n]);
      await rec.close();
    });
  });

  it("starts with a snapshot, then live changes", async () => {
    await withServer([], async ({ client }) => {
      await client.ingest("sdk-test", connects("d:local:s:", 5));
      await client.ingest("sdk-test", [disconnected("d:local:s:4", 1)]);
      const rec = new Recorder(
        client.watch({ includeSnapshot: true, filter: { connectionStatus: ConnectionStatus.CONNECTED } }),
      );
      await rec.until("snapshotComplete", (ev) => ev.some((e) => e.type === "snapshotComplete"));
      const snapshot = rec.events.filter((e) => e.type === "snapshot");
      assert.equal(snapshot.length, 4);
      const complete = rec.events.at(-1)!;
      assert.deepEqual(complete, { type: "snapshotComplete", revision: 6n });
      const res = await client.ingest("sdk-test", [disconnected("d:local:s:0", 1)]);
      await rec.untilRevision(res.revision);
      assert.deepEqual(rec.changeRevisions(), [7n]);
      assert.equal(applyView(rec.events).get("d:local:s:0")?.connectionStatus, ConnectionStatus.DISCONNECTED);
      await rec.close();
    });
  });

  for (const signal of ["SIGTERM", "SIGKILL"] as const) {
    it(`resumes without gap or duplicate across a server restart (${signal})`, async () => {
      await withServer([], async ({ server, client, setServer }) => {
        const retries: ConnectError[] = [];
        const rec = new Recorder(
          client.watch({
            startRevision: 0n,
            backoff: { initialMs: 50, maxMs: 500, maxAttempts: 100 },
            onRetry: (err) => retries.push(err),
          }),
        );
        const first = await client.ingest("sdk-test", connects("d:local:r:a", 20));
        await rec.untilRevision(first.revision);

        if (signal === "SIGKILL") {
          server.process.kill("SIGKILL");
        }
        const restarted = await server.restart();
        setServer(restarted);
        const whenUp = <T>(what: string, call: () => Promise<T>): Promise<T> =>
          within(
            what,
            10_000,
            eventually("the server to answer", async () => {
              try {
                return await call();
              } catch (e) {
                if (ConnectError.from(e).code === Code.Unavailable) return undefined;
                throw e;
              }
            }),
          );
        // The restart records nothing for the clients of another broker (it
        // did not restart): they stay connected, at the revision they had.
        assert.equal(await whenUp("the revision after restart", () => client.currentRevision()), first.revision);
        const kept: ConnectionState[] = [];
        for await (const s of client.list({ filter: { clientIdPrefix: "d:local:r:a" } })) kept.push(s);
        assert.equal(kept.length, 20);
        assert.ok(kept.every((s) => s.connectionStatus === ConnectionStatus.CONNECTED && s.revision <= first.revision));
        // Keep ingesting while the watch reconnects: first the broker
        // reports the 20 connections lost, then new clients.
        let last = (
          await whenUp("ingest after restart", () =>
            client.ingest(
              "sdk-test",
              Array.from({ length: 20 }, (_, i) => disconnected(`d:local:r:a${i}`, 1, DisconnectCause.SOCKET_CLOSED)),
            ),
          )
        ).revision;
        for (let batch = 0; batch < 5; batch++) {
          const res = await whenUp("ingest after restart", () =>
            client.ingest("sdk-test", connects(`d:local:r:b${batch}-`, 10)),
          );
          last = res.revision;
        }
        assert.equal(last, first.revision + 20n + 50n);
        await rec.untilRevision(last);

        const revisions = rec.changeRevisions();
        assert.equal(contiguous(revisions, 0n, last), undefined);
        assert.ok(retries.length > 0, "the watch reconnected");
        if (signal === "SIGTERM") {
          assert.equal(retries[0]!.code, Code.Unavailable);
        }
        const lost = rec.events.filter((e) => e.type === "change" && e.change.kind === ChangeKind.DISCONNECTED);
        assert.equal(lost.length, 20);
        assert.ok(
          lost.every(
            (e) =>
              e.type === "change" && e.change.state?.lastDisconnectInitiator === DisconnectInitiator.NETWORK,
          ),
          "the disconnects the broker reported",
        );
        assert.ok(!rec.events.some((e) => e.type === "resync"), "no resync needed");
        await rec.close();
      });
    });
  }

  it("resynchronises with a snapshot when its revision left the feed", async () => {
    await withServer(["--retention-interval", "100ms"], async ({ server, client, setServer }) => {
      const retries: ConnectError[] = [];
      const rec = new Recorder(
        client.watch({
          startRevision: 0n,
          filter: { clientIdPrefix: "d:local:x:" },
          backoff: { initialMs: 50, maxMs: 500, maxAttempts: 100 },
          onRetry: (err) => retries.push(err),
        }),
      );
      const first = await client.ingest("sdk-test", connects("d:local:x:a", 10));
      await rec.untilRevision(first.revision);
      assert.equal(contiguous(rec.changeRevisions(), 0n, first.revision), undefined);
      const seen = rec.events.length;

      // The consumer stops pulling; meanwhile the server restarts (ending
      // the stream) and the feed is cut to its 5 newest changes.
      const restarted = await server.restart();
      setServer(restarted);
      const other = newClient(restarted);
      try {
        // The restart records nothing for another broker's clients; that
        // broker reports the 10 connections lost.
        await other.ingest(
          "sdk-test",
          Array.from({ length: 10 }, (_, i) => disconnected(`d:local:x:a${i}`, 1, DisconnectCause.SOCKET_CLOSED)),
        );
        await other.updateSettings({ feedMaxEntries: 5n }, ["feed_max_entries"]);
        await other.ingest("sdk-test", [...connects("d:local:x:b", 10), ...connects("d:local:y:", 5)]);
        await other.ingest("sdk-test", [disconnected("d:local:x:b3", 1)]);
        await other.delete("d:local:x:a7");
        // Wait until retention has removed the watcher's revision.
        await eventually("retention to retire the revision", async () => {
          try {
            for await (const _ of other.rpc.states.watchConnections({ startRevision: first.revision })) break;
            return undefined;
          } catch (e) {
            return ConnectError.from(e).code === Code.OutOfRange ? true : undefined;
          }
        });
      } finally {
        other.close();
      }

      // The consumer pulls again: resync, snapshot, then live.
      await rec.until("snapshot_complete after the resync", (ev) =>
        ev.slice(seen).some((e) => e.type === "snapshotComplete"),
      );
      const after = rec.events.slice(seen);
      const resyncAt = after.findIndex((e) => e.type === "resync");
      assert.ok(resyncAt >= 0, "a resync event");
      const resync = after[resyncAt]!;
      assert.ok(resync.type === "resync");
      assert.equal(resync.reason.code, Code.OutOfRange);
      assert.ok(resync.oldestRevision !== undefined && resync.oldestRevision > first.revision);
      assert.ok(
        after.slice(0, resyncAt).every((e) => e.type !== "change"),
        "nothing from before the gap is passed off as continuous",
      );
      const snapshot = after.slice(resyncAt + 1, -1);
      assert.ok(snapshot.every((e) => e.type === "snapshot"), "only snapshot records until snapshot_complete");
      const complete = after.at(-1)!;
      assert.ok(complete.type === "snapshotComplete");
      // 10 + 10 clients with the prefix, one deleted.
      assert.equal(snapshot.length, 19);

      const live = await client.ingest("sdk-test", [connected("d:local:x:c0", 1), disconnected("d:local:x:a1", 1)]);
      await rec.untilRevision(live.revision);
      const liveRevisions = rec.changeRevisions(seen);
      assert.deepEqual(liveRevisions, [live.revision - 1n, live.revision]);
      assert.ok(live.revision - 1n > complete.revision);

      // The consumer's view equals the server's state.
      const view = applyView(rec.events);
      const truth = new Map<string, ConnectionState>();
      for await (const s of client.list({ filter: { clientIdPrefix: "d:local:x:" } })) truth.set(s.clientId, s);
      assert.deepEqual(
        [...view.entries()].map(([id, s]) => [id, s.revision, s.connectionStatus]).sort(),
        [...truth.entries()].map(([id, s]) => [id, s.revision, s.connectionStatus]).sort(),
      );
      await rec.close();
    });
  });

  it("resumes after the server ends a watcher too slow for its buffer", async () => {
    await withServer(["--watch-buffer", "16"], async ({ client }) => {
      const retries: ConnectError[] = [];
      const rec = new Recorder(
        client.watch({
          startRevision: 0n,
          backoff: { initialMs: 20, maxMs: 200, maxAttempts: 100 },
          onRetry: (err) => retries.push(err),
        }),
      );
      const first = await client.ingest("sdk-test", connects("d:local:z:first", 1));
      await rec.untilRevision(first.revision);
      // The consumer stops pulling while 60 commits of 100 changes arrive.
      let last = 0n;
      for (let batch = 0; batch < 60; batch++) {
        last = (await client.ingest("sdk-test", connects(`d:local:z:${batch}-`, 100))).revision;
      }
      await rec.untilRevision(last, 30_000);
      assert.equal(contiguous(rec.changeRevisions(), 0n, last), undefined);
      assert.ok(
        retries.some((e) => e.code === Code.ResourceExhausted),
        `ended as too slow: ${retries.map((e) => e.code).join(",")}`,
      );
      await rec.close();
    });
  });

  it("throws non-retryable errors", async () => {
    await withServer([], async ({ client }) => {
      const watch = client.watch({ filter: { connectedAfter: { seconds: 1n } } });
      await assert.rejects(
        async () => {
          for await (const _ of watch) break;
        },
        (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument,
      );
      assert.throws(
        () => client.watch({ startRevision: 1n, includeSnapshot: true }),
        (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument,
      );
    });
  });
});
