// Connection options: credentials metadata and TLS. The connstate server
// does not check credentials nor serve TLS yet, so these tests use a bare
// HTTP/2 endpoint that records what it receives and answers UNIMPLEMENTED.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, it } from "node:test";

import { Code, ConnectError, ConnstateClient } from "../src/index.js";

type Seen = { path: string; authorization: string | undefined; contentType: string | undefined };

function answerUnimplemented(seen: Seen[]) {
  return (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
    seen.push({
      path: String(headers[":path"]),
      authorization: headers.authorization,
      contentType: headers["content-type"],
    });
    stream.on("data", () => {});
    stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "12" }, { endStream: true });
  };
}

async function listen(server: http2.Http2Server | http2.Http2SecureServer): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as AddressInfo).port;
}

function opensslAvailable(): boolean {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

describe("transport", () => {
  it("sends credentials as basic authorization over gRPC", async () => {
    const seen: Seen[] = [];
    const server = http2.createServer();
    server.on("stream", answerUnimplemented(seen));
    const port = await listen(server);
    const client = new ConnstateClient({ address: `127.0.0.1:${port}`, credentials: { apiKey: "key", token: "tok" } });
    try {
      await assert.rejects(client.get("d:o:t:x"), (e: unknown) => e instanceof ConnectError && e.code === Code.Unimplemented);
      assert.equal(seen.length, 1);
      assert.equal(seen[0]!.path, "/connstate.v1.ConnectionStateService/GetConnectionState");
      assert.equal(seen[0]!.authorization, `Basic ${Buffer.from("key:tok").toString("base64")}`);
      assert.equal(seen[0]!.contentType, "application/grpc+proto");
    } finally {
      client.close();
      await new Promise((r) => server.close(r));
    }
  });

  it("connects with TLS trusting a given root certificate", { skip: !opensslAvailable() && "no openssl" }, async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "connstate-tls-"));
    const seen: Seen[] = [];
    let server: http2.Http2SecureServer | undefined;
    let client: ConnstateClient | undefined;
    try {
      const key = path.join(dir, "key.pem");
      const cert = path.join(dir, "cert.pem");
      execFileSync(
        "openssl",
        ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
          "-out", cert, "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        { stdio: "ignore" },
      );
      server = http2.createSecureServer({ key: readFileSync(key), cert: readFileSync(cert) });
      server.on("stream", answerUnimplemented(seen));
      const port = await listen(server);
      client = new ConnstateClient({ address: `127.0.0.1:${port}`, tls: { rootCertificate: readFileSync(cert) } });
      await assert.rejects(client.get("d:o:t:x"), (e: unknown) => e instanceof ConnectError && e.code === Code.Unimplemented);
      assert.equal(seen.length, 1, "the call went through TLS");

      // Without the root certificate the server is not trusted.
      const untrusting = new ConnstateClient({ address: `127.0.0.1:${port}`, tls: true });
      try {
        await assert.rejects(untrusting.get("d:o:t:x"), (e: unknown) => e instanceof ConnectError && /certificate/.test(e.message));
      } finally {
        untrusting.close();
      }
      assert.equal(seen.length, 1);
    } finally {
      client?.close();
      if (server) await new Promise((r) => server!.close(r));
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
