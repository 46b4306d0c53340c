package io.github.connstate.client;

import java.time.Duration;
import java.util.concurrent.ThreadLocalRandom;

/**
 * Delays between the reconnection attempts of a watch (the SDK contract,
 * clients/CONTRACT.md): the n-th consecutive failed attempt waits
 * {@code min(max, initial * 2^(n-1))} times a uniform factor in [0.8, 1.2],
 * and never more than {@code max}.
 */
public final class Backoff {
  /** The contract's defaults: 100 ms doubling up to 5 s. */
  public static final Backoff DEFAULT = new Backoff(Duration.ofMillis(100), Duration.ofSeconds(5));

  private final Duration initial;
  private final Duration max;

  /**
   * @param initial the delay before the first retry (positive)
   * @param max the longest delay, jitter included (at least {@code initial})
   */
  public Backoff(Duration initial, Duration max) {
    if (initial == null || initial.isNegative() || initial.isZero()) {
      throw new IllegalArgumentException("backoff initial must be positive, got " + initial);
    }
    if (max == null || max.compareTo(initial) < 0) {
      throw new IllegalArgumentException("backoff max must be at least initial (" + initial + "), got " + max);
    }
    this.initial = initial;
    this.max = max;
  }

  public Duration initial() {
    return initial;
  }

  public Duration max() {
    return max;
  }

  /** The delay before attempt {@code n} (1 for the first retry), jitter included. */
  public Duration delay(int n) {
    double base = initial.toNanos() * Math.pow(2, Math.max(0, Math.min(n - 1, 62)));
    double capped = Math.min(max.toNanos(), base);
    double jittered = capped * (0.8 + 0.4 * ThreadLocalRandom.current().nextDouble());
    return Duration.ofNanos((long) Math.min(max.toNanos(), jittered));
  }

  @Override
  public String toString() {
    return "Backoff(initial=" + initial + ", max=" + max + ")";
  }
}
