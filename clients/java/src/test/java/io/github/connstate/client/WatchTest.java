package io.github.connstate.client;

import static io.github.connstate.client.TestServer.connected;
import static io.github.connstate.client.TestServer.connects;
import static io.github.connstate.client.TestServer.disconnected;
import static io.github.connstate.client.TestServer.eventually;
import static io.github.connstate.client.TestServer.ingest;
import static io.github.connstate.client.TestServer.lost;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import io.github.connstate.v1.ChangeKind;
import io.github.connstate.v1.ConnectionStateFilter;
import io.github.connstate.v1.ConnectionStateServiceGrpc;
import io.github.connstate.v1.ConnectionStatus;
import io.github.connstate.v1.DisconnectCause;
import io.github.connstate.v1.DisconnectInitiator;
import io.github.connstate.v1.LifecycleEvent;
import io.github.connstate.v1.Settings;
import io.github.connstate.v1.WatchConnectionsRequest;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import java.util.stream.Collectors;
import java.util.stream.LongStream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

class WatchTest {
  @TempDir Path dir;
  private final List<AutoCloseable> resources = new ArrayList<>();

  @AfterEach
  void cleanUp() throws Exception {
    for (int i = resources.size() - 1; i >= 0; i--) {
      resources.get(i).close();
    }
  }

  private TestServer server(String... args) throws Exception {
    TestServer server = TestServer.start(dir.resolve("s" + resources.size()), args);
    resources.add(server);
    return server;
  }

  private <T extends AutoCloseable> T closing(T resource) {
    resources.add(resource);
    return resource;
  }

  /** Reads a watch on a thread of its own, as an application would. */
  static final class Collector implements AutoCloseable {
    final List<WatchEvent> events = new CopyOnWriteArrayList<>();
    final AtomicReference<Throwable> error = new AtomicReference<>();
    final ConnectionWatch watch;
    final Thread thread;

    Collector(ConnectionWatch watch) {
      this.watch = watch;
      this.thread = new Thread(() -> {
        try {
          for (WatchEvent event : watch) {
            events.add(event);
          }
        } catch (Throwable t) {
          error.set(t);
        }
      }, "watch-collector");
      thread.setDaemon(true);
      thread.start();
    }

    long lastRevision() {
      return events.isEmpty() ? -1 : events.get(events.size() - 1).revision();
    }

    void awaitRevision(long revision, Duration limit) throws InterruptedException {
      eventually(limit, "revision " + revision + " (error " + error.get() + ")",
          () -> lastRevision() >= revision || error.get() != null);
      if (error.get() != null) {
        throw new AssertionError("the watch failed", error.get());
      }
    }

    @Override
    public void close() throws InterruptedException {
      watch.close();
      thread.join(5000);
    }
  }

  static void assertContinuous(List<WatchEvent> events, long from, long to) {
    List<Long> got = events.stream().map(WatchEvent::revision).collect(Collectors.toList());
    List<Long> want = LongStream.rangeClosed(from, to).boxed().collect(Collectors.toList());
    assertEquals(want, got, "every change exactly once, in revision order");
    assertTrue(events.stream().allMatch(e -> e.type() == WatchEvent.Type.CHANGE));
  }

  @Test
  @Timeout(value = 60, unit = TimeUnit.SECONDS)
  void snapshotThenLiveChanges() throws Exception {
    TestServer server = server();
    ConnstateClient client = closing(server.admin());
    ingest(client, connects("d:acme:snap:s", 5));
    ingest(client, List.of(connected("g:acme:gw:g1", 1, 0)));
    try (ConnectionWatch watch = client.watch(WatchOptions.builder()
        .includeSnapshot(true)
        .filter(ConnectionStateFilter.newBuilder()
            .setClientIdPrefix("d:")
            .setConnectionStatus(ConnectionStatus.CONNECTION_STATUS_CONNECTED))
        .build())) {
      List<String> snapshot = new ArrayList<>();
      WatchEvent event;
      while ((event = watch.next()).type() == WatchEvent.Type.SNAPSHOT) {
        assertEquals(ChangeKind.CHANGE_KIND_SNAPSHOT, event.kind());
        assertNotNull(event.state());
        snapshot.add(event.clientId());
      }
      assertEquals(WatchEvent.Type.SNAPSHOT_COMPLETE, event.type());
      assertEquals(6, event.revision());
      assertEquals(5, snapshot.size());
      assertEquals(6, watch.lastRevision());
      long rev = ingest(client, List.of(
          disconnected("d:acme:snap:s3", 4, 100, DisconnectCause.DISCONNECT_CAUSE_CLIENT_DISCONNECT),
          connected("g:acme:gw:g2", 2, 100), // filtered out
          connected("d:acme:snap:s9", 9, 100)));
      WatchEvent left = watch.next();
      WatchEvent came = watch.next();
      assertEquals(WatchEvent.Type.CHANGE, left.type());
      assertEquals("d:acme:snap:s3", left.clientId());
      assertEquals(ChangeKind.CHANGE_KIND_DISCONNECTED, left.kind());
      assertEquals("d:acme:snap:s9", came.clientId());
      assertEquals(rev, came.revision());
    }
  }

  @Test
  @Timeout(value = 60, unit = TimeUnit.SECONDS)
  void heartbeatsAreOptIn() throws Exception {
    TestServer server = server();
    ConnstateClient client = closing(server.admin());
    long before = ingest(client, connects("d:acme:hb:h", 3));
    // A raw request's options, heartbeats asked for.
    ConnectionWatch quiet = closing(client.watch(WatchConnectionsRequest.newBuilder()
        .setHeartbeatInterval(com.google.protobuf.Duration.newBuilder().setSeconds(1)).build()));
    ConnectionWatch beating = closing(client.watch(WatchOptions.builder()
        .heartbeatInterval(Duration.ofSeconds(1)).heartbeats(true).build()));
    for (int i = 0; i < 2; i++) {
      WatchEvent heartbeat = beating.next();
      assertEquals(WatchEvent.Type.HEARTBEAT, heartbeat.type());
      assertEquals(before, heartbeat.revision());
    }
    // Both watches received at least two heartbeats by now; the quiet one
    // delivers none of them.
    long rev = ingest(client, connects("d:acme:hb:new", 1));
    WatchEvent first = quiet.next();
    assertEquals(WatchEvent.Type.CHANGE, first.type());
    assertEquals(rev, first.revision());
  }

  @Test
  @Timeout(value = 60, unit = TimeUnit.SECONDS)
  void otherErrorsAreThrown() throws Exception {
    TestServer server = server();
    ConnstateClient client = closing(server.admin());
    ConnectionWatch watch = closing(client.watch(WatchOptions.builder()
        .startRevision(0)
        .filter(ConnectionStateFilter.newBuilder().setConnectedAfter(TestServer.at(0)))
        .build()));
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class, watch::hasNext);
    assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
    assertTrue(e.getStatus().getDescription().startsWith("filter"), e.getStatus().getDescription());
    assertFalse(watch.hasNext(), "the watch has ended");
    // An anonymous watch: UNAUTHENTICATED is not resumed either.
    try (ConnstateClient anonymous = ConnstateClient.connect(server.address());
        ConnectionWatch denied = anonymous.watch(WatchOptions.builder().startRevision(0).build())) {
      e = assertThrows(StatusRuntimeException.class, denied::next);
      assertEquals(Status.Code.UNAUTHENTICATED, e.getStatus().getCode());
    }
  }

  /**
   * The server is killed (SIGKILL) for 40 s mid-watch, then restarted on the same port and data:
   * the watch resumes from the last revision it delivered; every change arrives exactly once, in
   * order; {@code reconnects()} counts that one resume however many attempts it took.
   */
  @Test
  @Timeout(value = 150, unit = TimeUnit.SECONDS)
  void resumesAfterTheServerWasKilledFor40Seconds() throws Exception {
    TestServer server = server();
    ConnstateClient client = closing(server.admin());
    ConnstateClient watcher = closing(server.admin());
    long start = ingest(client, connects("d:acme:before:b", 10));
    Map<Status.Code, Integer> retried = new ConcurrentHashMap<>();
    Collector collector = closing(new Collector(watcher.watch(WatchOptions.builder()
        .startRevision(start)
        .onRetry((error, after, delay) -> {
          retried.merge(error.getStatus().getCode(), 1, Integer::sum);
          assertTrue(delay.compareTo(Backoff.DEFAULT.max()) <= 0, "delay " + delay);
        })
        .build())));
    long rev = 0;
    for (int batch = 0; batch < 3; batch++) {
      rev = ingest(client, connects("d:acme:live" + batch + ":l", 20));
    }
    collector.awaitRevision(rev, Duration.ofSeconds(20));
    // More changes race with the kill.
    rev = ingest(client, connects("d:acme:midway:m", 20));
    server.kill();
    Thread.sleep(40_000); // the downtime of the scenario
    assertEquals(0, collector.watch.reconnects(), "nothing to resume to yet");
    server.start();
    // A new writer: the old one's channel waits its own reconnect backoff.
    client = closing(server.admin());
    // The restart records nothing for another broker's clients; that broker
    // reports its 90 connections lost, and new clients connect.
    List<LifecycleEvent> reported = new ArrayList<>(lost("d:acme:before:b", 10));
    for (int batch = 0; batch < 3; batch++) {
      reported.addAll(lost("d:acme:live" + batch + ":l", 20));
    }
    reported.addAll(lost("d:acme:midway:m", 20));
    long reportedRevision = ingest(client, reported);
    // Resumed within the watch's own backoff cap (5 s, +20 %), not the
    // channel's reconnect backoff, which grows far beyond it in 40 s.
    collector.awaitRevision(reportedRevision, Duration.ofSeconds(8));
    for (int batch = 0; batch < 3; batch++) {
      rev = ingest(client, connects("d:acme:after" + batch + ":a", 20));
    }
    collector.awaitRevision(rev, Duration.ofSeconds(30));
    assertNull(collector.error.get());
    assertContinuous(collector.events, start + 1, rev);
    List<WatchEvent> disconnects = collector.events.stream()
        .filter(e -> e.kind() == ChangeKind.CHANGE_KIND_DISCONNECTED).collect(Collectors.toList());
    assertEquals(90, disconnects.size(), "the disconnects the broker reported after the restart");
    assertTrue(disconnects.stream().allMatch(
        e -> e.state().getLastDisconnectInitiator() == DisconnectInitiator.DISCONNECT_INITIATOR_NETWORK));
    assertTrue(retried.getOrDefault(Status.Code.UNAVAILABLE, 0) >= 5,
        "attempts throughout the downtime: " + retried);
    assertEquals(1, collector.watch.reconnects(), "one resume, however many attempts it took");
  }

  /**
   * A consumer that stops reading falls behind the server's buffer and is ended with
   * RESOURCE_EXHAUSTED: the watch resumes from the trailer's revision without gap or duplicate.
   */
  @Test
  @Timeout(value = 120, unit = TimeUnit.SECONDS)
  void resumesAfterFallingBehind() throws Exception {
    TestServer server = server("--watch-buffer", "16");
    // Small HTTP/2 windows, so that little hides in transport buffers.
    ConnstateClient client = closing(server.admin(b -> ((NettyChannelBuilder) b).flowControlWindow(64 * 1024)));
    ConnstateClient writer = closing(server.admin());
    Map<Status.Code, Integer> retried = new ConcurrentHashMap<>();
    ConnectionWatch watch = closing(client.watch(WatchOptions.builder()
        .startRevision(0)
        .backoff(new Backoff(Duration.ofMillis(10), Duration.ofMillis(100)))
        .onRetry((error, after, delay) -> retried.merge(error.getStatus().getCode(), 1, Integer::sum))
        .build()));
    long first = ingest(writer, List.of(connected("d:acme:slow:first", 1, 0)));
    List<WatchEvent> got = new ArrayList<>();
    got.add(watch.next());
    assertEquals(first, got.get(0).revision());
    long rev = 0;
    for (int batch = 0; batch < 40; batch++) {
      rev = ingest(writer, connects("d:acme:slow" + batch + ":x", 100));
    }
    while (got.get(got.size() - 1).revision() < rev) {
      got.add(watch.next());
    }
    assertContinuous(got, 1, rev);
    assertTrue(retried.getOrDefault(Status.Code.RESOURCE_EXHAUSTED, 0) >= 1, "ended as too slow: " + retried);
    assertTrue(watch.reconnects() >= 1);
  }

  /**
   * The watch's position leaves the change feed while it is away: OUT_OF_RANGE gives a resync
   * event, a fresh snapshot with the same filter, then live changes.
   */
  @Test
  @Timeout(value = 90, unit = TimeUnit.SECONDS)
  void resynchronisesWhenItsRevisionLeftTheFeed() throws Exception {
    TestServer server = server("--retention-interval", "100ms", "--shutdown-grace", "1s");
    ConnstateClient client = closing(server.admin());
    ingest(client, connects("d:acme:o:a", 10));
    ConnectionWatch watch = closing(client.watch(WatchOptions.builder()
        .startRevision(0)
        .filter(ConnectionStateFilter.newBuilder().setClientIdPrefix("d:acme:o:"))
        .backoff(new Backoff(Duration.ofMillis(50), Duration.ofMillis(500)))
        .build()));
    List<WatchEvent> first = new ArrayList<>();
    for (int i = 0; i < 10; i++) {
      first.add(watch.next());
    }
    assertContinuous(first, 1, 10);

    // While the consumer is away: a restart, the other broker reports its ten
    // connections lost, the feed is cut to its 5 newest changes, and more
    // changes come.
    server.restart();
    ingest(client, lost("d:acme:o:a", 10));
    client.updateSettings(Settings.newBuilder().setFeedMaxEntries(5).build(), List.of("feed_max_entries"));
    long last = ingest(client, connects("d:acme:o:b", 10));
    ingest(client, List.of(disconnected("d:acme:o:b0", 1, 50, DisconnectCause.DISCONNECT_CAUSE_CLIENT_DISCONNECT)));
    ingest(client, List.of(connected("d:acme:other", 1, 0))); // filtered out
    eventually(Duration.ofSeconds(15), "the feed to drop revision 11", () -> rawOutOfRange(client, 10));

    WatchEvent resync = watch.next();
    assertEquals(WatchEvent.Type.RESYNC, resync.type());
    assertEquals(10, resync.revision());
    assertEquals(Status.Code.OUT_OF_RANGE, resync.cause().getStatus().getCode());
    Long oldest = ConnectionWatch.oldestRevision(resync.cause());
    assertNotNull(oldest, "the trailer names the oldest revision");
    assertTrue(oldest > 10);
    Map<String, ConnectionStatus> view = new HashMap<>();
    WatchEvent event;
    while ((event = watch.next()).type() == WatchEvent.Type.SNAPSHOT) {
      view.put(event.clientId(), event.state().getConnectionStatus());
    }
    assertEquals(WatchEvent.Type.SNAPSHOT_COMPLETE, event.type());
    long complete = event.revision();
    assertTrue(complete >= last + 1);
    assertEquals(20, view.size());
    assertEquals(ConnectionStatus.CONNECTION_STATUS_DISCONNECTED, view.get("d:acme:o:a0"));
    assertEquals(ConnectionStatus.CONNECTION_STATUS_DISCONNECTED, view.get("d:acme:o:b0"));
    assertEquals(ConnectionStatus.CONNECTION_STATUS_CONNECTED, view.get("d:acme:o:b1"));

    // Then live, exactly once, in order.
    List<Long> after = new ArrayList<>();
    for (int i = 1; i <= 3; i++) {
      after.add(ingest(client, List.of(
          disconnected("d:acme:o:b" + i, i + 1, 60, DisconnectCause.DISCONNECT_CAUSE_CLIENT_DISCONNECT))));
    }
    for (long revision : after) {
      WatchEvent live = watch.next();
      assertEquals(WatchEvent.Type.CHANGE, live.type());
      assertEquals(revision, live.revision());
      assertTrue(revision > complete);
    }
    assertEquals(1, watch.reconnects(), "the restart, resumed through the resync");
  }

  /**
   * A snapshot cut off half way (the server restarts while the consumer holds part of it): a
   * resync event, then the whole snapshot again from its start, then live changes.
   */
  @Test
  @Timeout(value = 120, unit = TimeUnit.SECONDS)
  void aSnapshotCutOffHalfWayStartsOver() throws Exception {
    TestServer server = server("--shutdown-grace", "1s");
    ConnstateClient writer = closing(server.admin());
    int total = 4000;
    for (int batch = 0; batch < total / 1000; batch++) {
      ingest(writer, connects("d:acme:big" + batch + ":c", 1000));
    }
    ConnstateClient client = closing(server.admin(b -> ((NettyChannelBuilder) b).flowControlWindow(64 * 1024)));
    ConnectionWatch watch = closing(client.watch(WatchOptions.builder()
        .includeSnapshot(true)
        .backoff(new Backoff(Duration.ofMillis(50), Duration.ofMillis(500)))
        .build()));
    for (int i = 0; i < 3; i++) {
      assertEquals(WatchEvent.Type.SNAPSHOT, watch.next().type());
    }
    server.restart();
    // What was in flight comes, then the resync.
    WatchEvent event;
    int before = 3;
    while ((event = watch.next()).type() == WatchEvent.Type.SNAPSHOT) {
      before++;
    }
    assertEquals(WatchEvent.Type.RESYNC, event.type(), "after " + before + " snapshot records");
    assertTrue(before < total, "the snapshot was cut off");
    assertNotNull(event.cause());
    Set<String> ids = new HashSet<>();
    while ((event = watch.next()).type() == WatchEvent.Type.SNAPSHOT) {
      ids.add(event.clientId());
    }
    assertEquals(WatchEvent.Type.SNAPSHOT_COMPLETE, event.type());
    assertEquals(total, ids.size(), "the whole snapshot again");
    long rev = ingest(writer, List.of(connected("d:acme:after", 1, 0)));
    WatchEvent live = watch.next();
    assertEquals(WatchEvent.Type.CHANGE, live.type());
    assertEquals(rev, live.revision());
    assertEquals(1, watch.reconnects());
  }

  @Test
  @Timeout(value = 30, unit = TimeUnit.SECONDS)
  void closeEndsABlockedIterationPromptly() throws Exception {
    TestServer server = server();
    ConnstateClient client = closing(server.admin());
    Collector collector = new Collector(client.watch());
    eventually(Duration.ofSeconds(10), "the collector to block in the stream",
        () -> collector.thread.getState() == Thread.State.WAITING || collector.thread.getState() == Thread.State.TIMED_WAITING);
    long start = System.nanoTime();
    collector.close();
    assertFalse(collector.thread.isAlive());
    assertTrue(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start) < 2000);
    assertNull(collector.error.get(), "closing ends the iteration without an error");
    assertTrue(collector.events.isEmpty());
  }

  @Test
  @Timeout(value = 30, unit = TimeUnit.SECONDS)
  void closeEndsAWatchDuringItsBackoffAndWithTheClient() throws Exception {
    TestServer server = server();
    ConnstateClient client = server.admin();
    List<Duration> delays = new CopyOnWriteArrayList<>();
    Collector collector = new Collector(client.watch(WatchOptions.builder()
        .startRevision(0)
        .backoff(new Backoff(Duration.ofSeconds(20), Duration.ofSeconds(20)))
        .onRetry((error, after, delay) -> delays.add(delay))
        .build()));
    server.stop();
    eventually(Duration.ofSeconds(10), "a retry", () -> !delays.isEmpty());
    long start = System.nanoTime();
    collector.watch.close();
    collector.thread.join(5000);
    assertFalse(collector.thread.isAlive());
    assertTrue(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start) < 2000, "not after the 16 s backoff");
    assertNull(collector.error.get());

    // Closing the client ends its watches too.
    Collector second = new Collector(client.watch(WatchOptions.builder().startRevision(0)
        .backoff(new Backoff(Duration.ofSeconds(20), Duration.ofSeconds(20))).build()));
    client.close();
    second.thread.join(5000);
    assertFalse(second.thread.isAlive());
    assertNull(second.error.get());
    assertThrows(IllegalStateException.class, client::watch);
  }

  @Test
  @Timeout(value = 30, unit = TimeUnit.SECONDS)
  void aStreamOfEventsClosesTheWatch() throws Exception {
    TestServer server = server();
    ConnstateClient client = closing(server.admin());
    long rev = ingest(client, connects("d:acme:st:s", 5));
    ConnectionWatch watch = client.watch(WatchOptions.builder().startRevision(0).build());
    try (var events = watch.stream()) {
      assertEquals(List.of(1L, 2L, 3L, 4L, 5L),
          events.limit(5).map(WatchEvent::revision).collect(Collectors.toList()));
    }
    assertEquals(rev, watch.lastRevision());
    assertFalse(watch.hasNext(), "closed with the stream");
  }

  @Test
  void backoffNeverWaitsLongerThanItsMaximum() {
    Backoff backoff = new Backoff(Duration.ofMillis(100), Duration.ofSeconds(2));
    for (int attempt = 1; attempt < 70; attempt++) {
      for (int i = 0; i < 200; i++) {
        assertTrue(backoff.delay(attempt).compareTo(Duration.ofSeconds(2)) <= 0, "the cap holds with jitter");
      }
    }
    Set<Duration> first = new HashSet<>();
    for (int i = 0; i < 200; i++) {
      Duration d = backoff.delay(1);
      assertTrue(d.toMillis() >= 80 && d.toMillis() <= 120, "±20 %: " + d);
      first.add(d);
    }
    assertTrue(first.size() > 1, "jittered");
    Duration low = Duration.ofDays(1);
    for (int i = 0; i < 200; i++) {
      Duration d = backoff.delay(10);
      assertTrue(d.toMillis() >= 1600, "-20 % below the cap at most: " + d);
      low = d.compareTo(low) < 0 ? d : low;
    }
    assertTrue(low.toMillis() < 2000);
    assertEquals(Duration.ofMillis(100), Backoff.DEFAULT.initial());
    assertEquals(Duration.ofSeconds(5), Backoff.DEFAULT.max());
    assertThrows(IllegalArgumentException.class, () -> new Backoff(Duration.ofSeconds(2), Duration.ofSeconds(1)));
  }

  /** Whether a raw watch from {@code revision} is refused with OUT_OF_RANGE. */
  private static boolean rawOutOfRange(ConnstateClient client, long revision) {
    try {
      var it = ConnectionStateServiceGrpc.newBlockingStub(client.channel())
          .withDeadlineAfter(5, TimeUnit.SECONDS)
          .watchConnections(WatchConnectionsRequest.newBuilder().setStartRevision(revision).build());
      it.hasNext();
      return false;
    } catch (StatusRuntimeException e) {
      if (e.getStatus().getCode() == Status.Code.OUT_OF_RANGE) {
        return true;
      }
      fail("raw watch: " + e);
      return false;
    }
  }
}
