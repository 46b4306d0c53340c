package connstate_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/connstate/connstate/clients/go/connstate"
	pb "github.com/connstate/connstate/clients/go/connstatev1"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestGetReturnsTheStateRecord(t *testing.T) {
	server := startServer(t)
	c := server.client(connstate.WithAPIKey("a-key", "a-token"))
	ctx := testContext(t)
	rev := ingest(t, c, connect("d:acme:sensor:s1", 7, 0))

	state, err := c.Get(ctx, "d:acme:sensor:s1")
	if err != nil {
		t.Fatal(err)
	}
	if state.GetConnectionStatus() != pb.ConnectionStatus_CONNECTION_STATUS_CONNECTED {
		t.Errorf("status %v", state.GetConnectionStatus())
	}
	if state.GetClientType() != pb.ClientType_CLIENT_TYPE_DEVICE || state.GetOrgId() != "acme" ||
		state.GetTypeId() != "sensor" || state.GetDeviceId() != "s1" {
		t.Errorf("client id not parsed: %v", state)
	}
	if state.GetConnectionId() != 7 || state.GetRevision() != rev || state.GetBroker() != "sdk-test" {
		t.Errorf("record %v", state)
	}
	if state.GetClientAddr() != "10.1.2.3" || state.GetPort() != 40007 {
		t.Errorf("address %s:%d", state.GetClientAddr(), state.GetPort())
	}
}

func TestErrorsCarryTheGrpcCode(t *testing.T) {
	server := startServer(t)
	c := server.client()
	ctx := testContext(t)

	_, err := c.Get(ctx, "d:acme:sensor:nobody")
	if status.Code(err) != codes.NotFound || !connstate.IsNotFound(err) || connstate.IsInvalidArgument(err) {
		t.Fatalf("want NOT_FOUND, got %v", err)
	}
	_, err = c.Get(ctx, "")
	if status.Code(err) != codes.InvalidArgument || !connstate.IsInvalidArgument(err) || connstate.IsNotFound(err) {
		t.Fatalf("want INVALID_ARGUMENT, got %v", err)
	}
	// A bad batch names the event.
	_, err = c.Ingest(ctx, "sdk-test", []*pb.LifecycleEvent{connect("ok", 1, 0), connect("", 2, 0)})
	if !connstate.IsInvalidArgument(err) {
		t.Fatalf("want INVALID_ARGUMENT, got %v", err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "events[1].client_id") {
		t.Errorf("message does not name the field: %q", msg)
	}
	// Errors of iterators too.
	for _, err := range c.Logs(ctx, &pb.ListConnectionLogsRequest{PageSize: 5000}) {
		if !connstate.IsInvalidArgument(err) {
			t.Fatalf("want INVALID_ARGUMENT from Logs, got %v", err)
		}
	}
	_, err = c.Delete(ctx, "d:acme:sensor:nobody")
	if !connstate.IsNotFound(err) {
		t.Fatalf("want NOT_FOUND from Delete, got %v", err)
	}
}

func TestListFollowsPageTokens(t *testing.T) {
	server := startServer(t)
	c := server.client()
	ctx := testContext(t)
	ingest(t, c, connects("d:acme:pager:p", 30)...)
	ingest(t, c, connect("a:acme:app", 1, 0)) // not a match for the prefix

	// The iterator must ask for several pages of at most 7.
	pages := 0
	counting := grpc.OnFinish(func(error) { pages++ })
	seen := map[string]int{}
	var order []string
	for state, err := range c.List(ctx, &pb.ListConnectionStatesRequest{
		Filter:   &pb.ConnectionStateFilter{ClientIdPrefix: "d:acme:pager:"},
		PageSize: 7,
	}, counting) {
		if err != nil {
			t.Fatal(err)
		}
		seen[state.GetClientId()]++
		order = append(order, state.GetClientId())
	}
	if len(seen) != 30 || len(order) != 30 {
		t.Fatalf("want 30 distinct clients once each, got %d (%d items)", len(seen), len(order))
	}
	for i := range 30 {
		if n := seen[fmt.Sprintf("d:acme:pager:p%d", i)]; n != 1 {
			t.Errorf("p%d seen %d times", i, n)
		}
	}
	if pages < 5 {
		t.Errorf("30 records in pages of 7 took %d calls", pages)
	}
	for i := 1; i < len(order); i++ {
		if order[i-1] >= order[i] {
			t.Errorf("not in client id order: %s then %s", order[i-1], order[i])
		}
	}

	// Breaking out of the loop stops the iteration.
	n := 0
	for _, err := range c.List(ctx, &pb.ListConnectionStatesRequest{PageSize: 7}) {
		if err != nil {
			t.Fatal(err)
		}
		n++
		if n == 10 {
			break
		}
	}
	if n != 10 {
		t.Errorf("got %d", n)
	}
}

func TestLogsFollowPageTokensNewestFirst(t *testing.T) {
	server := startServer(t)
	c := server.client()
	ctx := testContext(t)
	const id = "d:acme:sensor:flaky"
	var events []*pb.LifecycleEvent
	for i := 1; i <= 6; i++ {
		events = append(events,
			connect(id, uint64(i), 10*i),
			disconnect(id, uint64(i), 10*i+5, pb.DisconnectCause_DISCONNECT_CAUSE_SOCKET_CLOSED))
	}
	ingest(t, c, events...)
	ingest(t, c, connect("d:acme:sensor:other", 1, 0))

	var entries []*pb.LogEntry
	for entry, err := range c.Logs(ctx, &pb.ListConnectionLogsRequest{ClientId: id, PageSize: 5}) {
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, entry)
	}
	if len(entries) != 12 {
		t.Fatalf("want 12 entries, got %d", len(entries))
	}
	for i, e := range entries {
		if e.GetClientId() != id {
			t.Errorf("entry of %s", e.GetClientId())
		}
		if i > 0 && entries[i-1].GetRevision() <= e.GetRevision() {
			t.Errorf("not newest first at %d", i)
		}
	}
	newest := entries[0]
	if newest.GetKind() != pb.LogKind_LOG_KIND_DISCONNECTED || newest.GetCloseCode() != 91 ||
		newest.GetInitiator() != pb.DisconnectInitiator_DISCONNECT_INITIATOR_NETWORK {
		t.Errorf("newest entry %v", newest)
	}
	// Only one kind.
	n := 0
	for entry, err := range c.Logs(ctx, &pb.ListConnectionLogsRequest{
		ClientId: id, Kinds: []pb.LogKind{pb.LogKind_LOG_KIND_CONNECTED}, PageSize: 4,
	}) {
		if err != nil {
			t.Fatal(err)
		}
		if entry.GetKind() != pb.LogKind_LOG_KIND_CONNECTED {
			t.Errorf("kind %v", entry.GetKind())
		}
		n++
	}
	if n != 6 {
		t.Errorf("want 6 connects, got %d", n)
	}
	// All clients.
	total := 0
	for _, err := range c.Logs(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		total++
	}
	if total != 13 {
		t.Errorf("want 13 entries of all clients, got %d", total)
	}
}

func TestDeleteAndSettings(t *testing.T) {
	server := startServer(t)
	c := server.client()
	ctx := testContext(t)
	rev := ingest(t, c, connect("d:acme:sensor:gone", 1, 0))
	deleted, err := c.Delete(ctx, "d:acme:sensor:gone")
	if err != nil {
		t.Fatal(err)
	}
	if deleted <= rev {
		t.Errorf("deletion revision %d not after %d", deleted, rev)
	}
	if _, err := c.Get(ctx, "d:acme:sensor:gone"); !connstate.IsNotFound(err) {
		t.Errorf("want NOT_FOUND after delete, got %v", err)
	}
	settings, err := c.UpdateSettings(ctx, &pb.Settings{LogMaxEntriesPerClient: 50}, []string{"log_max_entries_per_client"})
	if err != nil {
		t.Fatal(err)
	}
	if settings.GetLogMaxEntriesPerClient() != 50 || !settings.GetEnabled() {
		t.Errorf("settings %v", settings)
	}
	got, err := c.Settings(ctx)
	if err != nil || got.GetLogMaxEntriesPerClient() != 50 {
		t.Errorf("settings %v, %v", got, err)
	}
	current, err := c.CurrentRevision(ctx)
	if err != nil || current != deleted {
		t.Errorf("current revision %d (%v), want %d", current, err, deleted)
	}
}

// The API key and token travel as Basic authorization metadata. The server
// does not check them yet, so an in-process service records what it gets.
func TestCredentialsAreSentAsBasicAuthorization(t *testing.T) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	recorder := &authRecorder{}
	srv := grpc.NewServer()
	pb.RegisterConnectionStateServiceServer(srv, recorder)
	go srv.Serve(listener)
	t.Cleanup(srv.Stop)

	c, err := connstate.Dial(testContext(t), listener.Addr().String(), connstate.WithAPIKey("my-key", "my-token"), connstate.WithBlock())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Get(testContext(t), "x"); !connstate.IsNotFound(err) {
		t.Fatalf("want NOT_FOUND, got %v", err)
	}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("my-key:my-token"))
	if len(recorder.got) != 1 || recorder.got[0] != want {
		t.Fatalf("authorization %q, want %q", recorder.got, want)
	}
}

type authRecorder struct {
	pb.UnimplementedConnectionStateServiceServer
	got []string
}

func (r *authRecorder) GetConnectionState(ctx context.Context, _ *pb.GetConnectionStateRequest) (*pb.ConnectionState, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	r.got = md.Get("authorization")
	return nil, status.Error(codes.NotFound, "no such client")
}
