package io.github.connstate.client;

import io.github.connstate.v1.Change;
import io.github.connstate.v1.ChangeKind;
import io.github.connstate.v1.ConnectionState;
import io.grpc.StatusRuntimeException;
import java.util.Objects;

/**
 * One item of a {@link ConnectionWatch}.
 *
 * @param type what it is
 * @param change {@link Type#CHANGE} and {@link Type#SNAPSHOT}: the change or snapshot record;
 *     null otherwise
 * @param revision {@code CHANGE}, {@code SNAPSHOT}: the revision of the change or record; {@code
 *     SNAPSHOT_COMPLETE}: the snapshot's revision; {@code RESYNC}: the last revision delivered
 *     before the watch lost its place; {@code HEARTBEAT}: the server's position for this watch
 * @param cause {@code RESYNC}: why (an OUT_OF_RANGE status, or the error that cut a snapshot
 *     short); null otherwise
 */
public record WatchEvent(Type type, Change change, long revision, StatusRuntimeException cause) {

  /** The five events of every connstate SDK (clients/CONTRACT.md). */
  public enum Type {
    /** A committed change (replayed or live), in revision order, each revision once. */
    CHANGE,
    /** One record of a snapshot (kind SNAPSHOT; {@code change().getState()} is the record). */
    SNAPSHOT,
    /** The snapshot is whole: it reflects every change up to {@code revision()}. */
    SNAPSHOT_COMPLETE,
    /**
     * The watch lost its place: throw away what was built from earlier events; a new snapshot
     * ({@code SNAPSHOT} events, then {@code SNAPSHOT_COMPLETE}) follows, then live changes.
     */
    RESYNC,
    /** Nothing happened for a heartbeat interval. Only with {@link WatchOptions#heartbeats()}. */
    HEARTBEAT
  }

  public WatchEvent {
    Objects.requireNonNull(type, "type");
  }

  /** The client id of a change or snapshot record; empty otherwise. */
  public String clientId() {
    return change == null ? "" : change.getClientId();
  }

  /** The state record after a change or of a snapshot record, or null when it has none. */
  public ConnectionState state() {
    return change != null && change.hasState() ? change.getState() : null;
  }

  /** The kind of a change or snapshot record; null for the other events. */
  public ChangeKind kind() {
    return change == null ? null : change.getKind();
  }
}
