// Command compare runs the same load against tarsmq and Mosquitto on this
// machine, alternately, and writes the side-by-side table, the memory of
// both and the targets met or missed to docs/benchmarks.md. Run it with
// `make bench-compare` (bench/compare.sh installs Mosquitto if needed).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}

// options are the command line.
type options struct {
	tarsmq, mosquitto, out string
	rounds                 int
	duration               time.Duration
	soak                   int
	skipColdStart          bool
}

func run() error {
	var o options
	flag.StringVar(&o.tarsmq, "tarsmq", "bin/tarsmq", "tarsmq binary (also the load generator: tarsmq bench)")
	flag.StringVar(&o.mosquitto, "mosquitto", "/usr/sbin/mosquitto", "Mosquitto binary")
	flag.StringVar(&o.out, "out", "docs/benchmarks.md", "Markdown file to write")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds of every scenario on each broker, alternating; the median is reported")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "how long each run sends")
	flag.IntVar(&o.soak, "soak", 50, "back-to-back runs of each QoS 1 scenario against tarsmq (0: none)")
	flag.BoolVar(&o.skipColdStart, "skip-cold-start", false, "do not run the cold start benchmark (go test)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("/var/tmp", "tarsmq-compare") // a disk, not tmpfs: the store is on disk
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	tq, err := startTarsmq(ctx, o.tarsmq, dir)
	if err != nil {
		return err
	}
	defer tq.stop()
	mq, err := startMosquitto(ctx, o.mosquitto, dir)
	if err != nil {
		return err
	}
	defer mq.stop()
	brokers := []*broker{tq, mq}

	time.Sleep(2 * time.Second) // settle before the idle figure
	for _, b := range brokers {
		b.idleRSS = b.rss()
	}

	var rows []row
	for _, sc := range scenarios {
		r := row{scenario: sc}
		for round := range o.rounds {
			order := brokers
			if round%2 == 1 {
				order = []*broker{mq, tq}
			}
			for _, b := range order {
				res, peak, err := b.bench(ctx, o.tarsmq, sc, o.duration)
				if err != nil {
					return fmt.Errorf("%s on %s: %w", sc.name, b.name, err)
				}
				if sc.clients >= 100 {
					b.loadRSS = max(b.loadRSS, peak)
				}
				r.add(b.name, res)
				fmt.Fprintf(os.Stderr, "%-40s %-9s %9.0f msg/s  p99 %6d µs  lost %d\n", sc.name, b.name, res.MsgsPerSec, res.P99, res.Lost)
			}
		}
		rows = append(rows, r)
	}
	for _, b := range brokers {
		b.peakRSS = b.hwm()
	}

	var soaks []soakResult
	if o.soak > 0 {
		for _, sc := range soakScenarios {
			s, err := tq.soak(ctx, o.tarsmq, sc, o.soak)
			if err != nil {
				return fmt.Errorf("soak %s: %w", sc.name, err)
			}
			fmt.Fprintf(os.Stderr, "soak %-35s %d/%d runs clean\n", sc.name, s.clean, s.runs)
			soaks = append(soaks, s)
		}
	}
	var cold coldStartResult
	if !o.skipColdStart {
		if cold, err = coldStart(ctx); err != nil {
			return err
		}
	}
	doc := report(o, brokers, rows, soaks, cold)
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(o.out, []byte(doc), 0o644)
}

// scenario is one load, as tarsmq bench flags.
type scenario struct {
	name    string
	args    []string
	unix    bool // over the Unix socket, else TCP
	clients int  // connections it opens
	target  bool // one of the scenarios: tarsmq must be at least as fast
}

var scenarios = []scenario{
	{name: "4 publishers → 1 subscriber, QoS 0, TCP", args: []string{"--scenario", "fanin", "-p", "4", "--qos", "0"}, clients: 5, target: true},
	{name: "4 → 1, QoS 1, TCP", args: []string{"--scenario", "fanin", "-p", "4", "--qos", "1"}, clients: 5, target: true},
	{name: "4 → 1, QoS 1, Unix socket", args: []string{"--scenario", "fanin", "-p", "4", "--qos", "1"}, unix: true, clients: 5, target: true},
	{name: "1 → 4 subscribers, QoS 0, TCP", args: []string{"--scenario", "fanout", "-s", "4", "--qos", "0"}, clients: 5, target: true},
	{name: "1 → 4, QoS 1, TCP", args: []string{"--scenario", "fanout", "-s", "4", "--qos", "1"}, clients: 5, target: true},
	{name: "4 → 1, QoS 0, Unix socket", args: []string{"--scenario", "fanin", "-p", "4", "--qos", "0"}, unix: true, clients: 5},
	{name: "request/reply, 4 requesters, QoS 1, Unix socket", args: []string{"--scenario", "reqrep", "-p", "4", "--qos", "1"}, unix: true, clients: 5},
	{name: "MQTT 3.1.1, 4 → 1, QoS 1, TCP", args: []string{"--scenario", "fanin", "-p", "4", "--qos", "1", "--mqtt", "3.1.1"}, clients: 5},
	{name: "50 → 50 (100 clients), QoS 0, Unix socket", args: []string{"--scenario", "many", "-p", "50", "-s", "50", "--qos", "0", "--size", "200"}, unix: true, clients: 100},
	{name: "steady 5,000 msg/s, 4 → 1, QoS 1, Unix socket", args: []string{"--scenario", "fanin", "-p", "4", "--qos", "1", "--rate", "5000"}, unix: true, clients: 5},
}

var soakScenarios = []scenario{
	{name: "4 → 1, QoS 1, TCP", args: []string{"--scenario", "fanin", "-p", "4", "--qos", "1"}},
	{name: "1 → 4, QoS 1, TCP", args: []string{"--scenario", "fanout", "-s", "4", "--qos", "1"}},
	{name: "1 → 4, QoS 1, Receive Maximum 10, Unix", args: []string{"--scenario", "fanout", "-s", "4", "--qos", "1", "--receive-maximum", "10"}, unix: true},
	{name: "4 → 1, QoS 1, Unix socket", args: []string{"--scenario", "fanin", "-p", "4", "--qos", "1"}, unix: true},
}

// result is what tarsmq bench --json prints (the fields used here).
type result struct {
	MsgsPerSec float64 `json:"msgs_per_sec"`
	Sent       uint64  `json:"sent"`
	Expected   uint64  `json:"expected"`
	Delivered  uint64  `json:"delivered"`
	Lost       uint64  `json:"lost"`
	Duplicates uint64  `json:"duplicates"`
	Stalled    bool    `json:"stalled"`
	P50        int64   `json:"p50_us"`
	P99        int64   `json:"p99_us"`
	Max        int64   `json:"max_us"`
}

// row holds every round of one scenario on both brokers.
type row struct {
	scenario scenario
	results  map[string][]result
}

func (r *row) add(broker string, res result) {
	if r.results == nil {
		r.results = map[string][]result{}
	}
	r.results[broker] = append(r.results[broker], res)
}

// median returns the run with the median rate, and the total lost.
func (r *row) median(broker string) (result, uint64) {
	rs := append([]result(nil), r.results[broker]...)
	if len(rs) == 0 {
		return result{}, 0
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].MsgsPerSec < rs[j].MsgsPerSec })
	var lost uint64
	for _, x := range rs {
		lost += x.Lost
	}
	return rs[len(rs)/2], lost
}

// broker is a running broker under test.
type broker struct {
	name, version string
	cmd           *exec.Cmd
	tcp, socket   string
	idleRSS       int64 // KiB
	loadRSS       int64 // KiB, peak during the 100-client run
	peakRSS       int64 // KiB, high-water mark of the whole session
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func startTarsmq(ctx context.Context, bin, dir string) (*broker, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	b := &broker{name: "tarsmq", tcp: fmt.Sprintf("127.0.0.1:%d", port), socket: filepath.Join(dir, "tq.sock")}
	b.cmd = exec.CommandContext(ctx, bin, "serve")
	b.cmd.Env = append(os.Environ(), "TARSMQ_CONFIG=",
		"TARSMQ_LISTENERS_TCP_ADDRESS="+b.tcp, "TARSMQ_LISTENERS_UNIX_PATH="+b.socket,
		"TARSMQ_STORE_DIR="+filepath.Join(dir, "state"), "TARSMQ_ADMIN_ADDRESS=",
		// A load generator publishes flat out: no per-client rate limit.
		// The contract, health recording and the store stay as shipped.
		"TARSMQ_LIMITS_PUBLISH_RATE=0", "TARSMQ_LOG_LEVEL=warn")
	b.cmd.Stderr = os.Stderr
	out, _ := exec.Command(bin, "version").Output()
	b.version = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	return b, b.start()
}

func startMosquitto(ctx context.Context, bin, dir string) (*broker, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	b := &broker{name: "mosquitto", tcp: fmt.Sprintf("127.0.0.1:%d", port), socket: filepath.Join(dir, "mq.sock")}
	conf := filepath.Join(dir, "mosquitto.conf")
	// max_queued_messages: stock Mosquitto 2.0 queues 1000 messages per
	// client and drops the rest silently (57% of a QoS 0 fan-in).
	text := fmt.Sprintf("listener %d 127.0.0.1\nlistener 0 %s\nallow_anonymous true\nmax_queued_messages 100000\npersistence false\nlog_dest stderr\nlog_type error\n",
		port, b.socket)
	if os.Geteuid() == 0 {
		text += "user root\n" // else it drops to user mosquitto, who cannot bind the socket here
	}
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, err
	}
	b.cmd = exec.CommandContext(ctx, bin, "-c", conf)
	b.cmd.Stderr = os.Stderr
	var v bytes.Buffer
	vc := exec.Command(bin, "-h")
	vc.Stdout = &v
	_ = vc.Run()
	b.version = strings.TrimSpace(strings.SplitN(v.String(), "\n", 2)[0])
	return b, b.start()
}

// start runs the broker and waits until both listeners accept.
func (b *broker) start() error {
	if err := b.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", b.name, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, a := range [][2]string{{"tcp", b.tcp}, {"unix", b.socket}} {
		for {
			c, err := net.DialTimeout(a[0], a[1], time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s does not accept on %s %s: %w", b.name, a[0], a[1], err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

func (b *broker) stop() {
	if b.cmd.Process != nil {
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = b.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = b.cmd.Process.Kill()
		}
	}
}

// status reads a field of /proc/PID/status in KiB.
func (b *broker) status(field string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", b.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

func (b *broker) rss() int64 { return b.status("VmRSS") }
func (b *broker) hwm() int64 { return b.status("VmHWM") }

func (b *broker) url(unix bool) string {
	if unix {
		return "unix://" + b.socket
	}
	return "tcp://" + b.tcp
}

// bench runs one scenario and returns its result and the broker's peak RSS
// while it ran.
func (b *broker) bench(ctx context.Context, bin string, sc scenario, d time.Duration) (result, int64, error) {
	args := append([]string{"bench", "--json", "--url", b.url(sc.unix), "--duration", d.String()}, sc.args...)
	cmd := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, io.Discard
	done := make(chan struct{})
	var peak int64
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				peak = max(peak, b.rss())
			}
		}
	}()
	err := cmd.Run()
	close(done)
	var res result
	if jerr := json.Unmarshal(out.Bytes(), &res); jerr != nil {
		return res, peak, errors.Join(err, fmt.Errorf("tarsmq bench output: %w: %s", jerr, out.String()))
	}
	return res, peak, nil
}

// soakResult counts clean runs of a QoS 1 scenario.
type soakResult struct {
	scenario    scenario
	runs, clean int
	worst       string
}

func (b *broker) soak(ctx context.Context, bin string, sc scenario, runs int) (soakResult, error) {
	s := soakResult{scenario: sc, runs: runs}
	args := append([]string{"bench", "--json", "--url", b.url(sc.unix), "--duration", "1s", "--runs", strconv.Itoa(runs)}, sc.args...)
	cmd := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, io.Discard
	_ = cmd.Run() // exits 1 when a run failed: the results say which
	dec := json.NewDecoder(&out)
	for {
		var r result
		if err := dec.Decode(&r); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return s, fmt.Errorf("tarsmq bench output: %w", err)
		}
		if !r.Stalled && r.Lost == 0 && r.Duplicates == 0 && r.Delivered == r.Expected {
			s.clean++
		} else if s.worst == "" {
			s.worst = fmt.Sprintf("lost %d, duplicates %d, stalled %v", r.Lost, r.Duplicates, r.Stalled)
		}
	}
	return s, nil
}

// coldStart runs the cold start benchmark of cmd/tarsmq: 10k retained
// messages, time to accepting connections.
func coldStart(ctx context.Context) (coldStartResult, error) {
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "XXX", "-bench", "BenchmarkColdStart", "-benchtime", "3x", "./cmd/tarsmq")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return coldStartResult{}, fmt.Errorf("cold start benchmark: %w\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "BenchmarkColdStart") {
			return parseColdStart(strings.Fields(line)[2:])
		}
	}
	return coldStartResult{}, fmt.Errorf("cold start benchmark printed no result:\n%s", out)
}

// coldStartResult is what BenchmarkColdStart measured.
type coldStartResult struct {
	ms, rssMiB float64
}

// parseColdStart reads "196996401 ns/op 58.88 RSS-MiB ...".
func parseColdStart(fields []string) (coldStartResult, error) {
	var r coldStartResult
	for i := 0; i+1 < len(fields); i += 2 {
		v, err := strconv.ParseFloat(fields[i], 64)
		if err != nil {
			return r, fmt.Errorf("cold start benchmark: %q: %w", fields[i], err)
		}
		switch fields[i+1] {
		case "ns/op":
			r.ms = v / 1e6
		case "RSS-MiB":
			r.rssMiB = v
		}
	}
	if r.ms == 0 {
		return r, fmt.Errorf("cold start benchmark: no ns/op in %v", fields)
	}
	return r, nil
}

// machine describes where the run happened.
func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		line := strings.SplitN(string(data), "\n", 2)[0]
		if f := strings.Fields(line); len(f) >= 2 {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			mem = fmt.Sprintf(", %.1f GiB RAM", float64(kb)/(1<<20))
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%s, %d cores%s, Linux %s, %s", model, runtime.NumCPU(), mem, strings.TrimSpace(string(kernel)), runtime.Version())
}
