package connstate_test

// The shared scenarios of the SDK contract (clients/CONTRACT.md) that the
// other tests do not cover: a server killed for 40 s, a snapshot cut off half
// way, cancellation through the context (live and during a backoff), and auth
// mode with a read-only key.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/connstate/connstate/clients/go/connstate"
	pb "github.com/connstate/connstate/clients/go/connstatev1"
)

// collector reads a watch on a goroutine of its own, as an application would.
type collector struct {
	mu     sync.Mutex
	events []connstate.WatchEvent
	err    error
	done   chan struct{}
}

func collect(ctx context.Context, c *connstate.Client, opts connstate.WatchOptions) *collector {
	col := &collector{done: make(chan struct{})}
	go func() {
		defer close(col.done)
		for ev, err := range c.Watch(ctx, opts) {
			col.mu.Lock()
			if err != nil {
				col.err = err
			} else {
				col.events = append(col.events, ev)
			}
			col.mu.Unlock()
		}
	}()
	return col
}

func (col *collector) snapshot() ([]connstate.WatchEvent, error) {
	col.mu.Lock()
	defer col.mu.Unlock()
	return append([]connstate.WatchEvent(nil), col.events...), col.err
}

func (col *collector) awaitRevision(t *testing.T, rev uint64, limit time.Duration) {
	t.Helper()
	eventually(t, limit, fmt.Sprintf("revision %d", rev), func() bool {
		events, err := col.snapshot()
		if err != nil {
			t.Fatalf("the watch failed: %v", err)
		}
		return len(events) > 0 && events[len(events)-1].Revision >= rev
	})
}

func TestWatchResumesAfterTheServerWasKilledFor40Seconds(t *testing.T) {
	server := startServerAt(t, freePort(t))
	c := server.client()
	start := ingest(t, c, connects("d:acme:k:before", 10)...)
	var mu sync.Mutex
	var retries []time.Duration
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	// The default backoff: unbounded retries, 5 s cap.
	col := collect(ctx, server.client(), connstate.WatchOptions{
		StartRevision: connstate.Revision(start),
		OnRetry: func(_ error, _ uint64, delay time.Duration) {
			mu.Lock()
			retries = append(retries, delay)
			mu.Unlock()
		},
	})
	var rev uint64
	for batch := range 3 {
		rev = ingest(t, c, connects(fmt.Sprintf("d:acme:k:live%d:l", batch), 20)...)
	}
	col.awaitRevision(t, rev, 20*time.Second)
	// More changes race with the kill.
	ingest(t, c, connects("d:acme:k:midway:m", 20)...)
	server.kill()
	time.Sleep(40 * time.Second) // the downtime of the scenario
	server.start()
	// A new writer: the old one's connection waits its own reconnect backoff.
	c = server.client()
	var reported []*pb.LifecycleEvent
	reported = append(reported, lost("d:acme:k:before", 10)...)
	for batch := range 3 {
		reported = append(reported, lost(fmt.Sprintf("d:acme:k:live%d:l", batch), 20)...)
	}
	reported = append(reported, lost("d:acme:k:midway:m", 20)...)
	reportedRevision := ingest(t, c, reported...)
	// Resumed within the watch's own backoff cap (5 s, +20 %).
	col.awaitRevision(t, reportedRevision, 8*time.Second)
	for batch := range 3 {
		rev = ingest(t, c, connects(fmt.Sprintf("d:acme:k:after%d:a", batch), 20)...)
	}
	col.awaitRevision(t, rev, 30*time.Second)
	cancel()
	<-col.done
	events, _ := col.snapshot()
	var changes []*pb.Change
	disconnects := 0
	for _, ev := range events {
		if ev.Kind != connstate.EventChange {
			t.Fatalf("unexpected %v event at revision %d", ev.Kind, ev.Revision)
		}
		changes = append(changes, ev.Change)
		if ev.Change.GetKind() == pb.ChangeKind_CHANGE_KIND_DISCONNECTED {
			disconnects++
			if i := ev.Change.GetState().GetLastDisconnectInitiator(); i != pb.DisconnectInitiator_DISCONNECT_INITIATOR_NETWORK {
				t.Errorf("%s: initiator %v, want the network (as reported)", ev.Change.GetClientId(), i)
			}
		}
	}
	assertContinuous(t, changes, start+1, rev)
	if disconnects != 90 {
		t.Errorf("want the 90 disconnects the broker reported after the restart, got %d", disconnects)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(retries) < 5 {
		t.Errorf("want attempts throughout the downtime, got %d", len(retries))
	}
	for _, d := range retries {
		if d > 5*time.Second {
			t.Errorf("a delay of %v, beyond the 5 s cap", d)
		}
	}
}

func TestWatchStartsASnapshotCutOffHalfWayOver(t *testing.T) {
	server := startServerAt(t, freePort(t), "--shutdown-grace", "1s")
	writer := server.client()
	const total = 4000
	for batch := range total / 1000 {
		ingest(t, writer, connects(fmt.Sprintf("d:acme:big%d:c", batch), 1000)...)
	}
	// Small HTTP/2 windows, so that little hides in transport buffers.
	c := server.client(connstate.WithDialOptions(
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10)))
	w := pull(t, c.Watch(watchContext(t), connstate.WatchOptions{
		IncludeSnapshot: true,
		InitialBackoff:  50 * time.Millisecond,
		MaxBackoff:      500 * time.Millisecond,
	}))
	for range 3 {
		if ev := w.event(); ev.Kind != connstate.EventSnapshot {
			t.Fatalf("want a snapshot record, got %v", ev.Kind)
		}
	}
	server.restart()
	before := 3
	ev := w.event()
	for ; ev.Kind == connstate.EventSnapshot; ev = w.event() {
		before++
	}
	if ev.Kind != connstate.EventResync || ev.Err == nil {
		t.Fatalf("after %d snapshot records: want a resync with its cause, got %v (%v)", before, ev.Kind, ev.Err)
	}
	if before >= total {
		t.Fatalf("the snapshot was not cut off (%d records)", before)
	}
	ids := map[string]bool{}
	count := 0
	for ev = w.event(); ev.Kind == connstate.EventSnapshot; ev = w.event() {
		ids[ev.Change.GetClientId()] = true
		count++
	}
	if ev.Kind != connstate.EventSnapshotComplete {
		t.Fatalf("want the snapshot's completion, got %v", ev.Kind)
	}
	if count != total || len(ids) != total {
		t.Fatalf("want the whole snapshot again (%d records), got %d (%d distinct)", total, count, len(ids))
	}
	rev := ingest(t, writer, connect("d:acme:after", 1, 0))
	if live := w.event(); live.Kind != connstate.EventChange || live.Revision != rev {
		t.Fatalf("want the live change %d, got %v %d", rev, live.Kind, live.Revision)
	}
}

func TestWatchEndsPromptlyWhenItsContextEnds(t *testing.T) {
	server := startServer(t)
	c := server.client()

	// Live: blocked in the stream.
	ctx, cancel := context.WithCancel(context.Background())
	col := collect(ctx, c, connstate.WatchOptions{})
	time.Sleep(200 * time.Millisecond) // let it block in the stream (no event is expected)
	started := time.Now()
	cancel()
	select {
	case <-col.done:
	case <-time.After(2 * time.Second):
		t.Fatal("the watch did not end within 2 s of its context")
	}
	if events, err := col.snapshot(); len(events) != 0 || status.Code(err) != codes.Canceled {
		t.Fatalf("want no event and the context's error last, got %d events, %v", len(events), err)
	}

	// During a backoff of 20 s.
	retried := make(chan struct{}, 1)
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	col = collect(ctx, c, connstate.WatchOptions{
		StartRevision:  connstate.Revision(0),
		InitialBackoff: 20 * time.Second,
		MaxBackoff:     20 * time.Second,
		OnRetry: func(error, uint64, time.Duration) {
			select {
			case retried <- struct{}{}:
			default:
			}
		},
	})
	server.stop()
	select {
	case <-retried:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not back off")
	}
	started = time.Now()
	cancel()
	select {
	case <-col.done:
	case <-time.After(2 * time.Second):
		t.Fatal("the watch did not end within 2 s of its context, during its backoff")
	}
	if d := time.Since(started); d > 2*time.Second {
		t.Fatalf("ended after %v", d)
	}
}

const (
	adminKey   = "sdk-test-admin"
	adminToken = "sdk-test-token-0123456789"
)

// createKey creates an API key with role through the REST API.
func createKey(t *testing.T, server *testServer, role string) (key, token string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"role": role, "description": "go sdk test"})
	req, err := http.NewRequest(http.MethodPost, "http://"+server.rest+"/api/v0002/apikeys", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(adminKey+":"+adminToken)))
	req.Header.Set("content-type", "application/json")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var created struct{ Key, Token string }
	if err := json.NewDecoder(resp.Body).Decode(&created); err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("create key: %d %v", resp.StatusCode, err)
	}
	return created.Key, created.Token
}

func TestAReadOnlyKeyReadsAndWatchesButCannotWrite(t *testing.T) {
	server := startServer(t, "--auth", "true", "--admin-key", adminKey, "--admin-token", adminToken)
	admin := server.client(connstate.WithAPIKey(adminKey, adminToken))
	ingest(t, admin, connects("d:acme:ro:r", 12)...)
	key, token := createKey(t, server, "read-only")
	reader := server.client(connstate.WithAPIKey(key, token))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if s, err := reader.Get(ctx, "d:acme:ro:r0"); err != nil || s.GetClientId() != "d:acme:ro:r0" {
		t.Fatalf("get: %v %v", s, err)
	}
	listed := 0
	for _, err := range reader.List(ctx, &pb.ListConnectionStatesRequest{Filter: &pb.ConnectionStateFilter{ClientIdPrefix: "d:acme:ro:"}}) {
		if err != nil {
			t.Fatal(err)
		}
		listed++
	}
	if listed != 12 {
		t.Fatalf("listed %d, want 12", listed)
	}
	// A watch sends the credentials too: r1, r10, r11, then complete.
	w := pull(t, reader.Watch(ctx, connstate.WatchOptions{
		IncludeSnapshot: true,
		Filter:          &pb.ConnectionStateFilter{ClientIdPrefix: "d:acme:ro:r1"},
	}))
	var kinds []connstate.EventKind
	for len(kinds) == 0 || kinds[len(kinds)-1] != connstate.EventSnapshotComplete {
		kinds = append(kinds, w.event().Kind)
	}
	if len(kinds) != 4 {
		t.Fatalf("want 3 snapshot records and the completion, got %v", kinds)
	}
	w.stop()
	if _, err := reader.Ingest(ctx, "sdk-test", connects("d:acme:ro:intruder", 1)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("ingest with a read-only key: want PERMISSION_DENIED, got %v", err)
	}
	if _, err := reader.Delete(ctx, "d:acme:ro:r0"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("delete with a read-only key: want PERMISSION_DENIED, got %v", err)
	}
	if _, err := admin.Get(ctx, "d:acme:ro:intruder0"); status.Code(err) != codes.NotFound {
		t.Fatalf("nothing was written: want NOT_FOUND, got %v", err)
	}
	anonymous := server.client()
	if _, err := anonymous.Get(ctx, "d:acme:ro:r0"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("without credentials: want UNAUTHENTICATED, got %v", err)
	}
}
