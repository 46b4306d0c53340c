package main

// MQTT 3.1.1 packets, written by hand: only what the load generator sends and
// reads (CONNECT/CONNACK, PUBLISH QoS 0/1, PUBACK, SUBSCRIBE/SUBACK,
// PINGREQ/PINGRESP, DISCONNECT). Spec: MQTT 3.1.1, OASIS standard, §2 and §3.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Control packet types (high nibble of the first byte).
const (
	typeConnect    = 1
	typeConnack    = 2
	typePublish    = 3
	typePuback     = 4
	typeSubscribe  = 8
	typeSuback     = 9
	typePingreq    = 12
	typePingresp   = 13
	typeDisconnect = 14
)

// maxRemaining is the largest remaining length the 4-byte encoding can carry.
const maxRemaining = 268_435_455

var (
	pingreqPacket    = []byte{typePingreq << 4, 0}
	disconnectPacket = []byte{typeDisconnect << 4, 0}
)

// appendRemaining appends the variable-length "remaining length" (§2.2.3).
func appendRemaining(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// connectPacket builds a CONNECT with protocol level 4 (3.1.1), no will,
// no user name or password.
func connectPacket(clientID string, cleanSession bool, keepAlive uint16) []byte {
	var flags byte
	if cleanSession {
		flags |= 0x02
	}
	rem := 10 + 2 + len(clientID)
	b := make([]byte, 0, 5+rem)
	b = append(b, typeConnect<<4)
	b = appendRemaining(b, rem)
	b = appendString(b, "MQTT")
	b = append(b, 4, flags)
	b = binary.BigEndian.AppendUint16(b, keepAlive)
	return appendString(b, clientID)
}

// appendPublish appends a PUBLISH (no DUP, no RETAIN); packetID is only
// written for QoS > 0.
func appendPublish(b []byte, topic string, qos byte, packetID uint16, payload []byte) []byte {
	rem := 2 + len(topic) + len(payload)
	if qos > 0 {
		rem += 2
	}
	b = append(b, typePublish<<4|qos<<1)
	b = appendRemaining(b, rem)
	b = appendString(b, topic)
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, packetID)
	}
	return append(b, payload...)
}

func appendPuback(b []byte, packetID uint16) []byte {
	return append(b, typePuback<<4, 2, byte(packetID>>8), byte(packetID))
}

// subscribePacket builds a SUBSCRIBE for one filter (fixed-header flags 0010).
func subscribePacket(packetID uint16, filter string, qos byte) []byte {
	rem := 2 + 2 + len(filter) + 1
	b := make([]byte, 0, 5+rem)
	b = append(b, typeSubscribe<<4|0x02)
	b = appendRemaining(b, rem)
	b = binary.BigEndian.AppendUint16(b, packetID)
	b = appendString(b, filter)
	return append(b, qos)
}

// packet is one decoded control packet: its first byte and its body (the
// bytes after the remaining length).
type packet struct {
	header byte
	body   []byte
}

func (p packet) kind() byte  { return p.header >> 4 }
func (p packet) flags() byte { return p.header & 0x0f }

var errMalformed = errors.New("malformed packet")

// readPacket reads exactly one packet from r. buf is reused for the body when
// it is large enough. It reads the fixed header byte by byte after the first
// two bytes, so it never consumes bytes of the next packet: safe on a raw
// net.Conn as well as on a bufio.Reader.
func readPacket(r io.Reader, buf []byte) (packet, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return packet{}, err
	}
	n := int(hdr[1] & 0x7f)
	more := hdr[1]&0x80 != 0
	for mult := 128; more; mult *= 128 {
		if mult > 128*128*128 {
			return packet{}, fmt.Errorf("%w: remaining length longer than 4 bytes", errMalformed)
		}
		var d [1]byte
		if _, err := io.ReadFull(r, d[:]); err != nil {
			return packet{}, err
		}
		n += int(d[0]&0x7f) * mult
		more = d[0]&0x80 != 0
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	body := buf[:n]
	if _, err := io.ReadFull(r, body); err != nil {
		return packet{}, err
	}
	return packet{header: hdr[0], body: body}, nil
}

// connackCode checks p is a CONNACK and returns its return code (0 = accepted).
func connackCode(p packet) (byte, error) {
	if p.kind() != typeConnack || len(p.body) != 2 {
		return 0, fmt.Errorf("%w: expected CONNACK, got type %d length %d", errMalformed, p.kind(), len(p.body))
	}
	return p.body[1], nil
}

// publishFields splits a PUBLISH body into topic, packet id (0 for QoS 0) and
// payload. The returned slices alias p.body.
func publishFields(p packet) (topic []byte, qos byte, packetID uint16, payload []byte, err error) {
	qos = (p.flags() >> 1) & 3
	b := p.body
	if len(b) < 2 {
		return nil, 0, 0, nil, errMalformed
	}
	tl := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < tl {
		return nil, 0, 0, nil, errMalformed
	}
	topic, b = b[:tl], b[tl:]
	if qos > 0 {
		if len(b) < 2 {
			return nil, 0, 0, nil, errMalformed
		}
		packetID = binary.BigEndian.Uint16(b)
		b = b[2:]
	}
	return topic, qos, packetID, b, nil
}

// ackID returns the packet id of a PUBACK or SUBACK.
func ackID(p packet) (uint16, error) {
	if len(p.body) < 2 {
		return 0, errMalformed
	}
	return binary.BigEndian.Uint16(p.body), nil
}
