package main

// The connect and hold scenarios: open many MQTT connections, measure the
// ramp (rate, CONNACK latency), the broker's memory per client, keep them with
// PINGREQs for the hold time, then check that each one still answers.

import (
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type connOptions struct {
	addr         *net.TCPAddr
	clients      int
	concurrency  int
	hold         time.Duration
	settle       time.Duration
	pingInterval time.Duration
	timeout      time.Duration
	maxRamp      time.Duration
	maxFailures  int
	keepAlive    int
	pid          int
	sources      []net.IP
	idPrefix     string
	ackLog       string
}

// client is one open MQTT connection; after the ramp only one goroutine at a
// time (a ping worker) uses it.
type client struct {
	conn net.Conn
	buf  []byte
	dead bool
}

// connectResult is the JSON of the connect and hold scenarios.
type connectResult struct {
	Scenario      string         `json:"scenario"`
	Clients       int            `json:"clients"`
	Connected     int            `json:"connected"`
	Failures      int            `json:"failures"`
	FailureCauses map[string]int `json:"failure_causes"`
	RampSeconds   float64        `json:"ramp_seconds"`
	ConnectsPerS  float64        `json:"connects_per_s"`
	LatencyP50Ms  float64        `json:"latency_p50_ms"`
	LatencyP99Ms  float64        `json:"latency_p99_ms"`
	LatencyMaxMs  float64        `json:"latency_max_ms"`
	RSSBeforeKiB  int64          `json:"rss_before_kib"`
	RSSAfterKiB   int64          `json:"rss_connected_kib"`
	KiBPerClient  float64        `json:"kib_per_client"`
	HoldSeconds   float64        `json:"hold_seconds"`
	PingRounds    int            `json:"ping_rounds"`
	Alive         int            `json:"alive_after_hold"`
	Lost          int            `json:"lost_during_hold"`
	LostCauses    map[string]int `json:"lost_causes"`
	RSSEndKiB     int64          `json:"rss_end_kib"`
	SourceIPs     int            `json:"source_ips"`
	FileLimit     uint64         `json:"file_limit"`
}

func runConnections(scenario string, args []string) error {
	fs := flag.NewFlagSet(scenario, flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:1883", "broker address (loopback only)")
	o := connOptions{}
	defClients, defHold := 10000, 10*time.Second
	if scenario == "hold" {
		defClients, defHold = 50000, 60*time.Second
	}
	fs.IntVar(&o.clients, "clients", defClients, "clients to connect")
	fs.IntVar(&o.concurrency, "concurrency", 200, "connects (and pings) in flight at once")
	fs.DurationVar(&o.hold, "hold", defHold, "how long to keep every connection open after the ramp")
	fs.DurationVar(&o.settle, "settle", 2*time.Second, "wait after the ramp before reading the broker's RSS")
	fs.DurationVar(&o.pingInterval, "ping-interval", 30*time.Second, "PINGREQ every connection this often while holding")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Second, "per-connect (dial to CONNACK) and per-ping timeout")
	fs.DurationVar(&o.maxRamp, "max-ramp", 5*time.Minute, "stop starting new connects after this long")
	fs.IntVar(&o.maxFailures, "max-failures", 1000, "stop starting new connects after this many failures (0: never)")
	fs.IntVar(&o.keepAlive, "keepalive", 60, "CONNECT keepalive in seconds")
	fs.IntVar(&o.pid, "pid", 0, "broker pid: read its VmRSS from /proc (0: skip)")
	src := fs.String("source-ips", "", "loopback source addresses, a range 127.0.0.2-127.0.0.9 or a comma list (default: kernel's choice)")
	fs.StringVar(&o.idPrefix, "id-prefix", fmt.Sprintf("mqttload-%s-%d", scenario, os.Getpid()), "client id prefix")
	fs.StringVar(&o.ackLog, "ack-log", "", "write one line per CONNACK received, \"CLIENT_ID UNIX_NANOS\", to this file (bench/sources.sh)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var err error
	if o.addr, err = loopbackAddr("addr", *addr); err != nil {
		return err
	}
	if o.sources, err = parseSourceIPs(*src); err != nil {
		return err
	}
	if o.clients < 1 || o.concurrency < 1 || o.keepAlive < 0 || o.keepAlive > 65535 {
		return fmt.Errorf("bad -clients, -concurrency or -keepalive")
	}
	return connections(scenario, o)
}

func connections(scenario string, o connOptions) error {
	res := connectResult{Scenario: scenario, Clients: o.clients, SourceIPs: len(o.sources)}
	res.FileLimit = raiseFileLimit(uint64(o.clients) + 4096)
	if res.FileLimit < uint64(o.clients)+64 {
		fmt.Fprintf(os.Stderr, "mqttload: warning: file limit %d is below %d clients\n", res.FileLimit, o.clients)
	}
	var err error
	if res.RSSBeforeKiB, err = rssKiB(o.pid); err != nil {
		return fmt.Errorf("broker RSS: %w", err)
	}

	var (
		mu        sync.Mutex
		clients   = make([]*client, 0, o.clients)
		latencies = make([]time.Duration, 0, o.clients)
		acks      = make([]string, 0, o.clients)
		failures  = errorCounts{}
		samples   = map[string]string{}
		next      atomic.Int64
		lastDone  atomic.Int64 // unix nanos of the last finished connect
		failed    atomic.Int64
	)
	start := time.Now()
	deadline := start.Add(o.maxRamp)

	// Keepalive during a slow ramp: ping what is connected so far.
	stopPinger := make(chan struct{})
	pingerDone := make(chan struct{})
	rounds := 0
	lostCauses := errorCounts{}
	go func() {
		defer close(pingerDone)
		t := time.NewTicker(o.pingInterval)
		defer t.Stop()
		for {
			select {
			case <-stopPinger:
				return
			case <-t.C:
				mu.Lock()
				snapshot := append([]*client(nil), clients...)
				mu.Unlock()
				_, lost := pingAll(snapshot, o.concurrency, o.timeout)
				rounds++
				lostCauses.add(lost)
			}
		}
	}()

	var wg sync.WaitGroup
	for w := 0; w < min(o.concurrency, o.clients); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= o.clients || time.Now().After(deadline) ||
					(o.maxFailures > 0 && failed.Load() >= int64(o.maxFailures)) {
					return
				}
				var srcIP net.IP
				if len(o.sources) > 0 {
					srcIP = o.sources[i%len(o.sources)]
				}
				id := fmt.Sprintf("%s-%d", o.idPrefix, i)
				c, lat, stage, err := connectOne(o, srcIP, id)
				done := time.Now().UnixNano()
				lastDone.Store(done)
				mu.Lock()
				if err != nil {
					failed.Add(1)
					k := cause(stage, err)
					failures[k]++
					if _, seen := samples[k]; !seen {
						samples[k] = err.Error()
					}
				} else {
					clients = append(clients, c)
					latencies = append(latencies, lat)
					if o.ackLog != "" {
						acks = append(acks, fmt.Sprintf("%s %d\n", id, done))
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	ramp := time.Duration(lastDone.Load() - start.UnixNano())
	if o.ackLog != "" {
		if err := os.WriteFile(o.ackLog, []byte(strings.Join(acks, "")), 0o644); err != nil {
			return fmt.Errorf("-ack-log: %w", err)
		}
	}

	res.Connected = len(clients)
	res.FailureCauses = failures
	for _, n := range failures {
		res.Failures += n
	}
	for k, s := range samples {
		fmt.Fprintf(os.Stderr, "mqttload: %s: e.g. %s\n", k, s)
	}
	if notStarted := o.clients - res.Connected - res.Failures; notStarted > 0 {
		res.Failures += notStarted
		failures["not-started:ramp-limit"] = notStarted
	}
	sortDurations(latencies)
	res.RampSeconds = round(ramp.Seconds(), 3)
	if ramp > 0 {
		res.ConnectsPerS = round(float64(res.Connected)/ramp.Seconds(), 0)
	}
	res.LatencyP50Ms = round(ms(percentile(latencies, 50)), 2)
	res.LatencyP99Ms = round(ms(percentile(latencies, 99)), 2)
	res.LatencyMaxMs = round(ms(percentile(latencies, 100)), 2)
	fmt.Printf("%s: %d/%d clients connected in %.2f s = %.0f connects/s; CONNACK latency p50 %.2f ms, p99 %.2f ms, max %.2f ms; failures: %s\n",
		scenario, res.Connected, o.clients, ramp.Seconds(), res.ConnectsPerS,
		res.LatencyP50Ms, res.LatencyP99Ms, res.LatencyMaxMs, failures)

	time.Sleep(o.settle)
	if res.RSSAfterKiB, err = rssKiB(o.pid); err != nil {
		return fmt.Errorf("broker RSS: %w", err)
	}
	if o.pid != 0 && res.Connected > 0 {
		res.KiBPerClient = round(float64(res.RSSAfterKiB-res.RSSBeforeKiB)/float64(res.Connected), 2)
		fmt.Printf("memory: broker RSS %d KiB before, %d KiB with %d clients connected (after %s) = %.2f KiB per client\n",
			res.RSSBeforeKiB, res.RSSAfterKiB, res.Connected, o.settle, res.KiBPerClient)
	}

	// Hold: the ticker keeps pinging every ping interval; the end is the check.
	holdStart := time.Now()
	time.Sleep(o.hold)
	close(stopPinger)
	<-pingerDone
	alive, lost := pingAll(clients, o.concurrency, o.timeout)
	lostCauses.add(lost)
	res.HoldSeconds = round(time.Since(holdStart).Seconds(), 1)
	res.PingRounds = rounds
	res.Alive = alive
	res.Lost = res.Connected - alive
	res.LostCauses = lostCauses
	if res.RSSEndKiB, err = rssKiB(o.pid); err != nil {
		return fmt.Errorf("broker RSS: %w", err)
	}
	fmt.Printf("%s check: %d/%d connections answered PINGREQ after a %.0f s hold (%d keepalive ping rounds during it); lost: %s; broker RSS %d KiB\n",
		scenario, alive, res.Connected, res.HoldSeconds, rounds, lostCauses, res.RSSEndKiB)

	disconnectAll(clients, o.concurrency)
	emitJSON(res)
	return nil
}

// connectOne dials, sends CONNECT and waits for CONNACK. The latency runs
// from the start of the dial to the CONNACK. stage names the failing step.
func connectOne(o connOptions, src net.IP, id string) (*client, time.Duration, string, error) {
	t0 := time.Now()
	conn, err := dialer(src, o.timeout).Dial("tcp", o.addr.String())
	if err != nil {
		return nil, 0, "dial", err
	}
	_ = conn.SetDeadline(t0.Add(o.timeout))
	if _, err := conn.Write(connectPacket(id, true, uint16(o.keepAlive))); err != nil {
		conn.Close()
		return nil, 0, "connect-write", err
	}
	buf := make([]byte, 8)
	p, err := readPacket(conn, buf)
	if err != nil {
		conn.Close()
		return nil, 0, "connack", err
	}
	lat := time.Since(t0)
	code, err := connackCode(p)
	if err != nil {
		conn.Close()
		return nil, 0, "connack", err
	}
	if code != 0 {
		conn.Close()
		return nil, 0, fmt.Sprintf("connack-refused-%d", code), fmt.Errorf("CONNACK return code %d", code)
	}
	_ = conn.SetDeadline(time.Time{})
	return &client{conn: conn, buf: buf}, lat, "", nil
}

// pingAll sends PINGREQ on every live connection and waits for its PINGRESP,
// concurrency at a time. A connection that fails is closed and marked dead.
func pingAll(clients []*client, concurrency int, timeout time.Duration) (int, errorCounts) {
	var (
		mu    sync.Mutex
		alive int
		lost  = errorCounts{}
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	for w := 0; w < min(concurrency, len(clients)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(clients) {
					return
				}
				c := clients[i]
				if c.dead {
					continue
				}
				err := ping(c, timeout)
				mu.Lock()
				if err != nil {
					c.dead = true
					c.conn.Close()
					lost[cause("ping", err)]++
				} else {
					alive++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return alive, lost
}

func ping(c *client, timeout time.Duration) error {
	_ = c.conn.SetDeadline(time.Now().Add(timeout))
	defer c.conn.SetDeadline(time.Time{})
	if _, err := c.conn.Write(pingreqPacket); err != nil {
		return err
	}
	p, err := readPacket(c.conn, c.buf)
	if err != nil {
		return err
	}
	if p.kind() != typePingresp {
		return fmt.Errorf("%w: expected PINGRESP, got type %d", errMalformed, p.kind())
	}
	return nil
}

// disconnectAll sends DISCONNECT and closes every live connection.
func disconnectAll(clients []*client, concurrency int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < min(concurrency, len(clients)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(clients) {
					return
				}
				if c := clients[i]; !c.dead {
					_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
					_, _ = c.conn.Write(disconnectPacket)
					c.conn.Close()
				}
			}
		}()
	}
	wg.Wait()
}

func (e errorCounts) add(o errorCounts) {
	for k, n := range o {
		e[k] += n
	}
}
