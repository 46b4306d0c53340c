package connstate_test

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/connstate/connstate/clients/go/connstate"
)

// Two single servers do not share revisions; server B starts on a copy of
// A's data folder taken while A was stopped cleanly, so that both hold the
// same revisions. A real cluster's failover is tested once the cluster
// exists (clients/CONTRACT.md, "Several addresses").
func TestWatchAndReadsMoveToTheNextAddress(t *testing.T) {
	a := startServerAt(t, freePort(t), "--shutdown-grace", "1s")
	first := ingest(t, a.client(), connects("d:acme:fo:a", 30)...)
	a.stop()
	bDir := t.TempDir()
	if out, err := exec.Command("cp", "-a", a.dataDir+"/.", bDir).CombinedOutput(); err != nil {
		t.Fatalf("copy A's data: %v %s", err, out)
	}
	a.start()
	b := &testServer{t: t, dataDir: bDir, addr: freePort(t)}
	b.start()
	t.Cleanup(func() {
		if b.cmd != nil {
			b.stop()
		}
	})

	both := server(t, a.addr+","+b.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := pull(t, both.Watch(ctx, connstate.WatchOptions{
		StartRevision:  connstate.Revision(0),
		InitialBackoff: 50 * time.Millisecond,
		MaxBackoff:     500 * time.Millisecond,
	}))
	got := w.changesThrough(first)

	a.kill() // never comes back
	// Reads are retried on the next address.
	if s, err := both.Get(ctx, "d:acme:fo:a7"); err != nil || s.GetClientId() != "d:acme:fo:a7" {
		t.Fatalf("get after A went away: %v %v", s, err)
	}
	// Only B has these; the watch gets them there, right after the last
	// revision it delivered from A.
	rev := ingest(t, b.client(), lost("d:acme:fo:a", 30)...)
	got = append(got, w.changesThrough(rev)...)
	assertContinuous(t, got, 1, rev)
}

func server(t *testing.T, addresses string) *connstate.Client {
	t.Helper()
	c, err := connstate.New(addresses)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
