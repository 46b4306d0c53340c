import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  type CallOptions,
  type Client,
  type Interceptor,
  type Transport,
  Code,
  ConnectError,
  createClient,
} from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

import {
  AdminService,
  ConnectionStateService,
  IngestService,
  type ConnectionState,
  type IngestEventsResponse,
  type LifecycleEventSchema,
  type ListConnectionLogsRequestSchema,
  type ListConnectionLogsResponse,
  type ListConnectionStatesRequestSchema,
  type ListConnectionStatesResponse,
  type LogEntry,
  type Settings,
  type SettingsSchema,
} from "./gen/connstate/v1/connstate_pb.js";
import { ConnectionWatch, type WatchOptions, serverGone } from "./watch.js";

/** API key and token, sent as `authorization: Basic base64(key:token)`. */
export interface Credentials {
  apiKey: string;
  token: string;
}

/** TLS settings. Without them the connection is plaintext (h2c). */
export interface TlsOptions {
  /** PEM root certificate(s) to trust instead of the system store. */
  rootCertificate?: string | Buffer;
  /** Name to verify the server certificate against (SNI). */
  serverName?: string;
}

export interface ConnstateClientOptions {
  /**
   * `host:port` (for example `127.0.0.1:50051`), or a full `http://` / `https://` URL.
   *
   * Several servers (a cluster's nodes) as a list or a comma-separated string
   * (`"a:50051,b:50051"`): the client uses the first that answers and, when it
   * goes away, the next one. A watch then resumes on the next server from the
   * last revision it delivered; the reads (`get`, `list`, `logs`,
   * `currentRevision`, `getSettings`) are retried on `Code.Unavailable` (or a
   * `Code.Canceled` the caller did not cause: how Node reports a reset
   * connection) on the next server, each address once. Writes (`ingest`, `delete`,
   * `updateSettings`) are not retried: ingest is not idempotent and a retried
   * delete could answer `NotFound` for its own success; they fail with
   * `Code.Unavailable` and the next call goes to the next server. See
   * clients/CONTRACT.md ("Several addresses").
   */
  address: string | readonly string[];
  /** Optional API key + token, sent as gRPC metadata on every call. */
  credentials?: Credentials;
  /** `true` or TLS settings to connect with TLS; plaintext by default. */
  tls?: boolean | TlsOptions;
  /** Default deadline of unary calls, in milliseconds (30 000 by default). */
  timeoutMs?: number;
  /** Extra interceptors, run before the credentials interceptor. */
  interceptors?: Interceptor[];
}

/** Fields of a ListConnectionStates request (all optional). */
export type ListRequest = Omit<MessageInitShape<typeof ListConnectionStatesRequestSchema>, "$typeName">;
/** Fields of a ListConnectionLogs request (all optional). */
export type LogsRequest = Omit<MessageInitShape<typeof ListConnectionLogsRequestSchema>, "$typeName">;
/** One lifecycle event as accepted by `ingest`. */
export type LifecycleEventInit = Omit<MessageInitShape<typeof LifecycleEventSchema>, "$typeName">;
/** Settings fields as accepted by `updateSettings`. */
export type SettingsInit = Omit<MessageInitShape<typeof SettingsSchema>, "$typeName">;

/** The generated clients of the three services, for calls the wrapper does not cover. */
export interface RawClients {
  readonly states: Client<typeof ConnectionStateService>;
  readonly ingest: Client<typeof IngestService>;
  readonly admin: Client<typeof AdminService>;
}

/** `"a:1,b:2"` or `["a:1", "b:2"]`: the addresses, in order. */
function splitAddresses(address: string | readonly string[]): string[] {
  const list = (typeof address === "string" ? address.split(",") : [...address])
    .map((a) => a.trim())
    .filter((a) => a !== "");
  if (list.length === 0) {
    throw new ConnectError("address: no server address given", Code.InvalidArgument);
  }
  return list;
}

/** One server address: its HTTP/2 session, transport and generated clients. */
interface Endpoint {
  readonly address: string;
  readonly session: Http2SessionManager;
  readonly transport: Transport;
  readonly rpc: RawClients;
}

function baseUrl(address: string, tls: boolean): string {
  if (/^https?:\/\//.test(address)) {
    return address;
  }
  return `${tls ? "https" : "http"}://${address}`;
}

function credentialsInterceptor(credentials: Credentials): Interceptor {
  const value = `Basic ${Buffer.from(`${credentials.apiKey}:${credentials.token}`).toString("base64")}`;
  return (next) => (req) => {
    req.header.set("authorization", value);
    return next(req);
  };
}

/**
 * A client of the connstate gRPC API.
 *
 * Calls fail with `ConnectError` (from `@connectrpc/connect`), whose `code`
 * is the gRPC status code: `Code.NotFound`, `Code.InvalidArgument`, ...
 */
export class ConnstateClient implements AsyncDisposable {
  private readonly endpoints: Endpoint[];
  private current = 0;
  private readonly timeoutMs: number | undefined;
  private readonly watches = new Set<ConnectionWatch>();

  constructor(options: ConnstateClientOptions) {
    const tls = options.tls === true || (typeof options.tls === "object" && options.tls !== null);
    const tlsOptions = typeof options.tls === "object" ? options.tls : undefined;
    const interceptors = [...(options.interceptors ?? [])];
    if (options.credentials) {
      interceptors.push(credentialsInterceptor(options.credentials));
    }
    this.endpoints = splitAddresses(options.address).map((address) => {
      const url = baseUrl(address, tls);
      const nodeOptions =
        url.startsWith("https:") && tlsOptions
          ? {
              ...(tlsOptions.rootCertificate !== undefined ? { ca: tlsOptions.rootCertificate } : {}),
              ...(tlsOptions.serverName !== undefined ? { servername: tlsOptions.serverName } : {}),
            }
          : {};
      const session = new Http2SessionManager(url, {}, nodeOptions);
      const transport = createGrpcTransport({ baseUrl: url, sessionManager: session, interceptors });
      const rpc = {
        states: createClient(ConnectionStateService, transport),
        ingest: createClient(IngestService, transport),
        admin: createClient(AdminService, transport),
      };
      return { address, session, transport, rpc };
    });
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  /** The generated service clients of the server in use. */
  get rpc(): RawClients {
    return this.endpoints[this.current].rpc;
  }

  /** The gRPC transport of the server in use. */
  get transport(): Transport {
    return this.endpoints[this.current].transport;
  }

  /** @internal The server in use (its index, for `unavailable`) and its clients. */
  endpoint(): { index: number; rpc: RawClients } {
    return { index: this.current, rpc: this.endpoints[this.current].rpc };
  }

  /**
   * @internal The server at `index` is gone (see `serverGone`): use the next
   * one, unless another call has moved on already.
   */
  unavailable(index: number): void {
    if (this.endpoints.length > 1 && this.current === index) {
      this.current = (index + 1) % this.endpoints.length;
    }
  }

  /**
   * Calls the server in use; a read that finds it unavailable is retried on
   * the next one, each address once, within the one deadline.
   */
  private async call<T>(
    read: boolean,
    fn: (rpc: RawClients, options?: CallOptions) => Promise<T>,
    options?: CallOptions,
  ): Promise<T> {
    const base = this.opts(options);
    const deadline = base?.timeoutMs !== undefined ? Date.now() + base.timeoutMs : undefined;
    const attempts = read ? this.endpoints.length : 1;
    for (let attempt = 1; ; attempt++) {
      const { index, rpc } = this.endpoint();
      const opts = deadline === undefined ? base : { ...base, timeoutMs: Math.max(1, deadline - Date.now()) };
      try {
        return await fn(rpc, opts);
      } catch (e) {
        if (!serverGone(ConnectError.from(e), options?.signal)) throw e;
        this.unavailable(index);
        if (attempt >= attempts) throw e;
      }
    }
  }

  private opts(options?: CallOptions): CallOptions | undefined {
    if (this.timeoutMs === undefined || options?.timeoutMs !== undefined) {
      return options;
    }
    return { ...options, timeoutMs: this.timeoutMs };
  }

  /** The state record of one client; `Code.NotFound` when there is none. */
  async get(clientId: string, options?: CallOptions): Promise<ConnectionState> {
    return this.call(true, (rpc, opts) => rpc.states.getConnectionState({ clientId }, opts), options);
  }

  /** Every state record matching the request, following page tokens. */
  async *list(request: ListRequest = {}, options?: CallOptions): AsyncGenerator<ConnectionState, void, undefined> {
    for await (const page of this.listPages(request, options)) {
      yield* page.states;
    }
  }

  /** The pages of a listing, following page tokens (each carries its store revision). */
  async *listPages(
    request: ListRequest = {},
    options?: CallOptions,
  ): AsyncGenerator<ListConnectionStatesResponse, void, undefined> {
    let pageToken = request.pageToken ?? "";
    for (;;) {
      const page = await this.call(
        true,
        (rpc, opts) => rpc.states.listConnectionStates({ ...request, pageToken }, opts),
        options,
      );
      yield page;
      if (page.nextPageToken === "") {
        return;
      }
      pageToken = page.nextPageToken;
    }
  }

  /** Connection log entries matching the request, newest first, following page tokens. */
  async *logs(request: LogsRequest = {}, options?: CallOptions): AsyncGenerator<LogEntry, void, undefined> {
    for await (const page of this.logPages(request, options)) {
      yield* page.entries;
    }
  }

  /** The pages of a log listing, following page tokens. */
  async *logPages(
    request: LogsRequest = {},
    options?: CallOptions,
  ): AsyncGenerator<ListConnectionLogsResponse, void, undefined> {
    let pageToken = request.pageToken ?? "";
    for (;;) {
      const page = await this.call(
        true,
        (rpc, opts) => rpc.states.listConnectionLogs({ ...request, pageToken }, opts),
        options,
      );
      yield page;
      if (page.nextPageToken === "") {
        return;
      }
      pageToken = page.nextPageToken;
    }
  }

  /**
   * A resumable stream of changes; see `WatchOptions` and `WatchEvent`.
   * Iterate it with `for await`; `break` (or `watch.close()`) ends the call.
   */
  watch(options: WatchOptions = {}): ConnectionWatch {
    const watch = new ConnectionWatch(this, options, () => this.watches.delete(watch));
    this.watches.add(watch);
    return watch;
  }

  /** The store's newest committed revision. */
  async currentRevision(options?: CallOptions): Promise<bigint> {
    const page = await this.call(true, (rpc, opts) => rpc.states.listConnectionStates({ pageSize: 1 }, opts), options);
    return page.revision;
  }

  /** Records a batch of lifecycle events reported by `broker`. */
  async ingest(broker: string, events: LifecycleEventInit[], options?: CallOptions): Promise<IngestEventsResponse> {
    return this.call(false, (rpc, opts) => rpc.ingest.ingestEvents({ broker, events }, opts), options);
  }

  /** Deletes a client's record and log; answers the revision of the deletion. */
  async delete(clientId: string, options?: CallOptions): Promise<bigint> {
    const res = await this.call(false, (rpc, opts) => rpc.states.deleteConnectionState({ clientId }, opts), options);
    return res.revision;
  }

  /** The current administrator settings. */
  async getSettings(options?: CallOptions): Promise<Settings> {
    return this.call(true, (rpc, opts) => rpc.admin.getSettings({}, opts), options);
  }

  /** Changes the settings named in `updateMask` (every set field when empty). */
  async updateSettings(settings: SettingsInit, updateMask: string[] = [], options?: CallOptions): Promise<Settings> {
    return this.call(false, (rpc, opts) => rpc.admin.updateSettings({ settings, updateMask }, opts), options);
  }

  /** `await using client = new ConnstateClient(...)`: closes it at the end of the block. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  /** Ends every watch of this client and closes its HTTP/2 connections; open calls fail. */
  close(): void {
    for (const watch of this.watches) {
      watch.close();
    }
    this.watches.clear();
    for (const endpoint of this.endpoints) {
      endpoint.session.abort();
    }
  }
}

/** `Timestamp` → `Date`, or `undefined` when unset. */
export function toDate(ts: Parameters<typeof timestampDate>[0] | undefined): Date | undefined {
  return ts === undefined ? undefined : timestampDate(ts);
}
