package io.github.connstate.client;

import static io.github.connstate.client.TestServer.connects;
import static io.github.connstate.client.TestServer.ingest;
import static io.github.connstate.client.TestServer.lost;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Several addresses (clients/CONTRACT.md, "Several addresses"): a watch and the reads move to the
 * next server when the one in use goes away; writes are not retried.
 *
 * <p>Two single servers do not share revisions; server B starts on a copy of A's data folder taken
 * while A was stopped cleanly, so that both hold the same revisions. A real cluster's failover is
 * tested once the cluster exists.
 */
class FailoverTest {
  @TempDir Path dir;
  private final List<AutoCloseable> resources = new ArrayList<>();
  private TestServer a;
  private TestServer b;
  private long first;

  @AfterEach
  void cleanUp() throws Exception {
    for (int i = resources.size() - 1; i >= 0; i--) {
      resources.get(i).close();
    }
  }

  private <T extends AutoCloseable> T closing(T resource) {
    resources.add(resource);
    return resource;
  }

  /** A and B on the same data; {@code first} is the revision of what A recorded. */
  private void twoServers() throws Exception {
    a = closing(TestServer.start(dir.resolve("a"), "--shutdown-grace", "1s"));
    try (ConnstateClient writer = a.admin()) {
      first = ingest(writer, connects("d:acme:fo:a", 30));
    }
    a.stop();
    b = closing(a.copy(dir.resolve("b")));
    a.start();
  }

  private ConnstateClient both(ConnstateClient.Builder builder) {
    return closing(builder.apiKey(TestServer.ADMIN_KEY, TestServer.ADMIN_TOKEN).build());
  }

  @Test
  @Timeout(value = 60, unit = TimeUnit.SECONDS)
  void watchAndReadsMoveToTheNextAddress() throws Exception {
    twoServers();
    ConnstateClient watcher = both(ConnstateClient.builder().address(a.address() + "," + b.address()));
    ConnstateClient reader = both(ConnstateClient.builder().addresses(List.of(a.address(), b.address())));
    WatchTest.Collector watch = closing(new WatchTest.Collector(watcher.watch(WatchOptions.builder()
        .startRevision(0)
        .backoff(new Backoff(Duration.ofMillis(50), Duration.ofMillis(500)))
        .build())));
    watch.awaitRevision(first, Duration.ofSeconds(10));
    assertEquals("d:acme:fo:a3", reader.get("d:acme:fo:a3").getClientId()); // on A

    a.kill(); // never comes back
    // Reads are retried on the next address.
    assertEquals("d:acme:fo:a7", reader.get("d:acme:fo:a7").getClientId());

    // Only B has these; the watch gets them there, right after the last revision it delivered
    // from A.
    long rev;
    try (ConnstateClient onB = b.admin()) {
      rev = ingest(onB, lost("d:acme:fo:a", 30));
    }
    watch.awaitRevision(rev, Duration.ofSeconds(20));
    watch.close();
    assertNull(watch.error.get());
    WatchTest.assertContinuous(watch.events, 1, rev);
  }

  @Test
  @Timeout(value = 30, unit = TimeUnit.SECONDS)
  void aWriteIsNotRetriedOnTheNextAddress() throws Exception {
    twoServers();
    ConnstateClient client = both(ConnstateClient.builder().addresses(List.of(a.address(), b.address())));
    assertEquals("d:acme:fo:a1", client.get("d:acme:fo:a1").getClientId()); // on A
    a.kill();
    StatusRuntimeException e =
        assertThrows(StatusRuntimeException.class, () -> ingest(client, lost("d:acme:fo:a", 1)));
    assertEquals(Status.Code.UNAVAILABLE, e.getStatus().getCode());
    try (ConnstateClient onB = b.admin()) {
      assertTrue(onB.get("d:acme:fo:a0").getRevision() <= first, "nothing written on B");
    }
    // The next call goes to B.
    assertEquals(first + 1, ingest(client, lost("d:acme:fo:a", 1)));
  }
}
