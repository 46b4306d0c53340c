package connstate_test

import (
	"context"
	"fmt"
	"iter"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/connstate/connstate/clients/go/connstate"
	pb "github.com/connstate/connstate/clients/go/connstatev1"
)

// puller reads a watch step by step, with a bounded wait for each event.
type puller struct {
	t    *testing.T
	next func() (connstate.WatchEvent, error, bool)
	stop func()
}

func pull(t *testing.T, seq iter.Seq2[connstate.WatchEvent, error]) *puller {
	next, stop := iter.Pull2(seq)
	p := &puller{t: t, next: next, stop: stop}
	t.Cleanup(stop)
	return p
}

// event returns the next event (heartbeats included if asked for); the
// watch's own context bounds the wait.
func (p *puller) event() connstate.WatchEvent {
	p.t.Helper()
	ev, err, ok := p.next()
	if !ok {
		p.t.Fatal("watch ended")
	}
	if err != nil {
		p.t.Fatalf("watch error: %v", err)
	}
	return ev
}

// changesThrough reads EventChange events up to and including revision
// `through`, failing on anything but changes and heartbeats.
func (p *puller) changesThrough(through uint64) []*pb.Change {
	p.t.Helper()
	var out []*pb.Change
	for {
		ev := p.event()
		switch ev.Kind {
		case connstate.EventHeartbeat:
			continue
		case connstate.EventChange:
			out = append(out, ev.Change)
			if ev.Revision >= through {
				return out
			}
		default:
			p.t.Fatalf("unexpected %v event at revision %d", ev.Kind, ev.Revision)
		}
	}
}

// assertContinuous checks that changes are exactly revisions from..to, once each, in order.
func assertContinuous(t *testing.T, changes []*pb.Change, from, to uint64) {
	t.Helper()
	if uint64(len(changes)) != to-from+1 {
		t.Errorf("want %d changes (%d..%d), got %d", to-from+1, from, to, len(changes))
	}
	for i, c := range changes {
		if want := from + uint64(i); c.GetRevision() != want {
			t.Fatalf("change %d has revision %d, want %d", i, c.GetRevision(), want)
		}
	}
}

func watchContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestWatchSnapshotThenLiveChanges(t *testing.T) {
	server := startServer(t)
	c := server.client()
	ingest(t, c, connects("d:acme:snap:s", 5)...)
	ingest(t, c, connect("g:acme:gw:g1", 1, 0))
	w := pull(t, c.Watch(watchContext(t), connstate.WatchOptions{
		IncludeSnapshot: true,
		Filter: &pb.ConnectionStateFilter{
			ClientType:       pb.ClientType_CLIENT_TYPE_DEVICE,
			ConnectionStatus: pb.ConnectionStatus_CONNECTION_STATUS_CONNECTED,
		},
	}))
	var snapshot []string
	var complete uint64
	for complete == 0 {
		ev := w.event()
		switch ev.Kind {
		case connstate.EventSnapshot:
			if ev.Change.GetKind() != pb.ChangeKind_CHANGE_KIND_SNAPSHOT || ev.Change.GetState() == nil {
				t.Fatalf("snapshot item %v", ev.Change)
			}
			snapshot = append(snapshot, ev.Change.GetClientId())
		case connstate.EventSnapshotComplete:
			complete = ev.Revision
		default:
			t.Fatalf("unexpected %v", ev.Kind)
		}
	}
	if len(snapshot) != 5 || complete != 6 {
		t.Fatalf("snapshot %v at %d", snapshot, complete)
	}
	rev := ingest(t, c,
		disconnect("d:acme:snap:s3", 4, 100, pb.DisconnectCause_DISCONNECT_CAUSE_CLIENT_DISCONNECT),
		connect("g:acme:gw:g2", 2, 100), // filtered out
		connect("d:acme:snap:s9", 9, 100))
	got := w.changesThrough(rev)
	if len(got) != 2 || got[0].GetClientId() != "d:acme:snap:s3" || got[0].GetKind() != pb.ChangeKind_CHANGE_KIND_DISCONNECTED ||
		got[1].GetClientId() != "d:acme:snap:s9" || got[1].GetRevision() != rev {
		t.Fatalf("live changes %v", got)
	}
}

func TestWatchWithoutStartBeginsNow(t *testing.T) {
	server := startServer(t)
	c := server.client()
	ingest(t, c, connects("d:acme:old:o", 3)...)
	w := pull(t, c.Watch(watchContext(t), connstate.WatchOptions{
		Heartbeats:        true,
		HeartbeatInterval: time.Second,
	}))
	// The first heartbeat shows the watch is open at revision 3.
	if ev := w.event(); ev.Kind != connstate.EventHeartbeat || ev.Revision != 3 {
		t.Fatalf("want a heartbeat at 3, got %v at %d", ev.Kind, ev.Revision)
	}
	rev := ingest(t, c, connects("d:acme:new:n", 4)...)
	assertContinuous(t, w.changesThrough(rev), 4, rev)
}

func TestWatchRejectsBadOptions(t *testing.T) {
	server := startServer(t)
	c := server.client()
	ctx := watchContext(t)
	for _, err := range c.Watch(ctx, connstate.WatchOptions{StartRevision: connstate.Revision(1), IncludeSnapshot: true}) {
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("want INVALID_ARGUMENT, got %v", err)
		}
	}
	bad := &pb.ConnectionStateFilter{ConnectedAfter: timestampNow()}
	for _, err := range c.Watch(ctx, connstate.WatchOptions{Filter: bad, StartRevision: connstate.Revision(0)}) {
		if !connstate.IsInvalidArgument(err) {
			t.Fatalf("want INVALID_ARGUMENT from the server, got %v", err)
		}
	}
}

// (a) The server is restarted mid-watch (on the same port and data folder):
// the watch resumes from the last revision it delivered and every change
// arrives exactly once, in order.
func TestWatchResumesAcrossAServerRestart(t *testing.T) {
	server := startServerAt(t, freePort(t), "--shutdown-grace", "1s")
	c := server.client()
	start := ingest(t, c, connects("d:acme:before:b", 10)...)

	var retries atomic.Int32
	var retryCodes sync.Map
	w := pull(t, c.Watch(watchContext(t), connstate.WatchOptions{
		StartRevision: connstate.Revision(start),
		OnRetry: func(err error, _ uint64, _ time.Duration) {
			retries.Add(1)
			retryCodes.Store(status.Code(err), true)
		},
	}))
	var got []*pb.Change
	var rev uint64
	for batch := range 3 {
		rev = ingest(t, c, connects(fmt.Sprintf("d:acme:live%d:l", batch), 20)...)
	}
	got = append(got, w.changesThrough(rev)...)
	// Twenty more changes, of which the consumer takes only five before
	// the server goes away.
	rev = ingest(t, c, connects("d:acme:midway:m", 20)...)
	got = append(got, w.changesThrough(rev-15)...)

	// Stop and start the server while the watch is open. The restart
	// records nothing for the clients of another broker (it did not
	// restart): all 90 stay connected, at the revisions they had.
	server.restart()
	assertRestartRecordedNothing(t, c, rev, 90)
	// Then that broker reports the 90 connections lost (new revisions),
	// and new clients connect.
	var reported []*pb.LifecycleEvent
	reported = append(reported, lost("d:acme:before:b", 10)...)
	for batch := range 3 {
		reported = append(reported, lost(fmt.Sprintf("d:acme:live%d:l", batch), 20)...)
	}
	reported = append(reported, lost("d:acme:midway:m", 20)...)
	ingest(t, c, reported...)
	for batch := range 3 {
		rev = ingest(t, c, connects(fmt.Sprintf("d:acme:after%d:a", batch), 20)...)
	}
	got = append(got, w.changesThrough(rev)...)
	assertContinuous(t, got, start+1, rev)
	disconnects := 0
	for _, change := range got {
		if change.GetKind() == pb.ChangeKind_CHANGE_KIND_DISCONNECTED {
			disconnects++
			if i := change.GetState().GetLastDisconnectInitiator(); i != pb.DisconnectInitiator_DISCONNECT_INITIATOR_NETWORK {
				t.Errorf("%s: initiator %v, want the network (as reported)", change.GetClientId(), i)
			}
		}
	}
	if disconnects != 90 {
		t.Errorf("want the 90 disconnects the broker reported after the restart, got %d", disconnects)
	}
	if retries.Load() == 0 {
		t.Error("the watch never reconnected")
	}
	if _, ok := retryCodes.Load(codes.Unavailable); !ok {
		t.Error("no UNAVAILABLE seen")
	}
}

// (b) The watch's position leaves the change feed while it is away: it
// reports a resynchronisation, delivers a fresh snapshot, then live changes;
// the view built from the events matches the server's records.
func TestWatchResynchronisesWhenItsRevisionIsGone(t *testing.T) {
	server := startServerAt(t, freePort(t), "--retention-interval", "100ms", "--shutdown-grace", "1s")
	c := server.client()
	ctx := watchContext(t)
	rev := ingest(t, c, connects("d:acme:first:f", 10)...)

	var view sync.Map // client id -> status (never read concurrently here)
	apply := func(ev connstate.WatchEvent) {
		switch ev.Kind {
		case connstate.EventResync:
			view.Clear()
		case connstate.EventSnapshot, connstate.EventChange:
			if ev.Change.GetKind() == pb.ChangeKind_CHANGE_KIND_DELETED {
				view.Delete(ev.Change.GetClientId())
			} else if s := ev.Change.GetState(); s != nil {
				view.Store(s.GetClientId(), s.GetConnectionStatus())
			}
		}
	}
	w := pull(t, c.Watch(ctx, connstate.WatchOptions{StartRevision: connstate.Revision(0)}))
	for _, change := range w.changesThrough(rev) {
		apply(connstate.WatchEvent{Kind: connstate.EventChange, Change: change})
	}

	// While the consumer is away: restart (which records nothing for
	// another broker's clients; that broker reports the 10 connections
	// lost), shrink the feed to 5 changes, and make 11 more changes.
	server.restart()
	ingest(t, c, lost("d:acme:first:f", 10)...)
	if _, err := c.UpdateSettings(ctx, &pb.Settings{FeedMaxEntries: 5}, []string{"feed_max_entries"}); err != nil {
		t.Fatal(err)
	}
	ingest(t, c, connects("d:acme:second:s", 10)...)
	ingest(t, c, disconnect("d:acme:second:s0", 1, 50, pb.DisconnectCause_DISCONNECT_CAUSE_KEEP_ALIVE_TIMEOUT))
	eventually(t, 10*time.Second, "the feed to drop revision 11", func() bool {
		return rawOutOfRange(t, c, rev)
	})

	// Resumed, the watch finds its revision gone and resynchronises.
	ev := w.event()
	if ev.Kind != connstate.EventResync || ev.Revision != rev || status.Code(ev.Err) != codes.OutOfRange {
		t.Fatalf("want a resync after %d, got %v at %d (%v)", rev, ev.Kind, ev.Revision, ev.Err)
	}
	apply(ev)
	snapshot := 0
	var complete uint64
	for complete == 0 {
		ev := w.event()
		switch ev.Kind {
		case connstate.EventSnapshot:
			snapshot++
			apply(ev)
		case connstate.EventSnapshotComplete:
			complete = ev.Revision
		default:
			t.Fatalf("unexpected %v in the snapshot", ev.Kind)
		}
	}
	current, err := c.CurrentRevision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if snapshot != 20 || complete != current {
		t.Fatalf("snapshot of %d records at %d, want 20 at %d", snapshot, complete, current)
	}
	// Live again, from the snapshot's revision on.
	last := ingest(t, c,
		connect("d:acme:first:f3", 100, 100),
		disconnect("d:acme:second:s5", 6, 100, pb.DisconnectCause_DISCONNECT_CAUSE_CLIENT_DISCONNECT),
		connect("d:acme:third:t0", 1, 100))
	if _, err := c.Delete(ctx, "d:acme:first:f9"); err != nil {
		t.Fatal(err)
	}
	last++
	live := w.changesThrough(last)
	assertContinuous(t, live, complete+1, last)
	for _, change := range live {
		apply(connstate.WatchEvent{Kind: connstate.EventChange, Change: change})
	}

	// The view equals the records.
	want := map[string]pb.ConnectionStatus{}
	for state, err := range c.List(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		want[state.GetClientId()] = state.GetConnectionStatus()
	}
	got := map[string]pb.ConnectionStatus{}
	view.Range(func(k, v any) bool {
		got[k.(string)] = v.(pb.ConnectionStatus)
		return true
	})
	if len(got) != len(want) || len(want) != 20 {
		t.Fatalf("view has %d clients, server %d", len(got), len(want))
	}
	for id, s := range want {
		if got[id] != s {
			t.Errorf("%s: view %v, server %v", id, got[id], s)
		}
	}
}

// assertRestartRecordedNothing checks that the store is still at revision
// rev and that its `connected` clients are all still connected.
func assertRestartRecordedNothing(t *testing.T, c *connstate.Client, rev uint64, connected int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	current, err := c.CurrentRevision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if current != rev {
		t.Errorf("the restart moved the store from revision %d to %d", rev, current)
	}
	still := 0
	for state, err := range c.List(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		if state.GetConnectionStatus() == pb.ConnectionStatus_CONNECTION_STATUS_CONNECTED {
			still++
		}
	}
	if still != connected {
		t.Errorf("want the %d ingested clients still connected after the restart, got %d", connected, still)
	}
}

// rawOutOfRange reports whether a raw watch from revision rev is refused.
func rawOutOfRange(t *testing.T, c *connstate.Client, rev uint64) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := c.StateService().WatchConnections(ctx, &pb.WatchConnectionsRequest{StartRevision: proto.Uint64(rev)})
	if err == nil {
		_, err = stream.Recv()
	}
	switch status.Code(err) {
	case codes.OK:
		return false
	case codes.OutOfRange:
		oldest, ok := connstate.OldestRevision(stream.Trailer())
		if !ok || oldest <= rev {
			t.Errorf("trailer oldest revision %d (%v)", oldest, ok)
		}
		return true
	default:
		t.Fatalf("raw watch: %v", err)
		return false
	}
}

// A consumer that pauses falls behind its buffer: the server ends the
// stream with RESOURCE_EXHAUSTED and the watch resumes from the trailer's
// revision, still without gap or duplicate.
func TestWatchResumesAfterFallingBehind(t *testing.T) {
	server := startServer(t, "--watch-buffer", "16")
	// Small HTTP/2 windows, so that little hides in transport buffers.
	c := server.client(connstate.WithDialOptions(
		grpc.WithInitialWindowSize(64*1024),
		grpc.WithInitialConnWindowSize(64*1024),
	))
	writer := server.client()
	var exhausted atomic.Int32
	w := pull(t, c.Watch(watchContext(t), connstate.WatchOptions{
		StartRevision: connstate.Revision(0),
		OnRetry: func(err error, _ uint64, _ time.Duration) {
			if status.Code(err) == codes.ResourceExhausted {
				exhausted.Add(1)
			}
		},
	}))
	first := ingest(t, writer, connect("d:acme:slow:first", 1, 0))
	got := w.changesThrough(first)
	var rev uint64
	for batch := range 40 {
		rev = ingest(t, writer, connects(fmt.Sprintf("d:acme:slow%d:x", batch), 100)...)
	}
	got = append(got, w.changesThrough(rev)...)
	assertContinuous(t, got, 1, rev)
	if exhausted.Load() == 0 {
		t.Error("the server never ended the slow watch")
	}
}

func timestampNow() *timestamppb.Timestamp { return timestamppb.Now() }
