package connstate_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/connstate/connstate/clients/go/connstate"
	pb "github.com/connstate/connstate/clients/go/connstatev1"
)

// serverBinary is $CONNSTATE_BIN or <repo>/target/debug/connstate.
func serverBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("CONNSTATE_BIN"); bin != "" {
		return bin
	}
	bin, err := filepath.Abs(filepath.Join("..", "..", "..", "target", "debug", "connstate"))
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// testServer is a real connstate process on a loopback port.
type testServer struct {
	t       *testing.T
	addr    string
	rest    string // the REST gateway's host:port
	dataDir string
	args    []string
	cmd     *exec.Cmd
	stderr  *syncBuffer
	done    chan error
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startServer starts a server on a fresh data folder; args are extra flags.
func startServer(t *testing.T, args ...string) *testServer {
	t.Helper()
	return startServerAt(t, "127.0.0.1:0", args...)
}

// startServerAt starts a server on a fixed address (see freePort), so
// that it can be restarted on the same port.
func startServerAt(t *testing.T, addr string, args ...string) *testServer {
	t.Helper()
	s := &testServer{t: t, dataDir: t.TempDir(), args: args, addr: addr}
	s.start()
	t.Cleanup(func() {
		if s.cmd != nil {
			s.stop()
		}
	})
	return s
}

// freePort picks a loopback port that is free now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func (s *testServer) start() {
	t := s.t
	t.Helper()
	// The REST listener is not used here; port 0 keeps tests from
	// colliding on its default port.
	args := append([]string{"serve", "--grpc-listen", s.addr, "--rest-listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0", "--mqtt-ws-listen", "127.0.0.1:0", "--data-dir", s.dataDir}, s.args...)
	cmd := exec.Command(serverBinary(t), args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s.stderr = &syncBuffer{}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	lines := make(chan string, 2)
	go func() {
		reader := bufio.NewReader(stdout)
		for range 2 {
			line, _ := reader.ReadString('\n')
			lines <- line
		}
		_, _ = reader.WriteTo(discard{})
	}()
	s.done = make(chan error, 1)
	select {
	case line := <-lines:
		const prefix = "connstate grpc listening on "
		if !strings.HasPrefix(line, prefix) {
			_ = cmd.Process.Kill()
			t.Fatalf("unexpected first line %q; stderr:\n%s", line, s.stderr)
		}
		s.addr = strings.TrimSpace(strings.TrimPrefix(line, prefix))
		s.rest = strings.TrimSpace(strings.TrimPrefix(<-lines, "connstate rest listening on "))
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("server did not start within 20 s; stderr:\n%s", s.stderr)
	}
	s.cmd = cmd
	go func() { s.done <- cmd.Wait() }()
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// stop sends SIGTERM and waits (bounded) for the process to end.
func (s *testServer) stop() {
	s.t.Helper()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		s.t.Errorf("server did not stop within 20 s; stderr:\n%s", s.stderr)
	}
	s.cmd = nil
}

// kill sends SIGKILL: the server gets no chance to close anything.
func (s *testServer) kill() {
	s.t.Helper()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// restart stops the server and starts it again on the same address and data
// folder; extra replaces the extra flags when given.
func (s *testServer) restart(extra ...string) {
	s.t.Helper()
	s.stop()
	if extra != nil {
		s.args = extra
	}
	s.start()
}

// client makes a client of the server (connstate.New); the client is closed at the end of the test.
func (s *testServer) client(opts ...connstate.Option) *connstate.Client {
	s.t.Helper()
	c, err := connstate.New(s.addr, opts...)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

// base is a fixed time one hour before the tests started: well inside every
// retention period.
var base = time.Now().Add(-time.Hour).Truncate(time.Second)

func info(port uint32) *pb.ConnectionInfo {
	return &pb.ConnectionInfo{
		ClientAddr:       "10.1.2.3",
		Port:             port,
		Username:         "use-token-auth",
		Protocol:         pb.MqttProtocol_MQTT_PROTOCOL_V3_1_1,
		KeepAliveSeconds: 60,
		CleanSession:     true,
	}
}

func connect(id string, conn uint64, secs int) *pb.LifecycleEvent {
	return connstate.ConnectedEvent(id, conn, base.Add(time.Duration(secs)*time.Second), info(40000+uint32(conn)))
}

func disconnect(id string, conn uint64, secs int, cause pb.DisconnectCause) *pb.LifecycleEvent {
	return connstate.DisconnectedEvent(id, conn, base.Add(time.Duration(secs)*time.Second), cause)
}

// connects builds connects of prefix0..prefix(n-1).
func connects(prefix string, n int) []*pb.LifecycleEvent {
	events := make([]*pb.LifecycleEvent, n)
	for i := range events {
		events[i] = connect(fmt.Sprintf("%s%d", prefix, i), uint64(i+1), i)
	}
	return events
}

// lost builds the disconnects of prefix0..prefix(n-1) that a broker reports
// when it loses their connections (the connections of connects).
func lost(prefix string, n int) []*pb.LifecycleEvent {
	events := make([]*pb.LifecycleEvent, n)
	for i := range events {
		events[i] = disconnect(fmt.Sprintf("%s%d", prefix, i), uint64(i+1), 100+i, pb.DisconnectCause_DISCONNECT_CAUSE_SOCKET_CLOSED)
	}
	return events
}

// ingest records events as broker "sdk-test" and returns the revision.
func ingest(t *testing.T, c *connstate.Client, events ...*pb.LifecycleEvent) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Ingest(ctx, "sdk-test", events)
	if err != nil {
		t.Fatalf("ingest: %v", err)
	}
	return resp.GetRevision()
}

// eventually polls cond every 20 ms until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
