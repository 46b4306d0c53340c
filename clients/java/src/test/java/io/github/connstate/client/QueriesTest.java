package io.github.connstate.client;

import static io.github.connstate.client.TestServer.connected;
import static io.github.connstate.client.TestServer.connects;
import static io.github.connstate.client.TestServer.disconnected;
import static io.github.connstate.client.TestServer.ingest;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.connstate.v1.ConnectionState;
import io.github.connstate.v1.ConnectionStateFilter;
import io.github.connstate.v1.ConnectionStatus;
import io.github.connstate.v1.DisconnectCause;
import io.github.connstate.v1.LifecycleEvent;
import io.github.connstate.v1.ListConnectionLogsRequest;
import io.github.connstate.v1.ListConnectionStatesRequest;
import io.github.connstate.v1.LogEntry;
import io.github.connstate.v1.LogKind;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

@Timeout(value = 60, unit = TimeUnit.SECONDS)
class QueriesTest {
  @TempDir static Path dir;
  static TestServer server;
  static ConnstateClient client;

  @BeforeAll
  static void start() throws Exception {
    server = TestServer.start(dir);
    client = server.admin();
    // 25 devices; q3 connects and disconnects four more times (9 log entries).
    ingest(client, connects("d:acme:q:q", 25));
    List<LifecycleEvent> churn = new ArrayList<>();
    for (int i = 0; i < 4; i++) {
      churn.add(disconnected("d:acme:q:q3", 4 + 10 * i, 50 + 2 * i, DisconnectCause.DISCONNECT_CAUSE_CLIENT_DISCONNECT));
      churn.add(connected("d:acme:q:q3", 14 + 10 * i, 51 + 2 * i));
    }
    churn.add(disconnected("d:acme:q:q3", 44, 60, DisconnectCause.DISCONNECT_CAUSE_KEEP_ALIVE_TIMEOUT));
    ingest(client, churn);
    ingest(client, List.of(connected("a:acme:dashboard", 1, 0)));
  }

  @AfterAll
  static void stop() throws Exception {
    if (client != null) {
      client.close();
    }
    if (server != null) {
      server.close();
    }
  }

  @Test
  void getReturnsTheRecordAndNotFoundOtherwise() {
    ConnectionState state = client.get("d:acme:q:q3");
    assertEquals("d:acme:q:q3", state.getClientId());
    assertEquals(ConnectionStatus.CONNECTION_STATUS_DISCONNECTED, state.getConnectionStatus());
    assertEquals(5, state.getCounters().getConnects());
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> client.get("d:acme:q:nobody"));
    assertEquals(Status.Code.NOT_FOUND, e.getStatus().getCode());
  }

  @Test
  void listFollowsPageTokens() {
    ListConnectionStatesRequest request = ListConnectionStatesRequest.newBuilder()
        .setFilter(ConnectionStateFilter.newBuilder().setClientIdPrefix("d:acme:q:"))
        .setPageSize(7)
        .build();
    assertEquals(4, client.listPages(request).count(), "25 records in pages of 7");
    List<String> ids = client.list(request).map(ConnectionState::getClientId).collect(Collectors.toList());
    assertEquals(25, ids.size());
    assertEquals(ids.stream().sorted().collect(Collectors.toList()), ids, "by client id");
    assertEquals(25, ids.stream().distinct().count());
    // A filter and the default request.
    assertEquals(24, client.list(ConnectionStateFilter.newBuilder()
        .setClientIdPrefix("d:acme:q:")
        .setConnectionStatus(ConnectionStatus.CONNECTION_STATUS_CONNECTED)
        .build()).count());
    assertEquals(26, client.list().count());
    // A stream stops fetching when it is short-circuited.
    assertEquals(List.of("d:acme:q:q0", "d:acme:q:q1"),
        client.list(request).limit(2).map(ConnectionState::getClientId).collect(Collectors.toList()));
  }

  @Test
  void logsFollowPageTokensNewestFirst() {
    List<LogEntry> entries = client.logs(ListConnectionLogsRequest.newBuilder()
        .setClientId("d:acme:q:q3").setPageSize(2).build()).collect(Collectors.toList());
    assertEquals(10, entries.size(), "5 connects and 5 disconnects");
    for (int i = 1; i < entries.size(); i++) {
      assertTrue(entries.get(i - 1).getRevision() > entries.get(i).getRevision(), "newest first");
    }
    assertEquals(LogKind.LOG_KIND_DISCONNECTED, entries.get(0).getKind());
    assertEquals(10, client.logs("d:acme:q:q3").count());
    assertEquals(5, client.logPages(ListConnectionLogsRequest.newBuilder()
        .setClientId("d:acme:q:q3").setPageSize(2).build()).count());
    // Every client's log, in pages of 7.
    assertEquals(25 + 9 + 1, client.logs(ListConnectionLogsRequest.newBuilder().setPageSize(7).build()).count());
  }

  @Test
  void badArgumentsNameTheField() {
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () ->
        client.list(ListConnectionStatesRequest.newBuilder().setOrderBy("favourite_colour").build()).count());
    assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
    assertTrue(e.getStatus().getDescription().contains("order_by"), e.getStatus().getDescription());
  }

  @Test
  void credentialsAreRequiredAndAReadOnlyKeyCannotWrite() throws Exception {
    try (ConnstateClient anonymous = ConnstateClient.connect(server.address())) {
      StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> anonymous.get("d:acme:q:q0"));
      assertEquals(Status.Code.UNAUTHENTICATED, e.getStatus().getCode());
    }
    try (ConnstateClient wrong = ConnstateClient.builder()
        .address("http://" + server.address()).apiKey(TestServer.ADMIN_KEY, "not-the-token-0123456789").build()) {
      StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> wrong.list().count());
      assertEquals(Status.Code.UNAUTHENTICATED, e.getStatus().getCode());
    }
    String[] key = server.createKey("read-only");
    try (ConnstateClient reader = ConnstateClient.builder().address(server.address()).apiKey(key[0], key[1]).build()) {
      assertEquals("d:acme:q:q0", reader.get("d:acme:q:q0").getClientId());
      assertEquals(25, reader.list(ConnectionStateFilter.newBuilder().setClientIdPrefix("d:acme:q:").build()).count());
      assertEquals(10, reader.logs("d:acme:q:q3").count());
      // A watch sends the credentials too.
      try (ConnectionWatch watch = reader.watch(WatchOptions.builder()
          .includeSnapshot(true)
          .filter(ConnectionStateFilter.newBuilder().setClientIdPrefix("d:acme:q:q1").build())
          .build())) {
        List<WatchEvent.Type> types = new ArrayList<>();
        while (types.isEmpty() || types.get(types.size() - 1) != WatchEvent.Type.SNAPSHOT_COMPLETE) {
          types.add(watch.next().type());
        }
        assertEquals(12, types.size(), "q1, q10..q19, then complete: " + types);
      }
      StatusRuntimeException write = assertThrows(StatusRuntimeException.class, () ->
          reader.ingest(TestServer.BROKER, List.of(connected("d:acme:q:intruder", 1, 0))));
      assertEquals(Status.Code.PERMISSION_DENIED, write.getStatus().getCode());
      StatusRuntimeException delete = assertThrows(StatusRuntimeException.class, () -> reader.delete("d:acme:q:q0"));
      assertEquals(Status.Code.PERMISSION_DENIED, delete.getStatus().getCode());
    }
    StatusRuntimeException gone = assertThrows(StatusRuntimeException.class, () -> client.get("d:acme:q:intruder"));
    assertEquals(Status.Code.NOT_FOUND, gone.getStatus().getCode(), "nothing was written");
  }

  @Test
  void unaryCallsHaveADefaultDeadline() throws Exception {
    // A listener that accepts connections and never answers.
    try (ServerSocket silent = new ServerSocket(0, 50, InetAddress.getLoopbackAddress())) {
      Thread acceptor = new Thread(() -> {
        List<Socket> held = new ArrayList<>();
        try {
          while (true) {
            held.add(silent.accept());
          }
        } catch (Exception e) {
          // closed
        }
      });
      acceptor.setDaemon(true);
      acceptor.start();
      try (ConnstateClient c = ConnstateClient.builder()
          .address("127.0.0.1:" + silent.getLocalPort())
          .deadline(Duration.ofMillis(500))
          .build()) {
        assertEquals(Duration.ofSeconds(30), ConnstateClient.DEFAULT_DEADLINE);
        long start = System.nanoTime();
        StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> c.get("d:acme:q:q0"));
        assertEquals(Status.Code.DEADLINE_EXCEEDED, e.getStatus().getCode());
        long took = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start);
        assertTrue(took >= 400 && took < 5000, "took " + took + " ms");
        // Per call: a view with another deadline.
        start = System.nanoTime();
        e = assertThrows(StatusRuntimeException.class, () -> c.withDeadline(Duration.ofMillis(100)).get("x"));
        assertEquals(Status.Code.DEADLINE_EXCEEDED, e.getStatus().getCode());
        took = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start);
        assertTrue(took < 450, "took " + took + " ms");
      }
    }
  }

  @Test
  void addressesAndOptionsAreChecked() {
    assertThrows(IllegalArgumentException.class, () -> ConnstateClient.builder().address(" "));
    assertThrows(IllegalArgumentException.class, () -> ConnstateClient.builder().apiKey("key", null));
    assertThrows(IllegalArgumentException.class, () -> ConnstateClient.builder().deadline(Duration.ZERO));
    assertThrows(IllegalArgumentException.class,
        () -> WatchOptions.builder().startRevision(1).includeSnapshot(true).build());
    assertThrows(IllegalArgumentException.class,
        () -> WatchOptions.builder().heartbeatInterval(Duration.ofMillis(10)));
  }
}
