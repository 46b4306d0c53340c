package main

import (
	"bytes"
	"testing"
)

func TestRemainingLength(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, 16383, 16384, 2097151, 2097152} {
		b := appendRemaining([]byte{typePingresp << 4}, n)
		b = append(b, make([]byte, n)...)
		p, err := readPacket(bytes.NewReader(b), nil)
		if err != nil || len(p.body) != n {
			t.Fatalf("n=%d: got %d, %v", n, len(p.body), err)
		}
	}
}

func TestRemainingLengthLimit(t *testing.T) {
	if got := appendRemaining(nil, maxRemaining); !bytes.Equal(got, []byte{0xff, 0xff, 0xff, 0x7f}) {
		t.Fatalf("got %x", got)
	}
	// A fifth length byte is malformed.
	_, err := readPacket(bytes.NewReader([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}), nil)
	if err == nil {
		t.Fatal("five-byte remaining length accepted")
	}
}

func TestConnectBytes(t *testing.T) {
	got := connectPacket("ab", true, 60)
	want := []byte{0x10, 14, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 2, 'a', 'b'}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %x want %x", got, want)
	}
}

func TestPublishRoundTrip(t *testing.T) {
	for _, qos := range []byte{0, 1} {
		b := appendPublish(nil, "bench/7/data", qos, 513, []byte("hello"))
		p, err := readPacket(bytes.NewReader(b), nil)
		if err != nil {
			t.Fatal(err)
		}
		topic, q, id, payload, err := publishFields(p)
		wantID := uint16(0)
		if qos == 1 {
			wantID = 513
		}
		if err != nil || string(topic) != "bench/7/data" || q != qos || id != wantID || string(payload) != "hello" {
			t.Fatalf("qos %d: %q %d %d %q %v", qos, topic, q, id, payload, err)
		}
	}
}

func TestSubscribeAndPuback(t *testing.T) {
	want := []byte{0x82, 17, 0, 1, 0, 12, 'b', 'e', 'n', 'c', 'h', '/', '+', '/', 'd', 'a', 't', 'a', 1}
	if got := subscribePacket(1, "bench/+/data", 1); !bytes.Equal(got, want) {
		t.Fatalf("got %x want %x", got, want)
	}
	if got := appendPuback(nil, 0x0102); !bytes.Equal(got, []byte{0x40, 2, 1, 2}) {
		t.Fatalf("puback %x", got)
	}
}

func TestSourceIPsLoopbackOnly(t *testing.T) {
	ips, err := parseSourceIPs("127.0.0.2-127.0.0.9")
	if err != nil || len(ips) != 8 || ips[7].String() != "127.0.0.9" {
		t.Fatalf("%v %v", ips, err)
	}
	if _, err := parseSourceIPs("10.0.0.1"); err == nil {
		t.Fatal("non-loopback source accepted")
	}
	if _, err := loopbackAddr("addr", "192.0.2.1:1883"); err == nil {
		t.Fatal("non-loopback broker accepted")
	}
}
