package io.github.connstate.client;

import static org.junit.jupiter.api.Assertions.fail;

import com.google.protobuf.Timestamp;
import io.github.connstate.v1.Connected;
import io.github.connstate.v1.ConnectionInfo;
import io.github.connstate.v1.DisconnectCause;
import io.github.connstate.v1.Disconnected;
import io.github.connstate.v1.LifecycleEvent;
import io.github.connstate.v1.MqttProtocol;
import io.grpc.ManagedChannelBuilder;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.net.ServerSocket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import java.util.function.Consumer;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

/** A real connstate server process on loopback ports, in auth mode with an administrator key. */
final class TestServer implements AutoCloseable {
  static final String ADMIN_KEY = "sdk-test-admin";
  static final String ADMIN_TOKEN = "sdk-test-token-0123456789";
  static final String BROKER = "sdk-test";
  /** An hour before the tests started, whole seconds: inside every retention period. */
  static final long BASE = Instant.now().getEpochSecond() - 3600;

  private final Path dataDir;
  private final List<String> args;
  private final Path log;
  private int port;
  private String rest;
  private Process process;

  private TestServer(Path dataDir, int port, List<String> args) {
    this.dataDir = dataDir;
    this.port = port;
    this.args = args;
    this.log = dataDir.resolveSibling(dataDir.getFileName() + ".log");
  }

  /** Starts a server on a free port that restarts keep. */
  static TestServer start(Path dir, String... args) throws IOException {
    Files.createDirectories(dir);
    TestServer server = new TestServer(dir.resolve("data"), freePort(), List.of(args));
    server.start();
    return server;
  }

  static String binary() {
    String bin = System.getenv("CONNSTATE_BIN");
    if (bin != null && !bin.isEmpty()) {
      return bin;
    }
    return Path.of("..", "..", "target", "debug", "connstate").toAbsolutePath().normalize().toString();
  }

  static int freePort() throws IOException {
    try (ServerSocket socket = new ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
      return socket.getLocalPort();
    }
  }

  String address() {
    return "127.0.0.1:" + port;
  }

  String rest() {
    return rest;
  }

  void start() throws IOException {
    List<String> cmd = new ArrayList<>(List.of(
        binary(), "serve",
        "--grpc-listen", "127.0.0.1:" + port,
        "--rest-listen", "127.0.0.1:0",
        "--mqtt-listen", "127.0.0.1:0",
        "--mqtt-ws-listen", "127.0.0.1:0",
        "--data-dir", dataDir.toString(),
        "--auth", "true", "--admin-key", ADMIN_KEY, "--admin-token", ADMIN_TOKEN));
    cmd.addAll(args);
    Process p = new ProcessBuilder(cmd)
        .redirectError(ProcessBuilder.Redirect.appendTo(log.toFile()))
        .start();
    BufferedReader out = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8));
    CompletableFuture<List<String>> lines = CompletableFuture.supplyAsync(() -> {
      List<String> read = new ArrayList<>();
      try {
        for (int i = 0; i < 2; i++) {
          read.add(out.readLine());
        }
      } catch (IOException e) {
        read.add(null);
      }
      return read;
    });
    List<String> first;
    try {
      first = lines.get(20, TimeUnit.SECONDS);
    } catch (Exception e) {
      p.destroyForcibly();
      throw new IOException("the server did not report its addresses within 20 s; log:\n" + logText(), e);
    }
    Matcher grpc = Pattern.compile("^connstate grpc listening on 127\\.0\\.0\\.1:(\\d+)$").matcher(String.valueOf(first.get(0)));
    Matcher http = Pattern.compile("^connstate rest listening on (\\S+)$").matcher(String.valueOf(first.get(1)));
    if (!grpc.matches() || !http.matches()) {
      p.destroyForcibly();
      throw new IOException("unexpected first lines " + first + "; log:\n" + logText());
    }
    port = Integer.parseInt(grpc.group(1));
    rest = "http://" + http.group(1);
    // Keep draining stdout so that the server never blocks on it.
    Thread drain = new Thread(() -> drain(p.getInputStream()), "connstate-stdout");
    drain.setDaemon(true);
    drain.start();
    process = p;
  }

  private static void drain(InputStream in) {
    byte[] buffer = new byte[4096];
    try {
      while (in.read(buffer) >= 0) {
        // discard
      }
    } catch (IOException e) {
      // the process ended
    }
  }

  /** SIGTERM, then waits (bounded) for the process to end. */
  void stop() throws InterruptedException {
    if (process == null) {
      return;
    }
    process.destroy();
    if (!process.waitFor(20, TimeUnit.SECONDS)) {
      process.destroyForcibly().waitFor(10, TimeUnit.SECONDS);
      process = null;
      fail("the server did not stop within 20 s; log:\n" + logText());
    }
    process = null;
  }

  /** SIGKILL: the server gets no chance to close anything. */
  void kill() throws InterruptedException {
    if (process == null) {
      return;
    }
    process.destroyForcibly();
    process.waitFor(10, TimeUnit.SECONDS);
    process = null;
  }

  /**
   * A server on a free port started on a copy of this one's data folder (the same revisions);
   * stop this one cleanly first.
   */
  TestServer copy(Path dir) throws IOException {
    Path data = dir.resolve("data");
    try (Stream<Path> paths = Files.walk(dataDir)) {
      for (Path from : (Iterable<Path>) paths::iterator) {
        Path to = data.resolve(dataDir.relativize(from).toString());
        if (Files.isDirectory(from)) {
          Files.createDirectories(to);
        } else {
          Files.copy(from, to);
        }
      }
    }
    TestServer copy = new TestServer(data, freePort(), args);
    copy.start();
    return copy;
  }

  void restart() throws IOException, InterruptedException {
    stop();
    start();
  }

  @Override
  public void close() throws InterruptedException {
    if (process != null) {
      process.destroy();
      if (!process.waitFor(20, TimeUnit.SECONDS)) {
        process.destroyForcibly().waitFor(10, TimeUnit.SECONDS);
      }
      process = null;
    }
  }

  String logText() {
    try {
      return Files.exists(log) ? Files.readString(log) : "";
    } catch (IOException e) {
      return "(log unreadable: " + e + ")";
    }
  }

  /** A client with the administrator's credentials; the caller closes it. */
  ConnstateClient admin() {
    return admin(b -> {});
  }

  ConnstateClient admin(Consumer<ManagedChannelBuilder<?>> channel) {
    return ConnstateClient.builder()
        .address(address())
        .apiKey(ADMIN_KEY, ADMIN_TOKEN)
        .configureChannel(channel)
        .build();
  }

  /** Creates an API key with {@code role} through the REST API; returns {key, token}. */
  String[] createKey(String role) throws IOException, InterruptedException {
    String basic = Base64.getEncoder().encodeToString((ADMIN_KEY + ":" + ADMIN_TOKEN).getBytes(StandardCharsets.UTF_8));
    HttpRequest request = HttpRequest.newBuilder(URI.create(rest + "/api/v0002/apikeys"))
        .timeout(Duration.ofSeconds(10))
        .header("authorization", "Basic " + basic)
        .header("content-type", "application/json")
        .POST(HttpRequest.BodyPublishers.ofString("{\"role\":\"" + role + "\",\"description\":\"java sdk test\"}"))
        .build();
    HttpResponse<String> response = HttpClient.newHttpClient().send(request, HttpResponse.BodyHandlers.ofString());
    if (response.statusCode() / 100 != 2) {
      fail("create key: " + response.statusCode() + " " + response.body());
    }
    Matcher key = Pattern.compile("\"key\"\\s*:\\s*\"([^\"]+)\"").matcher(response.body());
    Matcher token = Pattern.compile("\"token\"\\s*:\\s*\"([^\"]+)\"").matcher(response.body());
    if (!key.find() || !token.find()) {
      fail("no key and token in " + response.body());
    }
    return new String[] {key.group(1), token.group(1)};
  }

  // Events ------------------------------------------------------------------

  static Timestamp at(long secs) {
    return Timestamp.newBuilder().setSeconds(BASE + secs).build();
  }

  static LifecycleEvent connected(String clientId, long connectionId, long secs) {
    return LifecycleEvent.newBuilder()
        .setClientId(clientId)
        .setTime(at(secs))
        .setConnectionId(connectionId)
        .setConnected(Connected.newBuilder().setInfo(ConnectionInfo.newBuilder()
            .setClientAddr("192.0.2.10")
            .setPort(40000 + (int) (connectionId % 20000))
            .setProtocol(MqttProtocol.MQTT_PROTOCOL_V3_1_1)
            .setKeepAliveSeconds(60)
            .setUsername("use-token-auth")
            .setCleanSession(true)))
        .build();
  }

  static LifecycleEvent disconnected(String clientId, long connectionId, long secs, DisconnectCause cause) {
    return LifecycleEvent.newBuilder()
        .setClientId(clientId)
        .setTime(at(secs))
        .setConnectionId(connectionId)
        .setDisconnected(Disconnected.newBuilder().setCause(cause))
        .build();
  }

  /** Connects of prefix0 .. prefix(n-1), connection ids 1..n. */
  static List<LifecycleEvent> connects(String prefix, int n) {
    List<LifecycleEvent> events = new ArrayList<>();
    for (int i = 0; i < n; i++) {
      events.add(connected(prefix + i, i + 1, i));
    }
    return events;
  }

  /** The disconnects a broker reports when it loses the connections of {@link #connects}. */
  static List<LifecycleEvent> lost(String prefix, int n) {
    List<LifecycleEvent> events = new ArrayList<>();
    for (int i = 0; i < n; i++) {
      events.add(disconnected(prefix + i, i + 1, 100 + i, DisconnectCause.DISCONNECT_CAUSE_SOCKET_CLOSED));
    }
    return events;
  }

  static long ingest(ConnstateClient client, List<LifecycleEvent> events) {
    return client.ingest(BROKER, events).getRevision();
  }

  /** Polls {@code condition} every 20 ms until it holds; fails after {@code limit}. */
  static void eventually(Duration limit, String what, BooleanSupplier condition) throws InterruptedException {
    long deadline = System.nanoTime() + limit.toNanos();
    while (!condition.getAsBoolean()) {
      if (System.nanoTime() > deadline) {
        fail("timed out after " + limit + " waiting for " + what);
      }
      Thread.sleep(20);
    }
  }
}
