import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

import type { ConnstateClient } from "./client.js";
import {
  type Change,
  ChangeKind,
  type ConnectionState,
  type ConnectionStateFilterSchema,
  type WatchConnectionsRequestSchema,
} from "./gen/connstate/v1/connstate_pb.js";

/**
 * @internal Whether a call failed because its server went away: `Code.Unavailable`,
 * or `Code.Canceled` the caller did not cause (Node's HTTP/2 stack reports a
 * connection reset, after a `kill -9`, as a cancelled stream).
 */
export function serverGone(error: ConnectError, signal?: AbortSignal): boolean {
  return error.code === Code.Unavailable || (error.code === Code.Canceled && signal?.aborted !== true);
}

/** Trailer of OUT_OF_RANGE: the oldest revision that can still be replayed. */
export const OLDEST_REVISION_TRAILER = "x-connstate-oldest-revision";
/** Trailer of RESOURCE_EXHAUSTED / UNAVAILABLE: the last revision the server delivered. */
export const LAST_REVISION_TRAILER = "x-connstate-last-revision";

export type FilterInit = Omit<MessageInitShape<typeof ConnectionStateFilterSchema>, "$typeName">;

export interface WatchBackoff {
  /**
   * First delay before reconnecting (default 100 ms); doubles on each failed
   * attempt, with ±20 % jitter.
   */
  initialMs?: number;
  /** Longest delay, jitter included (default 5000 ms). */
  maxMs?: number;
  /**
   * Consecutive failed attempts (without any message received in between)
   * after which the watch gives up and throws the last error. Unbounded by
   * default: the watch outlives any downtime of the server.
   */
  maxAttempts?: number;
}

export interface WatchOptions {
  /** Only changes of clients matching this filter (no time bounds). */
  filter?: FilterInit;
  /** Only changes of these kinds (any when empty). */
  kinds?: ChangeKind[];
  /** Replay every change after this revision, then go live. */
  startRevision?: bigint;
  /** Start with the current state of every matching client. Not with `startRevision`. */
  includeSnapshot?: boolean;
  /** Heartbeat interval asked of the server (at least 1000 ms; server default 10 s). */
  heartbeatIntervalMs?: number;
  /** Yield the server's heartbeats as `heartbeat` events (consumed silently by default). */
  heartbeats?: boolean;
  /** Ends the watch (the iteration then finishes without error). */
  signal?: AbortSignal;
  backoff?: WatchBackoff;
  /** Called before each reconnection, with the error that ended the stream. */
  onRetry?: (error: ConnectError, attempt: number, delayMs: number) => void;
}

/** What a watch yields. */
export type WatchEvent =
  /** A live or replayed change, in revision order, each exactly once. */
  | { type: "change"; revision: bigint; change: Change }
  /** One record of a snapshot (at start with `includeSnapshot`, or after a resync). */
  | { type: "snapshot"; revision: bigint; state: ConnectionState | undefined; change: Change }
  /** The snapshot is complete: the caller's view is current as of `revision`; changes follow. */
  | { type: "snapshotComplete"; revision: bigint }
  /**
   * The watch could not resume without a gap (the revision left the change
   * feed, or a snapshot was cut short): discard the view built so far; a
   * fresh snapshot (`snapshot` events, then `snapshotComplete`) follows.
   */
  | { type: "resync"; reason: ConnectError; oldestRevision: bigint | undefined }
  /**
   * Nothing happened for a heartbeat interval; `revision` is the server's
   * position for this watch. Only with `heartbeats: true`.
   */
  | { type: "heartbeat"; revision: bigint; time: Date | undefined };

/**
 * gRPC codes after which the watch reconnects and resumes (the SDK contract,
 * clients/CONTRACT.md); INTERNAL only with the last-revision trailer.
 */
const RETRYABLE = new Set<Code>([
  Code.Unavailable,
  Code.ResourceExhausted,
  Code.Aborted,
  // Not caused by the caller (its cancellation ends the watch before this
  // is consulted): Node's HTTP/2 reports a connection reset as CANCEL.
  Code.Canceled,
]);

function retryable(error: ConnectError): boolean {
  return (
    RETRYABLE.has(error.code) ||
    (error.code === Code.Internal && trailerRevision(error, LAST_REVISION_TRAILER) !== undefined)
  );
}

/** The n-th delay: doubling from `initialMs`, ±20 % jitter, never above `maxMs`. */
function backoffDelay(initialMs: number, maxMs: number, attempt: number): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.min(attempt - 1, 32));
  return Math.min(maxMs, Math.round(base * (0.8 + 0.4 * Math.random())));
}

function trailerRevision(error: ConnectError, name: string): bigint | undefined {
  const value = error.metadata.get(name);
  if (value === null || !/^\d+$/.test(value.trim())) {
    return undefined;
  }
  return BigInt(value.trim());
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * A resumable watch of the change feed.
 *
 * It delivers every change after its start exactly once, in revision order.
 * When the stream breaks (connection lost, UNAVAILABLE at server shutdown,
 * RESOURCE_EXHAUSTED for a slow reader), it reconnects after a short backoff
 * with `start_revision` = the last revision delivered, and drops anything at
 * or below it. When that revision has left the change feed (OUT_OF_RANGE), it
 * yields a `resync` event, then a fresh snapshot with the same filter, then
 * live changes. Other errors (INVALID_ARGUMENT, FAILED_PRECONDITION, ...) end
 * the iteration by throwing the `ConnectError`.
 *
 * A watch is iterated once.
 */
export class ConnectionWatch implements AsyncIterable<WatchEvent>, AsyncDisposable {
  private last: bigint | undefined;
  private readonly abort = new AbortController();
  private started = false;
  private start: Promise<bigint> | undefined;

  constructor(
    private readonly client: ConnstateClient,
    private readonly options: WatchOptions,
    private readonly onEnd: () => void = () => {},
  ) {
    if (options.startRevision !== undefined && options.includeSnapshot) {
      throw new ConnectError("startRevision cannot be combined with includeSnapshot", Code.InvalidArgument);
    }
    this.last = options.startRevision;
    if (!options.includeSnapshot && options.startRevision === undefined) {
      // "From now" means from when watch() was called: read the current
      // revision at once, so that the watch can resume from it.
      const start = client.currentRevision({ signal: this.abort.signal });
      start.catch(() => {});
      this.start = start;
    }
    if (options.signal) {
      if (options.signal.aborted) {
        this.abort.abort();
      } else {
        options.signal.addEventListener("abort", () => this.abort.abort(), { once: true });
      }
    }
  }

  /**
   * Every change up to this revision has been delivered (or did not match):
   * persist it to resume later with `startRevision`. Undefined until known.
   */
  get lastRevision(): bigint | undefined {
    return this.last;
  }

  /** Ends the watch; a pending iteration finishes without error. */
  close(): void {
    this.abort.abort();
    this.onEnd();
  }

  /** `await using watch = client.watch(...)`: closes the watch at the end of the block. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  [Symbol.asyncIterator](): AsyncGenerator<WatchEvent, void, undefined> {
    if (this.started) {
      throw new Error("a ConnectionWatch can be iterated only once");
    }
    this.started = true;
    return this.run();
  }

  private request(snapshot: boolean): MessageInitShape<typeof WatchConnectionsRequestSchema> {
    const o = this.options;
    return {
      filter: o.filter,
      kinds: o.kinds ?? [],
      heartbeatInterval: o.heartbeatIntervalMs !== undefined ? durationFromMs(o.heartbeatIntervalMs) : undefined,
      ...(snapshot ? { includeSnapshot: true } : { startRevision: this.last }),
    };
  }

  private async *run(): AsyncGenerator<WatchEvent, void, undefined> {
    const signal = this.abort.signal;
    const backoff = {
      initialMs: this.options.backoff?.initialMs ?? 100,
      maxMs: this.options.backoff?.maxMs ?? 5000,
      maxAttempts: this.options.backoff?.maxAttempts ?? Number.POSITIVE_INFINITY,
    };
    // Without a snapshot, resuming needs a revision to start from: a watch
    // "from now" starts from the store's current revision.
    let needSnapshot = this.options.includeSnapshot === true;
    let attempt = 0;
    if (!needSnapshot && this.last === undefined) {
      for (;;) {
        try {
          const start = this.start ?? this.client.currentRevision({ signal });
          this.start = undefined;
          this.last = await start;
          break;
        } catch (e) {
          if (signal.aborted) return;
          const error = ConnectError.from(e);
          attempt += 1;
          if (!retryable(error) || attempt >= backoff.maxAttempts) throw error;
          const delay = backoffDelay(backoff.initialMs, backoff.maxMs, attempt);
          this.options.onRetry?.(error, attempt, delay);
          await sleep(delay, signal);
          if (signal.aborted) return;
        }
      }
      attempt = 0;
    }
    // Clients whose snapshot record is newer than the snapshot's revision:
    // their changes up to that record's revision are already reflected.
    let skip = new Map<string, bigint>();

    try {
      for (;;) {
        const snapshot = needSnapshot;
        let snapshotItems = false;
        let error: ConnectError;
        // The server in use; the next one once this one is unavailable.
        const { index, rpc } = this.client.endpoint();
        try {
          const stream = rpc.states.watchConnections(this.request(snapshot), { signal });
          for await (const res of stream) {
            attempt = 0;
            const event = res.event;
            switch (event.case) {
              case "change": {
                const change = event.value;
                if (change.kind === ChangeKind.SNAPSHOT) {
                  snapshotItems = true;
                  skip.set(change.clientId, change.revision);
                  yield { type: "snapshot", revision: change.revision, state: change.state, change };
                  break;
                }
                if (this.last !== undefined && change.revision <= this.last) {
                  break; // already delivered
                }
                if (change.kind === ChangeKind.ALL_DELETED) {
                  skip.clear();
                } else {
                  const seen = skip.get(change.clientId);
                  if (seen !== undefined) {
                    if (change.revision <= seen) {
                      break; // reflected in the snapshot
                    }
                    skip.delete(change.clientId);
                  }
                }
                this.last = change.revision;
                yield { type: "change", revision: change.revision, change };
                break;
              }
              case "snapshotComplete": {
                const revision = event.value.revision;
                const pruned = new Map<string, bigint>();
                for (const [client, seen] of skip) {
                  if (seen > revision) pruned.set(client, seen);
                }
                skip = pruned;
                needSnapshot = false;
                this.last = revision;
                yield { type: "snapshotComplete", revision };
                break;
              }
              case "heartbeat": {
                if (!this.options.heartbeats) break;
                const hb = event.value;
                yield {
                  type: "heartbeat",
                  revision: hb.revision,
                  time: hb.time ? timestampDate(hb.time) : undefined,
                };
                break;
              }
              default:
                break;
            }
          }
          error = new ConnectError("the watch stream ended", Code.Unavailable);
        } catch (e) {
          if (signal.aborted) return;
          error = ConnectError.from(e);
        }
        if (signal.aborted) return;
        if (serverGone(error, signal)) {
          this.client.unavailable(index);
        }

        if (error.code === Code.OutOfRange) {
          // The revision is gone from the feed: start over from a snapshot.
          needSnapshot = true;
          skip = new Map();
          attempt = 0;
          yield { type: "resync", reason: error, oldestRevision: trailerRevision(error, OLDEST_REVISION_TRAILER) };
          continue;
        }
        if (!retryable(error)) {
          throw error;
        }
        attempt += 1;
        if (attempt >= backoff.maxAttempts) {
          throw error;
        }
        if (snapshot && needSnapshot) {
          // Cut short during the snapshot: it starts over.
          skip = new Map();
          if (snapshotItems) {
            yield { type: "resync", reason: error, oldestRevision: undefined };
          }
        } else {
          const delivered = trailerRevision(error, LAST_REVISION_TRAILER);
          if (delivered !== undefined && this.last !== undefined && delivered > this.last) {
            this.last = delivered;
          }
        }
        const delay = backoffDelay(backoff.initialMs, backoff.maxMs, attempt);
        this.options.onRetry?.(error, attempt, delay);
        await sleep(delay, signal);
        if (signal.aborted) return;
      }
    } finally {
      this.abort.abort();
      this.onEnd();
    }
  }
}
