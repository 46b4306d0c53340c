// Starts the real connstate server binary for the tests.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import {
  ConnstateClient,
  DisconnectCause,
  type LifecycleEventInit,
  MqttProtocol,
  timestampFromDate,
} from "../../src/index.js";

const here = path.dirname(fileURLToPath(import.meta.url));
// dist/test/support -> clients/typescript -> repository root
const repoRoot = path.resolve(here, "..", "..", "..", "..", "..");

export const serverBinary = process.env.CONNSTATE_BIN ?? path.join(repoRoot, "target", "debug", "connstate");

/** A free TCP port on loopback (bind 0, read it, close). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      const port = typeof address === "object" && address ? address.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface ServerOptions {
  /** Extra flags, e.g. ["--retention-interval", "100ms"]. */
  args?: string[];
  /** Listen on this port (default: any free port chosen by the server). */
  port?: number;
  /** Reuse this data directory (default: a fresh one). */
  dataDir?: string;
}

export class TestServer {
  private constructor(
    readonly process: ChildProcess,
    readonly port: number,
    readonly dataDir: string,
    readonly args: string[],
    private readonly ownsDir: boolean,
    /** The REST gateway's `host:port` (the second line the server prints). */
    readonly rest: Promise<string>,
  ) {}

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  static async start(options: ServerOptions = {}): Promise<TestServer> {
    const ownsDir = options.dataDir === undefined;
    const dataDir = options.dataDir ?? mkdtempSync(path.join(tmpdir(), "connstate-ts-"));
    const args = options.args ?? [];
    const listen = `127.0.0.1:${options.port ?? 0}`;
    const child = spawn(serverBinary, ["serve", "--grpc-listen", listen, "--data-dir", dataDir, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      // Newer builds also serve REST (default 127.0.0.1:8080) and MQTT
      // (1883, and 8083 over WebSocket): any free port, so that several
      // servers can run at once. Older builds ignore these.
      env: {
        ...process.env,
        CONNSTATE_REST_LISTEN: "127.0.0.1:0",
        CONNSTATE_MQTT_LISTEN: "127.0.0.1:0",
        CONNSTATE_MQTT_WS_LISTEN: "127.0.0.1:0",
      },
    });
    let stderr = "";
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      stderr = (stderr + chunk).slice(-4000);
    });
    const lines = createInterface({ input: child.stdout! });
    const rest = new Promise<string>((resolve) => {
      lines.on("line", (line) => {
        const m = /^connstate rest listening on (\S+)$/.exec(line.trim());
        if (m) resolve(m[1]!);
      });
    });
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`server did not start within 15 s:\n${stderr}`));
      }, 15_000);
      const fail = (why: string) => {
        clearTimeout(timer);
        reject(new Error(`server ${why}:\n${stderr}`));
      };
      child.once("error", (e) => fail(`failed to start: ${e.message}`));
      child.once("exit", (code) => fail(`exited with ${code}`));
      lines.once("line", (line) => {
        clearTimeout(timer);
        const m = /^connstate grpc listening on 127\.0\.0\.1:(\d+)$/.exec(line.trim());
        if (!m) {
          reject(new Error(`unexpected first line: ${line}`));
          return;
        }
        child.removeAllListeners("exit");
        child.removeAllListeners("error");
        resolve(Number(m[1]));
      });
    });
    return new TestServer(child, port, dataDir, args, ownsDir, rest);
  }

  /** Stops the server (SIGTERM) and waits for it to exit. */
  async stop(): Promise<void> {
    const child = this.process;
    if (child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      child.once("exit", () => {
        clearTimeout(timer);
        resolve();
      });
      child.kill("SIGTERM");
    });
  }

  /** Stops it and starts it again on the same port and data directory. */
  async restart(): Promise<TestServer> {
    await this.stop();
    const next = await TestServer.start({ port: this.port, dataDir: this.dataDir, args: this.args });
    // The data directory now belongs to the new process.
    return new TestServer(next.process, next.port, next.dataDir, next.args, this.ownsDir, next.rest);
  }

  /** Stops it and removes its data directory (when it created it). */
  async dispose(): Promise<void> {
    await this.stop();
    if (this.ownsDir) rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** A server whose port is chosen up front, so it can be restarted on it. */
export async function startOnFreePort(args: string[] = []): Promise<TestServer> {
  for (let i = 0; ; i++) {
    const port = await freePort();
    try {
      return await TestServer.start({ port, args });
    } catch (e) {
      if (i >= 4) throw e;
    }
  }
}

let clock = Date.UTC(2026, 10, 26, 10, 0, 0);

/** A connect event at a distinct, growing time. */
export function connected(clientId: string, connectionId: bigint | number): LifecycleEventInit {
  clock += 1000;
  return {
    clientId,
    time: timestampFromDate(new Date(clock)),
    connectionId: BigInt(connectionId),
    event: {
      case: "connected",
      value: {
        info: { clientAddr: "192.0.2.10", port: 40000, protocol: MqttProtocol.V3_1_1, keepAliveSeconds: 60 },
      },
    },
  };
}

/** A disconnect event at a distinct, growing time. */
export function disconnected(
  clientId: string,
  connectionId: bigint | number,
  cause: DisconnectCause = DisconnectCause.CLIENT_DISCONNECT,
): LifecycleEventInit {
  clock += 1000;
  return {
    clientId,
    time: timestampFromDate(new Date(clock)),
    connectionId: BigInt(connectionId),
    event: { case: "disconnected", value: { cause } },
  };
}

/** Polls `check` until it returns a value other than undefined, or fails after `timeoutMs`. */
export async function eventually<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs = 10_000,
  intervalMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Rejects if `promise` does not settle within `ms`. */
export async function within<T>(what: string, ms: number, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export function newClient(server: TestServer): ConnstateClient {
  return new ConnstateClient({ address: server.address, credentials: { apiKey: "a-key", token: "a-token" } });
}
