package connstate

import (
	"context"
	"errors"
	"io"
	"iter"
	"math/rand/v2"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/connstate/connstate/clients/go/connstatev1"
)

// LastRevisionTrailer is the trailer with which the server ends a watch it
// stops (RESOURCE_EXHAUSTED, UNAVAILABLE): the last revision it delivered or
// skipped as not matching.
const LastRevisionTrailer = "x-connstate-last-revision"

// OldestRevisionTrailer is the trailer of OUT_OF_RANGE: the oldest revision
// that can still be replayed from.
const OldestRevisionTrailer = "x-connstate-oldest-revision"

// EventKind tells what a WatchEvent is.
type EventKind int

const (
	// EventChange: Change holds a committed change (replayed or live), in
	// revision order, each revision once.
	EventChange EventKind = iota + 1
	// EventSnapshot: Change holds one record of a snapshot (kind
	// CHANGE_KIND_SNAPSHOT; Change.State is the record).
	EventSnapshot
	// EventSnapshotComplete: the snapshot is whole; it reflects every change
	// up to Revision. Changes after it follow.
	EventSnapshotComplete
	// EventResync: the watch lost its place (the server no longer had the
	// changes after Revision, or a snapshot was cut short). Whatever the
	// caller built from earlier events must be thrown away: a new snapshot
	// (EventSnapshot records, then EventSnapshotComplete) follows, then live
	// changes. Err is the cause.
	EventResync
	// EventHeartbeat: nothing happened for a heartbeat interval; Revision is
	// the server's position for this watch. Only with WatchOptions.Heartbeats.
	EventHeartbeat
)

func (k EventKind) String() string {
	switch k {
	case EventChange:
		return "change"
	case EventSnapshot:
		return "snapshot"
	case EventSnapshotComplete:
		return "snapshot-complete"
	case EventResync:
		return "resync"
	case EventHeartbeat:
		return "heartbeat"
	}
	return "EventKind(" + strconv.Itoa(int(k)) + ")"
}

// WatchEvent is one item of Client.Watch.
type WatchEvent struct {
	Kind EventKind
	// The change or snapshot record (EventChange, EventSnapshot).
	Change *pb.Change
	// EventChange, EventSnapshot: the revision of the change or record.
	// EventSnapshotComplete: the snapshot's revision. EventResync: the last
	// revision delivered before the watch lost its place. EventHeartbeat:
	// the newest committed revision.
	Revision uint64
	// EventResync: why (an OUT_OF_RANGE status, or the error that cut a
	// snapshot short).
	Err error
}

// WatchOptions configures Client.Watch. The zero value watches every change
// from now on.
type WatchOptions struct {
	// Only changes of clients matching this filter (time fields must be
	// unset). A connection_status filter also lets through every CONNECTED
	// and DISCONNECTED change.
	Filter *pb.ConnectionStateFilter
	// Only changes of these kinds (any when empty). ALL_DELETED always
	// comes through.
	Kinds []pb.ChangeKind
	// Replay every change after this revision first (see Revision). Without
	// it (and without IncludeSnapshot) the watch starts at the current
	// revision.
	StartRevision *uint64
	// Start with a snapshot of every matching record. Not with StartRevision.
	IncludeSnapshot bool
	// Heartbeat interval asked of the server (at least 1 s; 0: the
	// server's default of 10 s).
	HeartbeatInterval time.Duration
	// Deliver heartbeats as EventHeartbeat (they are consumed silently
	// otherwise).
	Heartbeats bool
	// Backoff between reconnection attempts: starts at InitialBackoff
	// (default 100 ms), doubles up to MaxBackoff (default 5 s), with jitter;
	// reset once a stream delivers something.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// Give up after this many consecutive failed attempts (0: never); the
	// last error is yielded.
	MaxRetries int
	// Called before each reconnection with the error that ended the
	// stream, the revision the watch resumes after, and the delay.
	OnRetry func(err error, resumeAfter uint64, delay time.Duration)
}

// Revision returns a pointer to r, for WatchOptions.StartRevision.
func Revision(r uint64) *uint64 { return &r }

// Watch yields change events until ctx ends, the consumer stops iterating,
// or an error that cannot be recovered from.
//
// The watch keeps a position: the revision of the last change it delivered
// (or the revision of the last snapshot_complete). When the stream breaks
// (connection lost, UNAVAILABLE at server shutdown, RESOURCE_EXHAUSTED for a
// consumer that fell behind) it reconnects after a short backoff and replays
// from that position (or from the revision in the server's
// x-connstate-last-revision trailer, which also counts changes the filter
// skipped), so every change comes once, in revision order; a change at or
// below the position is dropped. When the server no longer holds the
// changes after the position (OUT_OF_RANGE), the watch yields EventResync,
// then re-lists through a new snapshot with the same filter and continues
// live: the consumer never misses a change silently.
//
// The stream is read only while the consumer iterates: a consumer that
// pauses pauses the watch (and may then be resumed or resynchronised).
//
// Errors are gRPC status errors: INVALID_ARGUMENT for a bad filter, codes
// Canceled / DeadlineExceeded when ctx ends. After an error the iteration
// ends.
func (c *Client) Watch(ctx context.Context, opts WatchOptions) iter.Seq2[WatchEvent, error] {
	return func(yield func(WatchEvent, error) bool) {
		w := &watcher{client: c, opts: opts}
		w.run(ctx, yield)
	}
}

type watcher struct {
	client *Client
	opts   WatchOptions
	// The revision delivered last (valid unless snapshot is set).
	last uint64
	// The next stream starts with a snapshot.
	snapshot bool
	// Clients whose snapshot record is newer than the snapshot's revision,
	// with that record's revision: their older changes are already in it.
	skip map[string]uint64
	// The last stream ended with an x-connstate-last-revision trailer.
	trailerRevision bool
}

func (w *watcher) run(ctx context.Context, yield func(WatchEvent, error) bool) {
	opts := w.opts
	switch {
	case opts.StartRevision != nil && opts.IncludeSnapshot:
		yield(WatchEvent{}, status.Error(codes.InvalidArgument, "connstate: WatchOptions.StartRevision and IncludeSnapshot cannot be combined"))
		return
	case opts.StartRevision != nil:
		w.last = *opts.StartRevision
	case opts.IncludeSnapshot:
		w.snapshot = true
	default:
		// Start from a known revision, so that a stream broken before its
		// first change can still be resumed without a gap.
		rev, err := w.client.CurrentRevision(ctx)
		if err != nil {
			yield(WatchEvent{}, err)
			return
		}
		w.last = rev
	}
	initial := opts.InitialBackoff
	if initial <= 0 {
		initial = 100 * time.Millisecond
	}
	maxDelay := opts.MaxBackoff
	if maxDelay <= 0 {
		maxDelay = 5 * time.Second
	}
	failures := 0
	for {
		progressed, stop, err := w.stream(ctx, yield)
		if stop {
			return
		}
		if ctx.Err() != nil {
			yield(WatchEvent{}, status.FromContextError(ctx.Err()).Err())
			return
		}
		if progressed {
			failures = 0
		}
		if status.Code(err) == codes.OutOfRange && !w.snapshot {
			// The position is gone from the feed: re-list.
			w.snapshot = true
			if !yield(WatchEvent{Kind: EventResync, Revision: w.last, Err: err}, nil) {
				return
			}
			continue
		}
		if !w.resumable(err) {
			yield(WatchEvent{}, err)
			return
		}
		failures++
		if opts.MaxRetries > 0 && failures > opts.MaxRetries {
			yield(WatchEvent{}, err)
			return
		}
		delay := backoffDelay(initial, maxDelay, failures)
		if opts.OnRetry != nil {
			opts.OnRetry(err, w.last, delay)
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			yield(WatchEvent{}, status.FromContextError(ctx.Err()).Err())
			return
		case <-timer.C:
		}
		// The watch's own backoff decides when to try again: a connection
		// still waiting out gRPC's reconnect backoff (it grows on its own
		// during a long outage) tries now instead of failing this attempt.
		if conn := w.client.conn; conn.GetState() == connectivity.TransientFailure {
			conn.ResetConnectBackoff()
			// A call fails at once while the connection is in transient
			// failure: give the new attempt a moment to succeed first.
			wait, cancel := context.WithTimeout(ctx, time.Second)
			for state := conn.GetState(); state != connectivity.Ready && conn.WaitForStateChange(wait, state); state = conn.GetState() {
			}
			cancel()
		}
	}
}

// retryable: the stream broke but the watch can resume.
func retryable(err error) bool {
	if errors.Is(err, io.EOF) {
		return true // ended without a status: resume
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.ResourceExhausted, codes.Aborted, codes.Canceled:
		// Canceled here is not the caller's (its ctx is checked first): an
		// HTTP/2 reset of the connection.
		return true
	}
	return false
}

// resumable: retryable, or INTERNAL from a failed server-side watcher, which
// names the last revision it delivered in a trailer (the SDK contract,
// clients/CONTRACT.md).
func (w *watcher) resumable(err error) bool {
	return retryable(err) || (status.Code(err) == codes.Internal && w.trailerRevision)
}

// stream runs one WatchConnections call. It returns whether anything was
// received, whether the consumer stopped, and the error that ended it.
func (w *watcher) stream(ctx context.Context, yield func(WatchEvent, error) bool) (progressed, stop bool, err error) {
	req := &pb.WatchConnectionsRequest{
		Filter: w.opts.Filter,
		Kinds:  w.opts.Kinds,
	}
	if w.opts.HeartbeatInterval > 0 {
		req.HeartbeatInterval = durationpb.New(w.opts.HeartbeatInterval)
	}
	inSnapshot := w.snapshot
	if inSnapshot {
		req.IncludeSnapshot = true
	} else {
		req.StartRevision = proto.Uint64(w.last)
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w.trailerRevision = false
	stream, err := w.client.states.WatchConnections(sctx, req)
	if err != nil {
		return false, false, err
	}
	var snapshotted map[string]uint64
	snapshotItems := 0
	for {
		resp, err := stream.Recv()
		if err != nil {
			_, w.trailerRevision = trailerRevision(stream.Trailer(), LastRevisionTrailer)
			if inSnapshot {
				if snapshotItems > 0 && ctx.Err() == nil && w.resumable(err) {
					// The consumer holds part of a snapshot: it must start over.
					if !yield(WatchEvent{Kind: EventResync, Revision: w.last, Err: err}, nil) {
						return progressed, true, err
					}
				}
			} else if rev, ok := trailerRevision(stream.Trailer(), LastRevisionTrailer); ok && rev > w.last {
				w.last = rev
			}
			return progressed, false, err
		}
		progressed = true
		switch ev := resp.GetEvent().(type) {
		case *pb.WatchConnectionsResponse_Change:
			change := ev.Change
			if change.GetKind() == pb.ChangeKind_CHANGE_KIND_SNAPSHOT {
				if snapshotted == nil {
					snapshotted = map[string]uint64{}
				}
				snapshotted[change.GetClientId()] = change.GetRevision()
				snapshotItems++
				if !yield(WatchEvent{Kind: EventSnapshot, Change: change, Revision: change.GetRevision()}, nil) {
					return progressed, true, nil
				}
				continue
			}
			if inSnapshot || change.GetRevision() <= w.last {
				continue // not expected before snapshot_complete; or a duplicate
			}
			if change.GetKind() == pb.ChangeKind_CHANGE_KIND_ALL_DELETED {
				w.skip = nil
			} else if seen, ok := w.skip[change.GetClientId()]; ok {
				if change.GetRevision() <= seen {
					w.last = change.GetRevision()
					continue // already reflected by the snapshot record
				}
				delete(w.skip, change.GetClientId())
			}
			w.last = change.GetRevision()
			if !yield(WatchEvent{Kind: EventChange, Change: change, Revision: change.GetRevision()}, nil) {
				return progressed, true, nil
			}
		case *pb.WatchConnectionsResponse_SnapshotComplete:
			rev := ev.SnapshotComplete.GetRevision()
			w.skip = nil
			for id, r := range snapshotted {
				if r > rev {
					if w.skip == nil {
						w.skip = map[string]uint64{}
					}
					w.skip[id] = r
				}
			}
			snapshotted = nil
			w.last = rev
			w.snapshot = false
			inSnapshot = false
			if !yield(WatchEvent{Kind: EventSnapshotComplete, Revision: rev}, nil) {
				return progressed, true, nil
			}
		case *pb.WatchConnectionsResponse_Heartbeat:
			if w.opts.Heartbeats {
				if !yield(WatchEvent{Kind: EventHeartbeat, Revision: ev.Heartbeat.GetRevision()}, nil) {
					return progressed, true, nil
				}
			}
		}
	}
}

func trailerRevision(md metadata.MD, key string) (uint64, bool) {
	values := md.Get(key)
	if len(values) == 0 {
		return 0, false
	}
	rev, err := strconv.ParseUint(values[0], 10, 64)
	return rev, err == nil
}

// OldestRevision returns the oldest replayable revision named by an
// OUT_OF_RANGE error of a raw WatchConnections stream, if it has one.
func OldestRevision(md metadata.MD) (uint64, bool) {
	return trailerRevision(md, OldestRevisionTrailer)
}

// backoffDelay is the wait before the attempt after the n-th consecutive
// failure: min(max, initial·2^(n−1)) with ±20 % jitter, and never more than
// max (the jitter does not push a capped delay past it).
func backoffDelay(initial, maxDelay time.Duration, n int) time.Duration {
	delay := initial << min(n-1, 16)
	if delay > maxDelay || delay <= 0 {
		delay = maxDelay
	}
	return min(time.Duration(float64(delay)*(0.8+0.4*rand.Float64())), maxDelay)
}
