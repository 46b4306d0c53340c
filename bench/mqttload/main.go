// Command mqttload is the MQTT 3.1.1 load generator behind bench/mqtt.sh. It
// measures one broker at a time, on loopback only, each run bounded in time:
//
//	mqttload connect -addr 127.0.0.1:1883 -clients 10000 -concurrency 200 -hold 10s -pid PID
//	mqttload fanin   -addr 127.0.0.1:1883 -publishers 100 -qos 1 -duration 10s -payload 64 -window 32
//	mqttload fanin   -pub-addrs 127.0.0.1:1883,127.0.0.1:1884 -sub-addr 127.0.0.1:1885 -publishers 50 -qos 1
//	mqttload hold    -addr 127.0.0.1:1883 -clients 50000 -hold 60s -source-ips 127.0.0.2-127.0.0.9 -pid PID
//
// Each run prints one human-readable line per measurement on stdout and, as
// its last line, one JSON object with every figure (for the script's table).
// Diagnostics go to stderr.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "connect":
		err = runConnections("connect", os.Args[2:])
	case "hold":
		err = runConnections("hold", os.Args[2:])
	case "fanin":
		err = runFanin(os.Args[2:])
	case "freeport":
		err = freePort()
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mqttload:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: mqttload connect|hold|fanin -addr 127.0.0.1:PORT [flags]
  connect  connect N clients (rate, latency, memory per client), hold, check, disconnect
  hold     the same with more clients, several source IPs and keepalive pings
  fanin    N publishers -> 1 subscriber on bench/+/data, QoS 0 or 1; the publishers and the
           subscriber may use different brokers (-pub-addrs, -sub-addr: nodes of a cluster)
  freeport print a free TCP port on 127.0.0.1 (for the script's broker config)
run "mqttload SUBCOMMAND -h" for the flags`)
	os.Exit(2)
}

func freePort() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Println(l.Addr().(*net.TCPAddr).Port)
	return nil
}

// loopbackAddr resolves addr, given as flag -name, and refuses anything but
// a loopback address.
func loopbackAddr(name, addr string) (*net.TCPAddr, error) {
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("-%s %s: %w", name, addr, err)
	}
	if a.IP == nil || !a.IP.IsLoopback() {
		return nil, fmt.Errorf("-%s %s: only loopback addresses are allowed", name, addr)
	}
	return a, nil
}

// loopbackAddrs reads a comma list "host:port,host:port" given as flag
// -name, each address loopback; empty means none.
func loopbackAddrs(name, list string) ([]*net.TCPAddr, error) {
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	var addrs []*net.TCPAddr
	for _, part := range strings.Split(list, ",") {
		a, err := loopbackAddr(name, strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		addrs = append(addrs, a)
	}
	return addrs, nil
}

// parseSourceIPs reads "127.0.0.2-127.0.0.9" (an IPv4 range) or a comma list;
// every address must be loopback. Empty means: let the kernel choose.
func parseSourceIPs(s string) ([]net.IP, error) {
	if s == "" {
		return nil, nil
	}
	var ips []net.IP
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		first := net.ParseIP(lo).To4()
		if first == nil {
			return nil, fmt.Errorf("-source-ips: %q is not an IPv4 address", lo)
		}
		last := first
		if isRange {
			if last = net.ParseIP(hi).To4(); last == nil {
				return nil, fmt.Errorf("-source-ips: %q is not an IPv4 address", hi)
			}
		}
		from, to := ipv4ToUint(first), ipv4ToUint(last)
		if to < from || to-from > 65535 {
			return nil, fmt.Errorf("-source-ips: bad range %q", part)
		}
		for v := from; ; v++ {
			ip := net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
			if !ip.IsLoopback() {
				return nil, fmt.Errorf("-source-ips: %s is not a loopback address", ip)
			}
			ips = append(ips, ip)
			if v == to {
				break
			}
		}
	}
	return ips, nil
}

func ipv4ToUint(ip net.IP) uint32 {
	return uint32(ip[0])<<24 | uint32(ip[1])<<16 | uint32(ip[2])<<8 | uint32(ip[3])
}

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h): with a fixed
// source address, pick the port at connect() time, so ports are shared across
// destinations and each source IP offers its whole ephemeral range.
const ipBindAddressNoPort = 24

// dialer returns a dialer bound to src (nil: the kernel chooses).
func dialer(src net.IP, timeout time.Duration) *net.Dialer {
	d := &net.Dialer{Timeout: timeout}
	if src != nil {
		d.LocalAddr = &net.TCPAddr{IP: src}
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	return d
}

// raiseFileLimit lifts RLIMIT_NOFILE to want (root may raise the hard limit),
// or to the hard limit if that fails. It returns the soft limit in force.
func raiseFileLimit(want uint64) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur >= want {
		return lim.Cur
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: max(want, lim.Max)}); err == nil {
		return want
	}
	lim.Cur = lim.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	return lim.Cur
}

// rssKiB reads VmRSS of pid from /proc/PID/status; 0 when pid is 0.
func rssKiB(pid int) (int64, error) {
	if pid == 0 {
		return 0, nil
	}
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fields := strings.Fields(rest)
			if len(fields) == 2 && fields[1] == "kB" {
				return strconv.ParseInt(fields[0], 10, 64)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no VmRSS line in /proc/" + strconv.Itoa(pid) + "/status")
}

// percentile of sorted durations, nearest-rank; 0 for none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

func sortDurations(d []time.Duration) { slices.Sort(d) }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// round keeps JSON figures readable.
func round(v float64, digits int) float64 {
	s := strconv.FormatFloat(v, 'f', digits, 64)
	r, _ := strconv.ParseFloat(s, 64)
	return r
}

// emitJSON prints the final JSON object (one line).
func emitJSON(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mqttload: json:", err)
		return
	}
	fmt.Println(string(b))
}

// errorCounts counts failures by a short cause.
type errorCounts map[string]int

func (e errorCounts) String() string {
	if len(e) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(e))
	for k := range e {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, e[k]))
	}
	return strings.Join(parts, " ")
}

// cause turns an error into a short, countable label.
func cause(stage string, err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return stage + ":refused"
	case errors.Is(err, syscall.ECONNRESET):
		return stage + ":reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return stage + ":no-source-port"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return stage + ":fd-limit"
	case errors.Is(err, syscall.EPIPE):
		return stage + ":broken-pipe"
	case errors.As(err, &ne) && ne.Timeout():
		return stage + ":timeout"
	case errors.Is(err, errMalformed):
		return stage + ":malformed"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return stage + ":closed-by-broker"
	default:
		return stage + ":other"
	}
}

// parseFlags parses args and rejects leftovers.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return nil
}
