import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  type CallOptions,
  type Client,
  type Interceptor,
  type Transport,
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
import { ConnectionWatch, type WatchOptions } from "./watch.js";

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
  /** `host:port` (for example `127.0.0.1:50051`), or a full `http://` / `https://` URL. */
  address: string;
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
  /** The generated service clients. */
  readonly rpc: RawClients;
  /** The underlying gRPC transport. */
  readonly transport: Transport;
  private readonly session: Http2SessionManager;
  private readonly timeoutMs: number | undefined;
  private readonly watches = new Set<ConnectionWatch>();

  constructor(options: ConnstateClientOptions) {
    const tls = options.tls === true || (typeof options.tls === "object" && options.tls !== null);
    const url = baseUrl(options.address, tls);
    const tlsOptions = typeof options.tls === "object" ? options.tls : undefined;
    const nodeOptions =
      url.startsWith("https:") && tlsOptions
        ? {
            ...(tlsOptions.rootCertificate !== undefined ? { ca: tlsOptions.rootCertificate } : {}),
            ...(tlsOptions.serverName !== undefined ? { servername: tlsOptions.serverName } : {}),
          }
        : {};
    this.session = new Http2SessionManager(url, {}, nodeOptions);
    const interceptors = [...(options.interceptors ?? [])];
    if (options.credentials) {
      interceptors.push(credentialsInterceptor(options.credentials));
    }
    this.transport = createGrpcTransport({
      baseUrl: url,
      sessionManager: this.session,
      interceptors,
    });
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.rpc = {
      states: createClient(ConnectionStateService, this.transport),
      ingest: createClient(IngestService, this.transport),
      admin: createClient(AdminService, this.transport),
    };
  }

  private opts(options?: CallOptions): CallOptions | undefined {
    if (this.timeoutMs === undefined || options?.timeoutMs !== undefined) {
      return options;
    }
    return { ...options, timeoutMs: this.timeoutMs };
  }

  /** The state record of one client; `Code.NotFound` when there is none. */
  async get(clientId: string, options?: CallOptions): Promise<ConnectionState> {
    return this.rpc.states.getConnectionState({ clientId }, this.opts(options));
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
      const page = await this.rpc.states.listConnectionStates({ ...request, pageToken }, this.opts(options));
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
      const page = await this.rpc.states.listConnectionLogs({ ...request, pageToken }, this.opts(options));
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
    const page = await this.rpc.states.listConnectionStates({ pageSize: 1 }, this.opts(options));
    return page.revision;
  }

  /** Records a batch of lifecycle events reported by `broker`. */
  async ingest(broker: string, events: LifecycleEventInit[], options?: CallOptions): Promise<IngestEventsResponse> {
    return this.rpc.ingest.ingestEvents({ broker, events }, this.opts(options));
  }

  /** Deletes a client's record and log; answers the revision of the deletion. */
  async delete(clientId: string, options?: CallOptions): Promise<bigint> {
    const res = await this.rpc.states.deleteConnectionState({ clientId }, this.opts(options));
    return res.revision;
  }

  /** The current administrator settings. */
  async getSettings(options?: CallOptions): Promise<Settings> {
    return this.rpc.admin.getSettings({}, this.opts(options));
  }

  /** Changes the settings named in `updateMask` (every set field when empty). */
  async updateSettings(settings: SettingsInit, updateMask: string[] = [], options?: CallOptions): Promise<Settings> {
    return this.rpc.admin.updateSettings({ settings, updateMask }, this.opts(options));
  }

  /** `await using client = new ConnstateClient(...)`: closes it at the end of the block. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  /** Ends every watch of this client and closes the HTTP/2 connection; open calls fail. */
  close(): void {
    for (const watch of this.watches) {
      watch.close();
    }
    this.watches.clear();
    this.session.abort();
  }
}

/** `Timestamp` → `Date`, or `undefined` when unset. */
export function toDate(ts: Parameters<typeof timestampDate>[0] | undefined): Date | undefined {
  return ts === undefined ? undefined : timestampDate(ts);
}
