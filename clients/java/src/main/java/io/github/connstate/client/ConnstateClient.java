package io.github.connstate.client;

import io.github.connstate.v1.AdminServiceGrpc;
import io.github.connstate.v1.ConnectionState;
import io.github.connstate.v1.ConnectionStateFilter;
import io.github.connstate.v1.ConnectionStateServiceGrpc;
import io.github.connstate.v1.DeleteConnectionStateRequest;
import io.github.connstate.v1.GetConnectionStateRequest;
import io.github.connstate.v1.GetSettingsRequest;
import io.github.connstate.v1.IngestEventsRequest;
import io.github.connstate.v1.IngestEventsResponse;
import io.github.connstate.v1.IngestServiceGrpc;
import io.github.connstate.v1.LifecycleEvent;
import io.github.connstate.v1.ListConnectionLogsRequest;
import io.github.connstate.v1.ListConnectionLogsResponse;
import io.github.connstate.v1.ListConnectionStatesRequest;
import io.github.connstate.v1.ListConnectionStatesResponse;
import io.github.connstate.v1.LogEntry;
import io.github.connstate.v1.Settings;
import io.github.connstate.v1.UpdateSettingsRequest;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.Deadline;
import io.grpc.ForwardingClientCall;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Iterator;
import java.util.List;
import java.util.NoSuchElementException;
import java.util.Set;
import java.util.Spliterator;
import java.util.Spliterators;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Consumer;
import java.util.function.Function;
import java.util.stream.Stream;
import java.util.stream.StreamSupport;

/**
 * Client of the connstate service (the connection state of every MQTT client of a fleet).
 *
 * <p>It follows the contract shared by every connstate SDK (clients/CONTRACT.md): unary calls get
 * a default deadline of 30 s ({@link Builder#deadline}, or per call with {@link #withDeadline});
 * they are not retried (except the reads of a client given several addresses, below). Errors are
 * thrown as {@link io.grpc.StatusRuntimeException}; {@code Status.fromThrowable(e).getCode()}
 * tells which (NOT_FOUND, INVALID_ARGUMENT naming the field, PERMISSION_DENIED, ...).
 *
 * <p>It may be given several server addresses (a cluster's nodes): {@code
 * address("a:50051,b:50051")} or {@code addresses(List.of("a:50051", "b:50051"))}. It uses the
 * first that answers and, when it goes away (UNAVAILABLE), the next one: a watch resumes there
 * from the last revision it delivered, and the reads ({@link #get}, {@link #list}, {@link #logs},
 * {@link #settings}, {@link #currentRevision}) are retried on the next server, each address once,
 * within their one deadline. Writes ({@link #ingest}, {@link #delete}, {@link #updateSettings})
 * are not retried: IngestEvents is not idempotent and a retried delete could answer NOT_FOUND for
 * its own success; they fail with UNAVAILABLE and the next call goes to the next server (see
 * clients/CONTRACT.md, "Several addresses").
 *
 * <pre>{@code
 * try (ConnstateClient client = ConnstateClient.builder()
 *     .address("127.0.0.1:50051")
 *     .apiKey(key, token)
 *     .build()) {
 *   ConnectionState state = client.get("d:acme:thermostat:t01");
 *   client.list(ConnectionStateFilter.getDefaultInstance()).forEach(System.out::println);
 * }
 * }</pre>
 */
public final class ConnstateClient implements AutoCloseable {
  /** The contract's default deadline of unary calls. */
  public static final Duration DEFAULT_DEADLINE = Duration.ofSeconds(30);

  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private final Endpoints endpoints;
  private final Duration deadline;
  /** Open watches (shared with the views of {@link #withDeadline}), closed with the client. */
  private final Set<ConnectionWatch> watches;

  private ConnstateClient(Endpoints endpoints, Duration deadline, Set<ConnectionWatch> watches) {
    this.endpoints = endpoints;
    this.deadline = deadline;
    this.watches = watches;
  }

  /** One server address: its channel, and that channel with the credentials attached. */
  private record Endpoint(String address, ManagedChannel managed, Channel channel) {}

  /** The channels of a client, one per server address, and the one in use. */
  private static final class Endpoints {
    private final List<Endpoint> all;
    private final AtomicInteger current = new AtomicInteger();

    Endpoints(List<Endpoint> all) {
      this.all = List.copyOf(all);
    }
  }

  /** The blocking stubs of one server, with one deadline. */
  private record Stubs(
      ConnectionStateServiceGrpc.ConnectionStateServiceBlockingStub states,
      IngestServiceGrpc.IngestServiceBlockingStub ingest,
      AdminServiceGrpc.AdminServiceBlockingStub admin) {
    static Stubs of(Channel channel, Deadline deadline) {
      return new Stubs(
          ConnectionStateServiceGrpc.newBlockingStub(channel).withDeadline(deadline),
          IngestServiceGrpc.newBlockingStub(channel).withDeadline(deadline),
          AdminServiceGrpc.newBlockingStub(channel).withDeadline(deadline));
    }
  }

  /** The index of the server in use (for {@link #channel(int)} and {@link #unavailable}). */
  int endpoint() {
    return endpoints.current.get();
  }

  /** The channel, credentials attached, of the server at {@code index}. */
  Channel channel(int index) {
    return endpoints.all.get(index).channel();
  }

  /**
   * The server at {@code index} answered UNAVAILABLE: use the next one, unless another call has
   * moved on already.
   */
  void unavailable(int index) {
    int n = endpoints.all.size();
    if (n > 1) {
      endpoints.current.compareAndSet(index, (index + 1) % n);
    }
  }

  /** A read: on the server in use, and on the next ones (each once) while they are UNAVAILABLE. */
  private <T> T read(Function<Stubs, T> call) {
    return call(call, endpoints.all.size());
  }

  /** A write: on the server in use only. */
  private <T> T write(Function<Stubs, T> call) {
    return call(call, 1);
  }

  private <T> T call(Function<Stubs, T> call, int attempts) {
    Deadline until = Deadline.after(deadline.toNanos(), TimeUnit.NANOSECONDS);
    for (int attempt = 1; ; attempt++) {
      int index = endpoint();
      try {
        return call.apply(Stubs.of(channel(index), until));
      } catch (StatusRuntimeException e) {
        if (e.getStatus().getCode() != Status.Code.UNAVAILABLE) {
          throw e;
        }
        unavailable(index);
        if (attempt >= attempts) {
          throw e;
        }
      }
    }
  }

  /** A client of {@code address} without credentials, plaintext unless it starts with https://. */
  public static ConnstateClient connect(String address) {
    return builder().address(address).build();
  }

  public static Builder builder() {
    return new Builder();
  }

  /**
   * A view of this client whose unary calls get {@code deadline} instead; it shares the
   * connection (closing either closes both).
   */
  public ConnstateClient withDeadline(Duration deadline) {
    return new ConnstateClient(endpoints, checkDeadline(deadline), watches);
  }

  /** The default deadline of unary calls. */
  public Duration deadline() {
    return deadline;
  }

  /**
   * The channel of the server in use, with the credentials attached, for calls this class does
   * not wrap.
   */
  public Channel channel() {
    return channel(endpoint());
  }

  /** The generated stub of ConnectionStateService (of the server in use), with the default deadline. */
  public ConnectionStateServiceGrpc.ConnectionStateServiceBlockingStub stateStub() {
    return ConnectionStateServiceGrpc.newBlockingStub(channel()).withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS);
  }

  /** The generated stub of IngestService (of the server in use), with the default deadline. */
  public IngestServiceGrpc.IngestServiceBlockingStub ingestStub() {
    return IngestServiceGrpc.newBlockingStub(channel()).withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS);
  }

  /** The generated stub of AdminService (of the server in use), with the default deadline. */
  public AdminServiceGrpc.AdminServiceBlockingStub adminStub() {
    return AdminServiceGrpc.newBlockingStub(channel()).withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS);
  }

  /** The state record of one client; NOT_FOUND when there is none. */
  public ConnectionState get(String clientId) {
    GetConnectionStateRequest request = GetConnectionStateRequest.newBuilder().setClientId(clientId).build();
    return read(s -> s.states().getConnectionState(request));
  }

  /** Every state record, by client id. */
  public Stream<ConnectionState> list() {
    return list(ListConnectionStatesRequest.getDefaultInstance());
  }

  /** Every state record matching {@code filter}, by client id. */
  public Stream<ConnectionState> list(ConnectionStateFilter filter) {
    return list(ListConnectionStatesRequest.newBuilder().setFilter(filter).build());
  }

  /**
   * Every state record the request selects, following {@code next_page_token} page by page (each
   * page is fetched when the stream reaches it, with its own deadline).
   */
  public Stream<ConnectionState> list(ListConnectionStatesRequest request) {
    return listPages(request).flatMap(page -> page.getStatesList().stream());
  }

  /** The pages of a listing, from the request's page token to the last page. */
  public Stream<ListConnectionStatesResponse> listPages(ListConnectionStatesRequest request) {
    return pages(
        request,
        r -> read(s -> s.states().listConnectionStates(r)),
        (r, token) -> r.toBuilder().setPageToken(token).build(),
        ListConnectionStatesResponse::getNextPageToken);
  }

  /** The connection log of one client, newest first. */
  public Stream<LogEntry> logs(String clientId) {
    return logs(ListConnectionLogsRequest.newBuilder().setClientId(clientId).build());
  }

  /** Connection log entries the request selects, newest first, following page tokens. */
  public Stream<LogEntry> logs(ListConnectionLogsRequest request) {
    return logPages(request).flatMap(page -> page.getEntriesList().stream());
  }

  /** The pages of a log listing, from the request's page token to the last page. */
  public Stream<ListConnectionLogsResponse> logPages(ListConnectionLogsRequest request) {
    return pages(
        request,
        r -> read(s -> s.states().listConnectionLogs(r)),
        (r, token) -> r.toBuilder().setPageToken(token).build(),
        ListConnectionLogsResponse::getNextPageToken);
  }

  /** Deletes the record and log of one client; returns the revision of the deletion. */
  public long delete(String clientId) {
    DeleteConnectionStateRequest request = DeleteConnectionStateRequest.newBuilder().setClientId(clientId).build();
    return write(s -> s.states().deleteConnectionState(request)).getRevision();
  }

  /** Records lifecycle events reported by {@code broker}; returns once they are durable. */
  public IngestEventsResponse ingest(String broker, List<LifecycleEvent> events) {
    IngestEventsRequest request = IngestEventsRequest.newBuilder().setBroker(broker).addAllEvents(events).build();
    return write(s -> s.ingest().ingestEvents(request));
  }

  public Settings settings() {
    return read(s -> s.admin().getSettings(GetSettingsRequest.getDefaultInstance()));
  }

  /** Changes the settings named in {@code mask} (every field set in {@code settings} when empty). */
  public Settings updateSettings(Settings settings, List<String> mask) {
    UpdateSettingsRequest request =
        UpdateSettingsRequest.newBuilder().setSettings(settings).addAllUpdateMask(mask).build();
    return write(s -> s.admin().updateSettings(request));
  }

  /** The newest committed revision of the store. */
  public long currentRevision() {
    ListConnectionStatesRequest request = ListConnectionStatesRequest.newBuilder().setPageSize(1).build();
    return read(s -> s.states().listConnectionStates(request)).getRevision();
  }

  /** A watch of every change from now on. */
  public ConnectionWatch watch() {
    return watch(WatchOptions.builder().build());
  }

  /** A resumable watch with the request's filter, kinds, start and snapshot. */
  public ConnectionWatch watch(io.github.connstate.v1.WatchConnectionsRequest request) {
    return watch(WatchOptions.builder(request).build());
  }

  /**
   * A resumable watch (see {@link ConnectionWatch}). Without a start revision or a snapshot it
   * reads the current revision first, so that it starts from a known position: the changes after
   * this call are delivered, however late the iteration begins.
   *
   * @throws io.grpc.StatusRuntimeException when reading the current revision fails
   */
  public ConnectionWatch watch(WatchOptions options) {
    if (endpoints.all.get(0).managed().isShutdown()) {
      throw new IllegalStateException("the client is closed");
    }
    ConnectionWatch watch = new ConnectionWatch(this, options, watches::remove);
    watch.start();
    watches.add(watch);
    return watch;
  }

  /** Makes the channels try to connect at once if they are waiting to reconnect. */
  void resetConnectBackoff() {
    for (Endpoint endpoint : endpoints.all) {
      endpoint.managed().resetConnectBackoff();
    }
  }

  /** Closes the connections; open watches end (their iteration finishes without an error). */
  @Override
  public void close() {
    for (Endpoint endpoint : endpoints.all) {
      endpoint.managed().shutdown();
    }
    for (ConnectionWatch watch : List.copyOf(watches)) {
      watch.close();
    }
    for (Endpoint endpoint : endpoints.all) {
      endpoint.managed().shutdownNow();
    }
    try {
      for (Endpoint endpoint : endpoints.all) {
        endpoint.managed().awaitTermination(5, TimeUnit.SECONDS);
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }

  private interface PageToken<R> {
    R with(R request, String token);
  }

  private static <R, P> Stream<P> pages(
      R first, Function<R, P> fetch, PageToken<R> withToken, Function<P, String> nextToken) {
    Iterator<P> it =
        new Iterator<>() {
          private R next = first;

          @Override
          public boolean hasNext() {
            return next != null;
          }

          @Override
          public P next() {
            if (next == null) {
              throw new NoSuchElementException();
            }
            P page = fetch.apply(next);
            String token = nextToken.apply(page);
            next = token.isEmpty() ? null : withToken.with(next, token);
            return page;
          }
        };
    return StreamSupport.stream(
        Spliterators.spliteratorUnknownSize(it, Spliterator.ORDERED | Spliterator.NONNULL), false);
  }

  private static Duration checkDeadline(Duration deadline) {
    if (deadline == null || deadline.isNegative() || deadline.isZero()) {
      throw new IllegalArgumentException("deadline must be positive, got " + deadline);
    }
    return deadline;
  }

  /** Builds a {@link ConnstateClient}. */
  public static final class Builder {
    private List<String> addresses = List.of("127.0.0.1:50051");
    private String apiKey;
    private String token;
    private Boolean tls;
    private Path rootCertificates;
    private Duration deadline = DEFAULT_DEADLINE;
    private Consumer<ManagedChannelBuilder<?>> channelConfig = b -> {};

    private Builder() {}

    /**
     * Anything else about the channel (message sizes, keepalive, an executor, ...), applied last
     * to the grpc-java channel builder.
     */
    public Builder configureChannel(Consumer<ManagedChannelBuilder<?>> config) {
      this.channelConfig = config;
      return this;
    }

    /**
     * {@code host:port}; {@code https://host:port} turns TLS on, {@code http://host:port} (or no
     * scheme) is plaintext. Default 127.0.0.1:50051. Several servers (a cluster's nodes) are
     * separated by commas: {@code "a:50051,b:50051"} (see {@link ConnstateClient}).
     */
    public Builder address(String address) {
      if (address == null) {
        throw new IllegalArgumentException("address must not be empty");
      }
      return addresses(List.of(address.split(",")));
    }

    /** Several servers (a cluster's nodes), in order of preference (see {@link ConnstateClient}). */
    public Builder addresses(List<String> addresses) {
      List<String> list = new ArrayList<>();
      for (String a : addresses) {
        if (a != null && !a.isBlank()) {
          list.add(a.trim());
        }
      }
      if (list.isEmpty()) {
        throw new IllegalArgumentException("address must not be empty");
      }
      this.addresses = List.copyOf(list);
      return this;
    }

    /**
     * The API key and its token, sent on every call (a watch's reconnections included) as {@code
     * authorization: Basic base64(key:token)}. Null for neither.
     */
    public Builder apiKey(String apiKey, String token) {
      if ((apiKey == null) != (token == null)) {
        throw new IllegalArgumentException("an API key and its token are given together");
      }
      this.apiKey = apiKey;
      this.token = token;
      return this;
    }

    /** TLS on or off, whatever the address's scheme says. Off by default. */
    public Builder tls(boolean tls) {
      this.tls = tls;
      return this;
    }

    /**
     * TLS with these PEM root certificates instead of the system's (turns TLS on).
     */
    public Builder rootCertificates(Path pemFile) {
      this.rootCertificates = pemFile;
      this.tls = true;
      return this;
    }

    /** The default deadline of unary calls (30 s). */
    public Builder deadline(Duration deadline) {
      this.deadline = checkDeadline(deadline);
      return this;
    }

    public ConnstateClient build() {
      List<Endpoint> endpoints = new ArrayList<>();
      for (String address : addresses) {
        endpoints.add(endpoint(address));
      }
      return new ConnstateClient(new Endpoints(endpoints), deadline, ConcurrentHashMap.newKeySet());
    }

    private Endpoint endpoint(String address) {
      String target = address;
      boolean secure = false;
      if (target.startsWith("https://")) {
        secure = true;
        target = target.substring("https://".length());
      } else if (target.startsWith("http://")) {
        target = target.substring("http://".length());
      }
      if (target.endsWith("/")) {
        target = target.substring(0, target.length() - 1);
      }
      if (tls != null) {
        secure = tls;
      }
      ChannelCredentials credentials;
      if (secure) {
        TlsChannelCredentials.Builder b = TlsChannelCredentials.newBuilder();
        if (rootCertificates != null) {
          try {
            b.trustManager(rootCertificates.toFile());
          } catch (IOException e) {
            throw new UncheckedIOException("reading root certificates " + rootCertificates, e);
          }
        }
        credentials = b.build();
      } else {
        credentials = InsecureChannelCredentials.create();
      }
      ManagedChannelBuilder<?> builder = Grpc.newChannelBuilder(target, credentials);
      channelConfig.accept(builder);
      ManagedChannel managed = builder.build();
      Channel channel = managed;
      if (apiKey != null) {
        String value =
            "Basic " + Base64.getEncoder().encodeToString((apiKey + ":" + token).getBytes(StandardCharsets.UTF_8));
        channel = ClientInterceptors.intercept(managed, new Authorization(value));
      }
      return new Endpoint(address, managed, channel);
    }
  }

  private static final class Authorization implements ClientInterceptor {
    private final String value;

    Authorization(String value) {
      this.value = value;
    }

    @Override
    public <Q, A> ClientCall<Q, A> interceptCall(MethodDescriptor<Q, A> method, CallOptions options, Channel next) {
      return new ForwardingClientCall.SimpleForwardingClientCall<>(next.newCall(method, options)) {
        @Override
        public void start(Listener<A> listener, Metadata headers) {
          headers.put(AUTHORIZATION, value);
          super.start(listener, headers);
        }
      };
    }
  }
}
