import type { ConnectionWatch, WatchEvent } from "../../src/index.js";

/**
 * Pulls events from a watch on demand and keeps them, so that a test can
 * wait for a condition or stop pulling (a paused consumer).
 */
export class Recorder {
  readonly events: WatchEvent[] = [];
  private readonly iterator: AsyncIterator<WatchEvent>;
  private pending: Promise<IteratorResult<WatchEvent>> | undefined;

  constructor(readonly watch: ConnectionWatch) {
    this.iterator = watch[Symbol.asyncIterator]();
  }

  /** Pulls events until `done(events)` holds, failing after `timeoutMs`. */
  async until(what: string, done: (events: WatchEvent[]) => boolean, timeoutMs = 15_000): Promise<void> {
    if (done(this.events)) return;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; last events: ${this.describe(5)}`);
      let timer: NodeJS.Timeout | undefined;
      const next = await Promise.race([
        (this.pending ??= this.iterator.next()),
        new Promise<"timeout">((resolve) => {
          timer = setTimeout(() => resolve("timeout"), left);
        }),
      ]).finally(() => clearTimeout(timer));
      if (next === "timeout") {
        throw new Error(`timed out waiting for ${what}; last events: ${this.describe(5)}`);
      }
      this.pending = undefined;
      if (next.done) throw new Error(`the watch ended while waiting for ${what}`);
      this.events.push(next.value);
      if (done(this.events)) return;
    }
  }

  /** Pulls until a change with at least this revision arrived. */
  untilRevision(revision: bigint, timeoutMs?: number): Promise<void> {
    return this.until(
      `revision ${revision}`,
      (events) => events.some((e) => e.type === "change" && e.revision >= revision),
      timeoutMs,
    );
  }

  /** Revisions of the changes received (not snapshot records). */
  changeRevisions(from = 0): bigint[] {
    return this.events
      .slice(from)
      .flatMap((e) => (e.type === "change" ? [e.revision] : []));
  }

  async close(): Promise<void> {
    this.watch.close();
    await this.iterator.return?.();
  }

  describe(last: number): string {
    return this.events
      .slice(-last)
      .map((e) => (e.type === "change" || e.type === "snapshot" ? `${e.type}@${e.revision}` : e.type))
      .join(", ");
  }
}

/** Asserts `revisions` are exactly from+1, from+2, ..., to. */
export function contiguous(revisions: bigint[], from: bigint, to: bigint): string | undefined {
  if (BigInt(revisions.length) !== to - from) {
    return `expected ${to - from} changes (${from + 1n}..${to}), got ${revisions.length}`;
  }
  for (let i = 0; i < revisions.length; i++) {
    if (revisions[i] !== from + 1n + BigInt(i)) {
      return `at index ${i}: expected revision ${from + 1n + BigInt(i)}, got ${revisions[i]}`;
    }
  }
  return undefined;
}
