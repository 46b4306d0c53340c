package main

import (
	"bytes"
	"net"
	"testing"
	"time"
)

func TestPayloadRoundTrip(t *testing.T) {
	b := bytes.Repeat([]byte{'x'}, 64)
	want := payloadHeader{nonce: 0xdeadbeef, pub: 49, seq: 1<<40 + 7, sent: 12*time.Second + 345*time.Microsecond}
	want.put(b)
	got, ok := parsePayload(b)
	if !ok || got != want {
		t.Fatalf("got %+v %v, want %+v", got, ok, want)
	}
	if !bytes.Equal(b[minPayload:], bytes.Repeat([]byte{'x'}, 64-minPayload)) {
		t.Fatalf("filler overwritten: %q", b[minPayload:])
	}
	// The smallest payload carries every field; one byte less is refused.
	b = make([]byte, minPayload)
	want.put(b)
	if got, ok := parsePayload(b); !ok || got != want {
		t.Fatalf("minimum payload: got %+v %v", got, ok)
	}
	if _, ok := parsePayload(b[:minPayload-1]); ok {
		t.Fatal("short payload accepted")
	}
}

func TestSpreadAddrsRoundRobin(t *testing.T) {
	addrs, err := loopbackAddrs("pub-addrs", "127.0.0.1:1883, 127.0.0.1:1884")
	if err != nil || len(addrs) != 2 {
		t.Fatalf("%v %v", addrs, err)
	}
	got := spreadAddrs(addrs, 5)
	want := []string{"127.0.0.1:1883", "127.0.0.1:1884", "127.0.0.1:1883", "127.0.0.1:1884", "127.0.0.1:1883"}
	for i := range want {
		if got[i].String() != want[i] {
			t.Fatalf("publisher %d on %s, want %s", i, got[i], want[i])
		}
	}
	one := spreadAddrs([]*net.TCPAddr{addrs[1]}, 3)
	for i, a := range one {
		if a != addrs[1] {
			t.Fatalf("publisher %d on %s", i, a)
		}
	}
}

func TestAddrListsLoopbackOnly(t *testing.T) {
	if addrs, err := loopbackAddrs("pub-addrs", ""); err != nil || addrs != nil {
		t.Fatalf("empty list: %v %v", addrs, err)
	}
	_, err := loopbackAddrs("pub-addrs", "127.0.0.1:1883,192.0.2.1:1883")
	if err == nil || err.Error() != "-pub-addrs 192.0.2.1:1883: only loopback addresses are allowed" {
		t.Fatalf("non-loopback publisher broker: %v", err)
	}
	if _, err := loopbackAddrs("pub-addrs", "127.0.0.1:1883,"); err == nil {
		t.Fatal("empty list item accepted")
	}
	if _, err := loopbackAddr("sub-addr", "127.0.0.1"); err == nil {
		t.Fatal("address without a port accepted")
	}
}

func TestWindowLatencies(t *testing.T) {
	samples := []latencySample{
		{sent: 1 * time.Second, took: 9 * time.Millisecond}, // warm-up
		{sent: 2 * time.Second, took: 5 * time.Millisecond}, // first of the window
		{sent: 3 * time.Second, took: 1 * time.Millisecond},
		{sent: 4 * time.Second, took: 3 * time.Millisecond},
		{sent: 12 * time.Second, took: 7 * time.Millisecond}, // after the window
	}
	got := windowLatencies(samples, 2*time.Second, 12*time.Second)
	want := []time.Duration{time.Millisecond, 3 * time.Millisecond, 5 * time.Millisecond}
	if len(got) != len(want) {
		t.Fatalf("got %v want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v want %v", got, want)
		}
	}
	if p := percentile(got, 99); p != 5*time.Millisecond {
		t.Fatalf("p99 %v", p)
	}
}
