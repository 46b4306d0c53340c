package io.github.connstate.client;

import io.github.connstate.v1.Change;
import io.github.connstate.v1.ChangeKind;
import io.github.connstate.v1.ConnectionStateServiceGrpc;
import io.github.connstate.v1.WatchConnectionsRequest;
import io.github.connstate.v1.WatchConnectionsResponse;
import io.grpc.CallOptions;
import io.grpc.Context;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCalls;
import java.time.Duration;
import java.util.HashMap;
import java.util.Iterator;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.Spliterator;
import java.util.Spliterators;
import java.util.function.Consumer;
import java.util.stream.Stream;
import java.util.stream.StreamSupport;

/**
 * A resumable watch of the change feed: an {@link Iterator} of {@link WatchEvent}s that follows the
 * SDK contract (clients/CONTRACT.md).
 *
 * <p>The watch keeps a position: the revision of the last change it delivered (or of the last
 * snapshot-complete event), and delivers every change after its start exactly once, in revision
 * order. When the stream breaks (UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED, a CANCELLED this watch
 * did not cause, INTERNAL with the {@code x-connstate-last-revision} trailer, or an end without a
 * status) it waits a backoff and resumes after its position, without limit unless {@link
 * WatchOptions#maxRetries()} says otherwise. OUT_OF_RANGE (the position left the feed) yields a
 * {@link WatchEvent.Type#RESYNC} event, then a fresh snapshot, then live changes. Any other error
 * is thrown by {@link #hasNext()} / {@link #next()} as a {@link StatusRuntimeException} and ends
 * the watch.
 *
 * <p>The stream is read only while the caller iterates. {@link #close()} (from any thread, or a
 * try-with-resources block) stops the watch promptly, also during a backoff: the iteration then
 * ends without an error. One thread iterates at a time.
 */
public final class ConnectionWatch implements Iterator<WatchEvent>, Iterable<WatchEvent>, AutoCloseable {
  /** The trailer with the last revision the server delivered or skipped. */
  public static final String LAST_REVISION_TRAILER = "x-connstate-last-revision";

  /** The trailer of OUT_OF_RANGE with the oldest revision that can still be replayed. */
  public static final String OLDEST_REVISION_TRAILER = "x-connstate-oldest-revision";

  private static final Metadata.Key<String> LAST_REVISION =
      Metadata.Key.of(LAST_REVISION_TRAILER, Metadata.ASCII_STRING_MARSHALLER);
  private static final Metadata.Key<String> OLDEST_REVISION =
      Metadata.Key.of(OLDEST_REVISION_TRAILER, Metadata.ASCII_STRING_MARSHALLER);

  private final ConnstateClient client;
  private final WatchOptions options;
  private final Object lock = new Object();

  private volatile boolean closed;
  private volatile Context.CancellableContext callContext;
  private volatile int reconnects;

  // Iteration state, touched only by the iterating thread.
  private boolean started;
  private boolean done;
  private WatchEvent pending;
  /** The revision delivered last (meaningful unless {@code snapshot}). */
  private long last;
  /** The next stream starts with a snapshot. */
  private boolean snapshot;
  /** Clients whose snapshot record is newer than the snapshot's revision, with that revision. */
  private Map<String, Long> skip = new HashMap<>();
  private Iterator<WatchConnectionsResponse> stream;
  private boolean inSnapshot;
  private Map<String, Long> snapshotted;
  private int snapshotItems;
  private boolean delivered;
  /** The index of the client's server the current stream is on. */
  private int endpoint;
  private int failures;
  private Duration delayBeforeNext;
  /** A stream broke and no stream delivered a message since. */
  private boolean broken;

  private final Consumer<ConnectionWatch> onEnd;

  ConnectionWatch(ConnstateClient client, WatchOptions options, Consumer<ConnectionWatch> onEnd) {
    this.client = client;
    this.options = options;
    this.onEnd = onEnd;
  }

  /**
   * How many times the watch resumed: a stream that broke was followed by a new one that delivered
   * its first message (failed attempts in between are not counted).
   */
  public int reconnects() {
    return reconnects;
  }

  /** The last revision delivered (or reached by a snapshot); -1 while it awaits a snapshot. */
  public long lastRevision() {
    return started && !snapshot ? last : -1;
  }

  @Override
  public Iterator<WatchEvent> iterator() {
    return this;
  }

  /** The events as a sequential {@link Stream}; closing the stream closes the watch. */
  public Stream<WatchEvent> stream() {
    return StreamSupport.stream(
            Spliterators.spliteratorUnknownSize(this, Spliterator.ORDERED | Spliterator.NONNULL), false)
        .onClose(this::close);
  }

  /**
   * Whether another event comes; blocks until it does or the watch ends.
   *
   * @throws StatusRuntimeException the error that ended the watch
   */
  @Override
  public boolean hasNext() {
    if (pending != null) {
      return true;
    }
    if (done) {
      return false;
    }
    try {
      pending = advance();
    } catch (RuntimeException e) {
      finish();
      throw e;
    }
    if (pending == null) {
      finish();
    }
    return pending != null;
  }

  @Override
  public WatchEvent next() {
    if (!hasNext()) {
      throw new NoSuchElementException("the watch has ended");
    }
    WatchEvent event = pending;
    pending = null;
    return event;
  }

  /** Stops the watch: a blocked {@link #hasNext()} returns false promptly. Idempotent. */
  @Override
  public void close() {
    closed = true;
    onEnd.accept(this);
    synchronized (lock) {
      lock.notifyAll();
    }
    Context.CancellableContext context = callContext;
    if (context != null) {
      context.cancel(null);
    }
  }

  private void finish() {
    done = true;
    cancelStream();
    onEnd.accept(this);
  }

  private void cancelStream() {
    Context.CancellableContext context = callContext;
    if (context != null) {
      context.cancel(null);
      callContext = null;
    }
    stream = null;
  }

  /** Fixes the starting position: at once, so that the watch begins when it is made. */
  void start() {
    started = true;
    if (options.startRevision().isPresent()) {
      last = options.startRevision().getAsLong();
    } else if (options.includeSnapshot()) {
      snapshot = true;
    } else {
      // Start from a known revision, so that a stream broken before its first change can still be
      // resumed without a gap.
      last = client.currentRevision();
    }
  }

  /** The next event, or null when the watch was closed. */
  private WatchEvent advance() {
    while (true) {
      if (closed) {
        return null;
      }
      if (stream == null) {
        if (delayBeforeNext != null) {
          Duration delay = delayBeforeNext;
          delayBeforeNext = null;
          if (!sleep(delay)) {
            return null;
          }
          // The watch's backoff, not the channel's (which grows to minutes), decides when to try.
          client.resetConnectBackoff();
        }
        open();
      }
      WatchConnectionsResponse response;
      try {
        if (!stream.hasNext()) {
          response = null;
        } else {
          response = stream.next();
        }
      } catch (StatusRuntimeException e) {
        WatchEvent event = ended(e);
        if (event != null || closed) {
          return event;
        }
        continue;
      }
      if (response == null) {
        // Ended without a status: a proxy or the transport cut it. Resume.
        WatchEvent event =
            ended(Status.UNAVAILABLE.withDescription("stream ended without a status").asRuntimeException());
        if (event != null || closed) {
          return event;
        }
        continue;
      }
      if (!delivered) {
        delivered = true;
        failures = 0;
        if (broken) {
          broken = false;
          reconnects++;
        }
      }
      WatchEvent event = onResponse(response);
      if (event != null) {
        return event;
      }
    }
  }

  private void open() {
    WatchConnectionsRequest.Builder request = WatchConnectionsRequest.newBuilder().addAllKinds(options.kinds());
    if (options.filter() != null) {
      request.setFilter(options.filter());
    }
    if (options.heartbeatInterval() != null) {
      Duration d = options.heartbeatInterval();
      request.setHeartbeatInterval(
          com.google.protobuf.Duration.newBuilder().setSeconds(d.getSeconds()).setNanos(d.getNano()));
    }
    inSnapshot = snapshot;
    if (inSnapshot) {
      request.setIncludeSnapshot(true);
    } else {
      request.setStartRevision(last);
    }
    snapshotted = new HashMap<>();
    snapshotItems = 0;
    delivered = false;
    Context.CancellableContext context = Context.current().withCancellation();
    callContext = context;
    if (closed) {
      context.cancel(null);
    }
    // The server in use; the next one once this one is UNAVAILABLE.
    endpoint = client.endpoint();
    Context previous = context.attach();
    try {
      stream =
          ClientCalls.blockingServerStreamingCall(
              client.channel(endpoint),
              ConnectionStateServiceGrpc.getWatchConnectionsMethod(),
              CallOptions.DEFAULT,
              request.build());
    } finally {
      context.detach(previous);
    }
  }

  /**
   * The stream ended with {@code error}: decides whether to resume, resynchronise or throw. Returns
   * an event to deliver first (a resync), or null to go on.
   */
  private WatchEvent ended(StatusRuntimeException error) {
    cancelStream();
    if (closed) {
      return null;
    }
    if (Thread.currentThread().isInterrupted()) {
      // The iterating thread was interrupted: that ends the watch as close() does.
      close();
      return null;
    }
    Metadata trailers = error.getTrailers();
    Long trailerRevision = revision(trailers, LAST_REVISION);
    Status.Code code = error.getStatus().getCode();
    if (code == Status.Code.UNAVAILABLE) {
      client.unavailable(endpoint);
    }
    boolean resumable =
        switch (code) {
          case UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED, CANCELLED -> true; // CANCELLED: not ours
          case INTERNAL -> trailerRevision != null;
          default -> false;
        };
    WatchEvent resync = null;
    if (inSnapshot) {
      if (snapshotItems > 0 && resumable) {
        // The consumer holds part of a snapshot: it must start over.
        resync = new WatchEvent(WatchEvent.Type.RESYNC, null, last, error);
      }
    } else if (trailerRevision != null && trailerRevision > last) {
      last = trailerRevision;
    }
    if (code == Status.Code.OUT_OF_RANGE && !snapshot) {
      // The position is gone from the feed: re-list through a snapshot.
      snapshot = true;
      broken = true;
      return new WatchEvent(WatchEvent.Type.RESYNC, null, last, error);
    }
    if (!resumable) {
      throw error;
    }
    failures++;
    if (options.maxRetries() > 0 && failures > options.maxRetries()) {
      throw error;
    }
    Duration delay = options.backoff().delay(failures);
    if (options.onRetry() != null) {
      options.onRetry().onRetry(error, last, delay);
    }
    broken = true;
    delayBeforeNext = delay;
    return resync;
  }

  private WatchEvent onResponse(WatchConnectionsResponse response) {
    switch (response.getEventCase()) {
      case CHANGE -> {
        Change change = response.getChange();
        long revision = change.getRevision();
        if (change.getKind() == ChangeKind.CHANGE_KIND_SNAPSHOT) {
          snapshotted.put(change.getClientId(), revision);
          snapshotItems++;
          return new WatchEvent(WatchEvent.Type.SNAPSHOT, change, revision, null);
        }
        if (inSnapshot || Long.compareUnsigned(revision, last) <= 0) {
          return null; // not expected before snapshot_complete; or a duplicate
        }
        if (change.getKind() == ChangeKind.CHANGE_KIND_ALL_DELETED) {
          skip = new HashMap<>();
        } else {
          Long seen = skip.get(change.getClientId());
          if (seen != null) {
            if (Long.compareUnsigned(revision, seen) <= 0) {
              last = revision;
              return null; // already reflected by the snapshot record
            }
            skip.remove(change.getClientId());
          }
        }
        last = revision;
        return new WatchEvent(WatchEvent.Type.CHANGE, change, revision, null);
      }
      case SNAPSHOT_COMPLETE -> {
        long revision = response.getSnapshotComplete().getRevision();
        Map<String, Long> newer = new HashMap<>();
        snapshotted.forEach(
            (id, r) -> {
              if (Long.compareUnsigned(r, revision) > 0) {
                newer.put(id, r);
              }
            });
        skip = newer;
        snapshotted = new HashMap<>();
        last = revision;
        snapshot = false;
        inSnapshot = false;
        return new WatchEvent(WatchEvent.Type.SNAPSHOT_COMPLETE, null, revision, null);
      }
      case HEARTBEAT -> {
        if (options.heartbeats()) {
          return new WatchEvent(WatchEvent.Type.HEARTBEAT, null, response.getHeartbeat().getRevision(), null);
        }
        return null;
      }
      default -> {
        return null;
      }
    }
  }

  /** Waits {@code delay} unless the watch is closed first; returns whether it is still open. */
  private boolean sleep(Duration delay) {
    long deadline = System.nanoTime() + delay.toNanos();
    synchronized (lock) {
      while (!closed) {
        long remaining = deadline - System.nanoTime();
        if (remaining <= 0) {
          return true;
        }
        try {
          lock.wait(remaining / 1_000_000, (int) (remaining % 1_000_000));
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          close();
        }
      }
    }
    return false;
  }

  /** The oldest revision an OUT_OF_RANGE error of a watch names, or null. */
  public static Long oldestRevision(StatusRuntimeException error) {
    return revision(error.getTrailers(), OLDEST_REVISION);
  }

  private static Long revision(Metadata trailers, Metadata.Key<String> key) {
    if (trailers == null) {
      return null;
    }
    String value = trailers.get(key);
    if (value == null) {
      return null;
    }
    try {
      return Long.parseUnsignedLong(value.trim());
    } catch (NumberFormatException e) {
      return null;
    }
  }
}
