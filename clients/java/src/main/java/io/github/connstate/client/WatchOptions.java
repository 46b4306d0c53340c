package io.github.connstate.client;

import io.github.connstate.v1.ChangeKind;
import io.github.connstate.v1.ConnectionStateFilter;
import io.github.connstate.v1.WatchConnectionsRequest;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.List;
import java.util.OptionalLong;

/**
 * What a {@link ConnectionWatch} watches and how it resumes. Build with {@link #builder()}; the
 * defaults watch every change from now on, resume without limit with the contract's backoff (100
 * ms doubling up to 5 s, ±20 % jitter) and consume heartbeats silently.
 */
public final class WatchOptions {
  /** Called before each reconnection attempt. */
  @FunctionalInterface
  public interface RetryListener {
    /**
     * @param error what ended the stream (a status error; UNAVAILABLE with "stream ended without a
     *     status" when the stream just ended)
     * @param resumeAfter the revision the watch resumes after
     * @param delay how long it waits first
     */
    void onRetry(StatusRuntimeException error, long resumeAfter, Duration delay);
  }

  private final ConnectionStateFilter filter;
  private final List<ChangeKind> kinds;
  private final OptionalLong startRevision;
  private final boolean includeSnapshot;
  private final Duration heartbeatInterval;
  private final boolean heartbeats;
  private final Backoff backoff;
  private final int maxRetries;
  private final RetryListener onRetry;

  private WatchOptions(Builder b) {
    this.filter = b.filter;
    this.kinds = List.copyOf(b.kinds);
    this.startRevision = b.startRevision;
    this.includeSnapshot = b.includeSnapshot;
    this.heartbeatInterval = b.heartbeatInterval;
    this.heartbeats = b.heartbeats;
    this.backoff = b.backoff;
    this.maxRetries = b.maxRetries;
    this.onRetry = b.onRetry;
  }

  public static Builder builder() {
    return new Builder();
  }

  /**
   * The options of a raw request: its filter, kinds, start revision, snapshot flag and heartbeat
   * interval; the rest at their defaults.
   */
  public static Builder builder(WatchConnectionsRequest request) {
    Builder b = new Builder().kinds(request.getKindsList()).includeSnapshot(request.getIncludeSnapshot());
    if (request.hasFilter()) {
      b.filter(request.getFilter());
    }
    if (request.hasStartRevision()) {
      b.startRevision(request.getStartRevision());
    }
    if (request.hasHeartbeatInterval()) {
      var d = request.getHeartbeatInterval();
      b.heartbeatInterval(Duration.ofSeconds(d.getSeconds(), d.getNanos()));
    }
    return b;
  }

  /** Only changes of clients matching this filter; null for all. */
  public ConnectionStateFilter filter() {
    return filter;
  }

  /** Only changes of these kinds (any when empty). */
  public List<ChangeKind> kinds() {
    return kinds;
  }

  /** Replay every change after this revision first. */
  public OptionalLong startRevision() {
    return startRevision;
  }

  /** Start with a snapshot of every matching record. */
  public boolean includeSnapshot() {
    return includeSnapshot;
  }

  /** The heartbeat interval asked of the server; null for the server's default (10 s). */
  public Duration heartbeatInterval() {
    return heartbeatInterval;
  }

  /** Deliver heartbeats as {@link WatchEvent.Type#HEARTBEAT} events. */
  public boolean heartbeats() {
    return heartbeats;
  }

  public Backoff backoff() {
    return backoff;
  }

  /** Consecutive failed attempts after which the watch throws the last error; 0: never. */
  public int maxRetries() {
    return maxRetries;
  }

  /** The retry listener, or null. */
  public RetryListener onRetry() {
    return onRetry;
  }

  /** Builds {@link WatchOptions}. */
  public static final class Builder {
    private ConnectionStateFilter filter;
    private List<ChangeKind> kinds = List.of();
    private OptionalLong startRevision = OptionalLong.empty();
    private boolean includeSnapshot;
    private Duration heartbeatInterval;
    private boolean heartbeats;
    private Backoff backoff = Backoff.DEFAULT;
    private int maxRetries;
    private RetryListener onRetry;

    private Builder() {}

    /**
     * Only changes of clients matching this filter (its time fields must be unset). A {@code
     * connection_status} filter also lets through every CONNECTED and DISCONNECTED change.
     */
    public Builder filter(ConnectionStateFilter filter) {
      this.filter = filter;
      return this;
    }

    /** {@link #filter(ConnectionStateFilter)} with the filter the builder builds. */
    public Builder filter(ConnectionStateFilter.Builder filter) {
      return filter(filter.build());
    }

    /** Only changes of these kinds (any when empty); ALL_DELETED always comes through. */
    public Builder kinds(List<ChangeKind> kinds) {
      this.kinds = List.copyOf(kinds);
      return this;
    }

    /** Replays every change after {@code revision} first (0: from the start of the feed). */
    public Builder startRevision(long revision) {
      if (revision < 0) {
        throw new IllegalArgumentException("startRevision must not be negative, got " + revision);
      }
      this.startRevision = OptionalLong.of(revision);
      return this;
    }

    /** Starts with a snapshot of every matching record. Not with {@link #startRevision}. */
    public Builder includeSnapshot(boolean includeSnapshot) {
      this.includeSnapshot = includeSnapshot;
      return this;
    }

    /** The heartbeat interval asked of the server: 1 s to 1 h (null: the server's 10 s). */
    public Builder heartbeatInterval(Duration interval) {
      if (interval != null
          && (interval.compareTo(Duration.ofSeconds(1)) < 0 || interval.compareTo(Duration.ofHours(1)) > 0)) {
        throw new IllegalArgumentException("heartbeatInterval must be 1 s to 1 h, got " + interval);
      }
      this.heartbeatInterval = interval;
      return this;
    }

    /** Delivers heartbeats as events (they are consumed silently otherwise). */
    public Builder heartbeats(boolean heartbeats) {
      this.heartbeats = heartbeats;
      return this;
    }

    public Builder backoff(Backoff backoff) {
      if (backoff == null) {
        throw new IllegalArgumentException("backoff must not be null");
      }
      this.backoff = backoff;
      return this;
    }

    /** Gives up after this many consecutive failed attempts (0, the default: never). */
    public Builder maxRetries(int maxRetries) {
      if (maxRetries < 0) {
        throw new IllegalArgumentException("maxRetries must not be negative, got " + maxRetries);
      }
      this.maxRetries = maxRetries;
      return this;
    }

    public Builder onRetry(RetryListener onRetry) {
      this.onRetry = onRetry;
      return this;
    }

    /**
     * @throws IllegalArgumentException when both a start revision and a snapshot are asked for
     */
    public WatchOptions build() {
      if (includeSnapshot && startRevision.isPresent()) {
        throw new IllegalArgumentException("startRevision and includeSnapshot cannot be combined");
      }
      return new WatchOptions(this);
    }
  }
}
