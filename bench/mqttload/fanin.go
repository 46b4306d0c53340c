package main

// The fan-in scenario: N publishers, each on its own topic bench/<i>/data,
// one subscriber on bench/+/data. Every payload carries a run nonce, the
// publisher's index and a sequence number, so the subscriber counts losses,
// duplicates and reordering exactly and ignores leftovers of an earlier run,
// and its send time, so the subscriber measures publish → delivery latency.
//
// Publishers and subscriber may use different brokers: the publishers are
// spread round-robin over -pub-addrs, the subscriber uses -sub-addr (both
// default to -addr), e.g. publishers on two nodes of a cluster and the
// subscriber on a third. All clients run in this process, so one monotonic
// clock times both ends.
//
// Flow control: QoS 1 publishers keep at most -window PUBLISHes without
// PUBACK. Independently, every publisher keeps at most -e2e messages that the
// subscriber has not received yet (end to end, both QoS). Without that bound a
// QoS 0 publisher fills the loopback socket buffers (tens of MB each), the
// broker works through stale data long after the run, and "throughput" just
// measures kernel buffering.

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The payload: nonce (4 bytes), publisher index (4), sequence number (8),
// send time (8: nanoseconds since the run's start, monotonic clock), then
// filler up to -payload bytes.
const minPayload = 24

// payloadHeader is what the subscriber reads from each payload.
type payloadHeader struct {
	nonce uint32
	pub   uint32
	seq   uint64
	sent  time.Duration // since the run's start
}

func (h payloadHeader) put(b []byte) {
	binary.BigEndian.PutUint32(b, h.nonce)
	binary.BigEndian.PutUint32(b[4:], h.pub)
	binary.BigEndian.PutUint64(b[8:], h.seq)
	binary.BigEndian.PutUint64(b[16:], uint64(h.sent))
}

func parsePayload(b []byte) (payloadHeader, bool) {
	if len(b) < minPayload {
		return payloadHeader{}, false
	}
	return payloadHeader{
		nonce: binary.BigEndian.Uint32(b),
		pub:   binary.BigEndian.Uint32(b[4:]),
		seq:   binary.BigEndian.Uint64(b[8:]),
		sent:  time.Duration(binary.BigEndian.Uint64(b[16:])),
	}, true
}

// spreadAddrs gives publisher i the address addrs[i mod len(addrs)].
func spreadAddrs(addrs []*net.TCPAddr, publishers int) []*net.TCPAddr {
	out := make([]*net.TCPAddr, publishers)
	for i := range out {
		out[i] = addrs[i%len(addrs)]
	}
	return out
}

type faninOptions struct {
	pubAddrs   []*net.TCPAddr // publisher i uses pubAddrs[i mod len]
	subAddr    *net.TCPAddr
	publishers int
	qos        int
	duration   time.Duration
	warmup     time.Duration
	drain      time.Duration
	payload    int
	window     int
	e2e        int
	stall      time.Duration
	rate       int
	filter     string
	pid        int
	idPrefix   string
	timeout    time.Duration
}

type faninResult struct {
	Scenario        string   `json:"scenario"`
	QoS             int      `json:"qos"`
	GrantedQoS      int      `json:"granted_qos"`
	Publishers      int      `json:"publishers"`
	PayloadBytes    int      `json:"payload_bytes"`
	PubAddrs        []string `json:"pub_addrs"`
	SubAddr         string   `json:"sub_addr"`
	Window          int      `json:"window,omitempty"`
	E2EWindow       int      `json:"e2e_window"`
	Stalls          int64    `json:"e2e_stalls"`
	Stale           int64    `json:"stale_ignored"`
	OfferedRate     int      `json:"offered_rate,omitempty"`
	WarmupSeconds   float64  `json:"warmup_seconds"`
	MeasuredSeconds float64  `json:"measured_seconds"`
	ReceivedPerS    float64  `json:"received_per_s"`
	PublishedPerS   float64  `json:"published_per_s"`
	PublishedTotal  int64    `json:"published_total"`
	ReceivedTotal   int64    `json:"received_total"`
	LatencySamples  int      `json:"latency_samples"`
	LatencyP50      float64  `json:"latency_p50_ms"`
	LatencyP99      float64  `json:"latency_p99_ms"`
	LatencyMax      float64  `json:"latency_max_ms"`
	Lost            int64    `json:"lost"`
	Gaps            int64    `json:"gaps"`
	Duplicates      int64    `json:"duplicates"`
	Unacked         int64    `json:"unacked_at_end"`
	DrainSeconds    float64  `json:"drain_seconds"`
	Errors          int      `json:"errors"`
	RSSBeforeKiB    int64    `json:"rss_before_kib"`
	RSSEndKiB       int64    `json:"rss_end_kib"`
}

func runFanin(args []string) error {
	fs := flag.NewFlagSet("fanin", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:1883", "broker address (loopback only)")
	pubAddrs := fs.String("pub-addrs", "", "publishers' brokers, host:port[,host:port...], publishers spread round-robin (default: -addr)")
	subAddr := fs.String("sub-addr", "", "subscriber's broker, host:port (default: -addr)")
	o := faninOptions{}
	fs.IntVar(&o.publishers, "publishers", 100, "publishing clients")
	fs.IntVar(&o.qos, "qos", 0, "QoS of publish and subscription: 0 or 1")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "measured time (after the warm-up)")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "publish this long before measuring")
	fs.DurationVar(&o.drain, "drain", 10*time.Second, "after publishing stops, wait at most this long for the last deliveries")
	fs.IntVar(&o.payload, "payload", 64, "payload bytes (at least 24: run nonce, publisher index, sequence number, send time)")
	fs.IntVar(&o.window, "window", 32, "QoS 1: unacknowledged PUBLISHes per publisher")
	fs.IntVar(&o.e2e, "e2e", 8, "messages per publisher sent but not yet received by the subscriber (0: no limit)")
	fs.DurationVar(&o.stall, "stall", 500*time.Millisecond, "-e2e wait after which a publisher counts its unreceived messages as lost and goes on")
	fs.IntVar(&o.rate, "rate", 0, "total offered messages/s over all publishers (0: as fast as the broker takes them)")
	fs.StringVar(&o.filter, "filter", "bench/+/data", "subscription filter (must match bench/<i>/data)")
	fs.IntVar(&o.pid, "pid", 0, "broker pid: read its VmRSS from /proc (0: skip)")
	fs.StringVar(&o.idPrefix, "id-prefix", fmt.Sprintf("mqttload-fanin-%d", os.Getpid()), "client id prefix")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Second, "connect and subscribe timeout")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fallback, err := loopbackAddr("addr", *addr)
	if err != nil {
		return err
	}
	if o.pubAddrs, err = loopbackAddrs("pub-addrs", *pubAddrs); err != nil {
		return err
	}
	if len(o.pubAddrs) == 0 {
		o.pubAddrs = []*net.TCPAddr{fallback}
	}
	o.subAddr = fallback
	if *subAddr != "" {
		if o.subAddr, err = loopbackAddr("sub-addr", *subAddr); err != nil {
			return err
		}
	}
	switch {
	case o.qos != 0 && o.qos != 1:
		return fmt.Errorf("-qos must be 0 or 1")
	case o.publishers < 1 || o.payload < minPayload || o.payload > 1<<20:
		return fmt.Errorf("need -publishers ≥ 1 and %d ≤ -payload ≤ 1 MiB", minPayload)
	case o.e2e < 0:
		return fmt.Errorf("-e2e must be ≥ 0")
	case o.qos == 1 && (o.window < 1 || o.window > 60000):
		return fmt.Errorf("-window must be in 1..60000")
	case o.duration <= 0 || o.warmup < 0:
		return fmt.Errorf("bad -duration or -warmup")
	}
	return fanin(o)
}

// session opens a connection to addr and completes CONNECT/CONNACK.
func session(o faninOptions, addr *net.TCPAddr, id string) (net.Conn, error) {
	conn, err := net.DialTimeout("tcp", addr.String(), o.timeout)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(o.timeout))
	if _, err := conn.Write(connectPacket(id, true, 60)); err != nil {
		conn.Close()
		return nil, err
	}
	p, err := readPacket(conn, nil)
	if err == nil {
		var code byte
		if code, err = connackCode(p); err == nil && code != 0 {
			err = fmt.Errorf("%s: CONNACK return code %d", id, code)
		}
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// subscriber is the one receiving client. Only its reader goroutine touches
// the per-publisher sequence state; totals are atomics for the main loop.
type subscriber struct {
	conn     net.Conn
	wmu      sync.Mutex // guards w: the reader (PUBACKs) and the pinger
	w        *bufio.Writer
	nonce    uint32
	start    time.Time // the run's start: send times count from it
	pubs     []*publisher
	lastSeq  []uint64 // per publisher; sequence numbers start at 1
	stale    atomic.Int64
	received atomic.Int64
	unique   atomic.Int64
	gaps     atomic.Int64
	dups     atomic.Int64
	errs     atomic.Int64
	done     chan struct{}
	// Publish → delivery of every first delivery (not of duplicates), with
	// its send time, to keep those sent in the measured window at the end.
	latencies []latencySample
}

type latencySample struct {
	sent, took time.Duration
}

func (s *subscriber) read(qos byte) {
	defer close(s.done)
	r := bufio.NewReaderSize(s.conn, 256<<10)
	buf := make([]byte, 64<<10)
	for {
		p, err := readPacket(r, buf)
		if err != nil {
			return // closed at the end of the run, or by the broker
		}
		now := time.Since(s.start)
		switch p.kind() {
		case typePublish:
			_, pq, id, payload, err := publishFields(p)
			h, ok := parsePayload(payload)
			if err != nil || !ok {
				s.errs.Add(1)
				continue
			}
			if pq > 0 {
				s.wmu.Lock()
				_, _ = s.w.Write(appendPuback(nil, id))
				s.wmu.Unlock()
			}
			if h.nonce != s.nonce {
				s.stale.Add(1)
				continue
			}
			if s.count(h.pub, h.seq) {
				s.latencies = append(s.latencies, latencySample{sent: h.sent, took: now - h.sent})
			}
		case typePingresp:
		default:
			s.errs.Add(1)
		}
		// Batch acknowledgements: flush only when nothing more is buffered.
		if qos > 0 && r.Buffered() == 0 {
			s.wmu.Lock()
			_ = s.w.Flush()
			s.wmu.Unlock()
		}
	}
}

// count records one delivery; it reports whether it was the first of its
// message.
func (s *subscriber) count(pub uint32, seq uint64) bool {
	s.received.Add(1)
	if int(pub) >= len(s.lastSeq) {
		s.errs.Add(1)
		return false
	}
	last := s.lastSeq[pub]
	switch {
	case seq <= last:
		s.dups.Add(1)
		return false
	case seq > last+1:
		s.gaps.Add(int64(seq - last - 1))
	}
	s.lastSeq[pub] = seq
	s.unique.Add(1)
	if pb := s.pubs[pub]; pb != nil {
		pb.delivered.Store(seq)
		if pb.waiting.Load() {
			select {
			case pb.wake <- struct{}{}:
			default:
			}
		}
	}
	return true
}

func (s *subscriber) ping() {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, _ = s.w.Write(pingreqPacket)
	_ = s.w.Flush()
}

// publisher is one publishing client.
type publisher struct {
	index   uint32
	conn    net.Conn
	sent    atomic.Int64 // QoS 0: written; QoS 1: acknowledged by the broker
	written atomic.Int64
	errs    atomic.Int64
	window  chan struct{} // QoS 1: one token per unacknowledged PUBLISH
	pending []bool        // QoS 1: by packet id
	pmu     sync.Mutex
	acksIn  chan struct{} // closed when the PUBACK reader ends

	// End-to-end window: the subscriber stores the highest sequence number it
	// got and wakes the publisher if it waits.
	delivered atomic.Uint64
	waiting   atomic.Bool
	wake      chan struct{}
	stalls    atomic.Int64
}

func fanin(o faninOptions) error {
	res := faninResult{Scenario: "fanin", QoS: o.qos, Publishers: o.publishers, PayloadBytes: o.payload, OfferedRate: o.rate}
	if o.qos == 1 {
		res.Window = o.window
	}
	res.E2EWindow = o.e2e
	res.SubAddr = o.subAddr.String()
	for _, a := range o.pubAddrs {
		res.PubAddrs = append(res.PubAddrs, a.String())
	}
	raiseFileLimit(uint64(o.publishers) + 1024)
	var err error
	if res.RSSBeforeKiB, err = rssKiB(o.pid); err != nil {
		return fmt.Errorf("broker RSS: %w", err)
	}

	// Subscriber first, so that no message is published before it listens.
	start := time.Now()
	conn, err := session(o, o.subAddr, o.idPrefix+"-sub")
	if err != nil {
		return fmt.Errorf("subscriber: %w", err)
	}
	nonce := uint32(time.Now().UnixNano()) ^ uint32(os.Getpid())<<16
	sub := &subscriber{conn: conn, w: bufio.NewWriterSize(conn, 16<<10), nonce: nonce, start: start,
		pubs: make([]*publisher, o.publishers), lastSeq: make([]uint64, o.publishers), done: make(chan struct{})}
	_ = conn.SetDeadline(time.Now().Add(o.timeout))
	if _, err := conn.Write(subscribePacket(1, o.filter, byte(o.qos))); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	p, err := readPacket(conn, nil)
	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if id, err := ackID(p); p.kind() != typeSuback || err != nil || id != 1 || len(p.body) != 3 {
		return fmt.Errorf("subscribe: expected SUBACK for packet 1, got type %d body %x", p.kind(), p.body)
	}
	if p.body[2] == 0x80 {
		return fmt.Errorf("subscribe: broker refused %q (0x80)", o.filter)
	}
	res.GrantedQoS = int(p.body[2])
	_ = conn.SetDeadline(time.Time{})
	pubs := sub.pubs
	for i, addr := range spreadAddrs(o.pubAddrs, o.publishers) {
		c, err := session(o, addr, fmt.Sprintf("%s-pub-%d", o.idPrefix, i))
		if err != nil {
			return fmt.Errorf("publisher %d (%s): %w", i, addr, err)
		}
		pubs[i] = &publisher{index: uint32(i), conn: c, acksIn: make(chan struct{}), wake: make(chan struct{}, 1)}
		if o.qos == 1 {
			pubs[i].window = make(chan struct{}, o.window)
			pubs[i].pending = make([]bool, 1<<16)
			go pubs[i].readAcks()
		} else {
			go pubs[i].drainReads()
		}
	}

	go sub.read(byte(o.qos))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, pb := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pb.publish(o, nonce, start, stop)
		}()
	}
	pingStop := make(chan struct{})
	go func() {
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-pingStop:
				return
			case <-t.C:
				sub.ping()
			}
		}
	}()
	defer close(pingStop)

	sum := func() (pub, recv int64) {
		for _, pb := range pubs {
			pub += pb.sent.Load()
		}
		return pub, sub.received.Load()
	}
	time.Sleep(o.warmup)
	pub0, recv0 := sum()
	t0 := time.Now()
	time.Sleep(o.duration)
	pub1, recv1 := sum()
	measured := time.Since(t0)
	// Latency counts the messages sent in the measured window.
	windowFrom, windowTo := t0.Sub(start), t0.Add(measured).Sub(start)
	close(stop)
	wg.Wait()

	// Drain: QoS 1 publishers wait for their last PUBACKs, the subscriber for
	// the last deliveries; stop early when nothing moves for 2 s.
	drainStart := time.Now()
	lastProgress, lastSeen := drainStart, int64(-1)
	for time.Since(drainStart) < o.drain {
		published, _ := sum()
		var unacked int64
		for _, pb := range pubs {
			unacked += pb.written.Load() - pb.sent.Load()
		}
		got := sub.unique.Load()
		if got >= published && unacked == 0 {
			break
		}
		if seen := got + published; seen != lastSeen {
			lastSeen, lastProgress = seen, time.Now()
		} else if time.Since(lastProgress) > 2*time.Second {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	res.DrainSeconds = round(time.Since(drainStart).Seconds(), 2)

	for _, pb := range pubs {
		res.PublishedTotal += pb.sent.Load()
		res.Unacked += pb.written.Load() - pb.sent.Load()
		res.Errors += int(pb.errs.Load())
		res.Stalls += pb.stalls.Load()
		_ = pb.conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = pb.conn.Write(disconnectPacket)
		pb.conn.Close()
	}
	sub.wmu.Lock()
	_ = sub.w.Flush()
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = conn.Write(disconnectPacket)
	sub.wmu.Unlock()
	conn.Close()
	<-sub.done

	res.ReceivedTotal = sub.received.Load()
	lat := windowLatencies(sub.latencies, windowFrom, windowTo)
	res.LatencySamples = len(lat)
	res.LatencyP50 = ms(percentile(lat, 50))
	res.LatencyP99 = ms(percentile(lat, 99))
	if len(lat) > 0 {
		res.LatencyMax = ms(lat[len(lat)-1])
	}
	res.Lost = max(res.PublishedTotal-sub.unique.Load(), 0)
	res.Gaps = sub.gaps.Load()
	res.Duplicates = sub.dups.Load()
	res.Errors += int(sub.errs.Load())
	res.Stale = sub.stale.Load()
	res.WarmupSeconds = o.warmup.Seconds()
	res.MeasuredSeconds = round(measured.Seconds(), 3)
	res.ReceivedPerS = round(float64(recv1-recv0)/measured.Seconds(), 0)
	res.PublishedPerS = round(float64(pub1-pub0)/measured.Seconds(), 0)
	if res.RSSEndKiB, err = rssKiB(o.pid); err != nil {
		return fmt.Errorf("broker RSS: %w", err)
	}
	what := "written"
	if o.qos == 1 {
		what = "acknowledged"
	}
	fmt.Printf("fanin qos%d: %d publishers on %s -> 1 subscriber on %s (%s, granted QoS %d), %d B payload%s: %.0f msg/s received over %.1f s (%.0f msg/s %s by publishers); publish -> delivery p50 %.2f / p99 %.2f / max %.2f ms; lost %d of %d (gaps %d, duplicates %d, unacked %d, e2e stalls %d, errors %d); broker RSS %d KiB\n",
		o.qos, o.publishers, strings.Join(res.PubAddrs, ","), res.SubAddr, o.filter, res.GrantedQoS, o.payload, windowText(o), res.ReceivedPerS, measured.Seconds(),
		res.PublishedPerS, what, res.LatencyP50, res.LatencyP99, res.LatencyMax,
		res.Lost, res.PublishedTotal, res.Gaps, res.Duplicates, res.Unacked, res.Stalls, res.Errors, res.RSSEndKiB)
	emitJSON(res)
	return nil
}

// windowLatencies returns, sorted, the latencies of the messages sent in
// [from, to) (times since the run's start).
func windowLatencies(samples []latencySample, from, to time.Duration) []time.Duration {
	var out []time.Duration
	for _, l := range samples {
		if l.sent >= from && l.sent < to {
			out = append(out, l.took)
		}
	}
	sortDurations(out)
	return out
}

func windowText(o faninOptions) string {
	s := ""
	if o.qos == 1 {
		s += fmt.Sprintf(", window %d", o.window)
	}
	if o.e2e > 0 {
		s += fmt.Sprintf(", e2e window %d", o.e2e)
	}
	if o.rate > 0 {
		s += fmt.Sprintf(", offered %d msg/s", o.rate)
	}
	return s
}

// publish sends until stop. QoS 1 keeps at most o.window PUBLISHes without
// PUBACK. Writes are batched: the buffer is flushed when it is full, before
// waiting for a window slot or for deliveries (-e2e), and at each rate-limit
// tick. A message's send time is taken as it enters the buffer, so its
// latency includes the wait for that flush (with -e2e, at most e2e-1
// further messages).
func (pb *publisher) publish(o faninOptions, nonce uint32, start time.Time, stop <-chan struct{}) {
	w := bufio.NewWriterSize(pb.conn, 32<<10)
	topic := fmt.Sprintf("bench/%d/data", pb.index)
	payload := make([]byte, o.payload)
	for i := minPayload; i < len(payload); i++ {
		payload[i] = byte('a' + i%26)
	}
	pkt := make([]byte, 0, len(topic)+len(payload)+16)

	// Rate limit: this publisher's share, released in 10 ms steps.
	var perTick float64
	if o.rate > 0 {
		perTick = float64(o.rate) / float64(o.publishers) / 100
	}
	var tick *time.Ticker
	if perTick > 0 {
		tick = time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
	}
	var seq, lostBase uint64 // lostBase: sequence numbers given up on after a stall
	var pid uint16
	credit := 0.0
	for {
		select {
		case <-stop:
			_ = w.Flush()
			return
		default:
		}
		if tick != nil && credit < 1 {
			if err := w.Flush(); err != nil {
				pb.errs.Add(1)
				return
			}
			select {
			case <-stop:
				return
			case <-tick.C:
				credit += perTick
			}
			continue
		}
		if o.e2e > 0 && seq-max(pb.delivered.Load(), lostBase) >= uint64(o.e2e) {
			if err := w.Flush(); err != nil {
				pb.errs.Add(1)
				return
			}
			if !pb.awaitDelivery(seq, uint64(o.e2e), &lostBase, o.stall, stop) {
				return
			}
		}
		if o.qos == 1 {
			select {
			case pb.window <- struct{}{}:
			default:
				if err := w.Flush(); err != nil {
					pb.errs.Add(1)
					return
				}
				select {
				case pb.window <- struct{}{}:
				case <-stop:
					return
				}
			}
			for {
				if pid++; pid == 0 {
					pid = 1
				}
				pb.pmu.Lock()
				busy := pb.pending[pid]
				if !busy {
					pb.pending[pid] = true
				}
				pb.pmu.Unlock()
				if !busy {
					break
				}
			}
		}
		seq++
		payloadHeader{nonce: nonce, pub: pb.index, seq: seq, sent: time.Since(start)}.put(payload)
		pkt = appendPublish(pkt[:0], topic, byte(o.qos), pid, payload)
		if _, err := w.Write(pkt); err != nil {
			pb.errs.Add(1)
			return
		}
		pb.written.Add(1)
		if o.qos == 0 {
			pb.sent.Add(1)
		}
		credit--
	}
}

// awaitDelivery waits until fewer than e2e of this publisher's messages up to
// seq are unreceived. After stall without progress it gives them up (lost,
// for QoS 0 a broker may drop) so a dropped tail cannot block it for ever.
// It returns false when the run stops.
func (pb *publisher) awaitDelivery(seq, e2e uint64, lostBase *uint64, stall time.Duration, stop <-chan struct{}) bool {
	timer := time.NewTimer(stall)
	defer timer.Stop()
	for {
		pb.waiting.Store(true)
		if seq-max(pb.delivered.Load(), *lostBase) < e2e {
			pb.waiting.Store(false)
			return true
		}
		before := pb.delivered.Load()
		select {
		case <-stop:
			pb.waiting.Store(false)
			return false
		case <-pb.wake:
		case <-timer.C:
			if pb.delivered.Load() == before {
				pb.stalls.Add(1)
				*lostBase = seq
				pb.waiting.Store(false)
				return true
			}
			timer.Reset(stall)
		}
	}
}

// readAcks consumes PUBACKs and frees window slots.
func (pb *publisher) readAcks() {
	defer close(pb.acksIn)
	r := bufio.NewReaderSize(pb.conn, 4<<10)
	buf := make([]byte, 64)
	for {
		p, err := readPacket(r, buf)
		if err != nil {
			return
		}
		id, err := ackID(p)
		if p.kind() != typePuback || err != nil {
			pb.errs.Add(1)
			continue
		}
		pb.pmu.Lock()
		ok := pb.pending[id]
		pb.pending[id] = false
		pb.pmu.Unlock()
		if !ok {
			pb.errs.Add(1) // PUBACK for nothing outstanding
			continue
		}
		pb.sent.Add(1)
		<-pb.window
	}
}

// drainReads reads (and ignores) whatever a QoS 0 publisher is sent, so a
// stray packet cannot fill its socket buffer.
func (pb *publisher) drainReads() {
	defer close(pb.acksIn)
	r := bufio.NewReaderSize(pb.conn, 4<<10)
	for {
		if _, err := readPacket(r, nil); err != nil {
			return
		}
		pb.errs.Add(1)
	}
}
