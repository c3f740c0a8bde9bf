package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tarsmq/tarsmq/envelope"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
	"github.com/tarsmq/tarsmq/store"
)

// These benchmarks run the real binary and read the kernel's numbers for
// its process: resident memory (/proc/PID/status) and bytes written
// (/proc/PID/io). Run them with: go test -run XXX -bench . ./cmd/tarsmq

// procStat returns a field of /proc/PID/status in KiB, or of /proc/PID/io
// in bytes.
func procStat(tb testing.TB, pid int, file, field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if name, rest, ok := strings.Cut(sc.Text(), ":"); ok && name == field {
			n, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return n
		}
	}
	tb.Fatalf("no %s in /proc/%d/%s", field, pid, file)
	return 0
}

func benchDir(b *testing.B) string {
	dir, err := os.MkdirTemp("/var/tmp", "tqbench") // a real disk, for /proc/PID/io
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func healthMsg(svc string, i int) []byte {
	return []byte(fmt.Sprintf(`{"id":"%s-%d","type":"health.status","ts":%v,"source":%q,"data":{"ok":true,"event":"tick-%d"}}`,
		svc, i, envelope.Seconds(time.Now()), svc, i))
}

// BenchmarkRSS reports the broker's resident memory idle and after 10k
// health updates from 100 services: all of it (VmRSS, which counts the
// binary and Badger's memory-mapped files) and the anonymous part (heap).
func BenchmarkRSS(b *testing.B) {
	for range b.N {
		s := startServeIn(b, benchDir(b))
		time.Sleep(2 * time.Second) // let start-up settle
		pid := s.cmd.Process.Pid
		idle, idleAnon := procStat(b, pid, "status", "VmRSS"), procStat(b, pid, "status", "RssAnon")
		for svc := range 100 {
			c := mqtttest.Dial(b, "unix", s.socket, mqtttest.V311)
			name := fmt.Sprintf("svc%03d", svc)
			c.Connect(name, nil)
			for i := range 100 {
				c.Publish(envelope.HealthTopic(name), healthMsg(name, i), 1, true)
			}
			c.Disconnect()
		}
		time.Sleep(2 * time.Second)
		after, afterAnon := procStat(b, pid, "status", "VmRSS"), procStat(b, pid, "status", "RssAnon")
		b.ReportMetric(float64(idle)/1024, "idle-RSS-MiB")
		b.ReportMetric(float64(idleAnon)/1024, "idle-anon-MiB")
		b.ReportMetric(float64(after)/1024, "10k-health-RSS-MiB")
		b.ReportMetric(float64(afterAnon)/1024, "10k-health-anon-MiB")
		s.stop(b, syscall.SIGTERM)
	}
}

// seed fills dir's store with retained messages and services' history.
func seed(b *testing.B, dir string, retained, services, history int) {
	cfg := brokertest.Config(b)
	cfg.Store.Dir = filepath.Join(dir, "state")
	cfg.Store.Sync = false // seeding speed only
	cfg.Contract.BindSource = false
	cfg.Limits.PublishRate, cfg.Limits.MaxRetained = 0, 0
	br := brokertest.Start(b, cfg, brokertest.Logger())
	c := mqtttest.Dial(b, "unix", br.SocketPath(), mqtttest.V311)
	c.Connect("seed", nil)
	for i := range retained {
		topic := fmt.Sprintf("robot/part%05d/state", i)
		c.Publish(topic, []byte(fmt.Sprintf(`{"id":"%d","type":"part.state","ts":1729123456.5,"source":"seed","data":{"n":%d}}`, i, i)), 0, true)
	}
	c.Publish("robot/last", []byte(`{"id":"x","type":"part.state","ts":1729123456.5,"source":"seed","data":{}}`), 1, true) // after all before it
	if err := br.Close(context.Background()); err != nil {
		b.Fatal(err)
	}
	st := store.New(cfg.Store, nil)
	if err := st.Open(); err != nil {
		b.Fatal(err)
	}
	for svc := range services {
		for i := range history {
			name := fmt.Sprintf("svc%04d", svc)
			if err := st.PutHealth(store.HealthRecord{Source: name, Health: envelope.Health{OK: true, Event: "tick"},
				TS: 1729123456, Received: time.Now(), Boot: "seed", Envelope: healthMsg(name, i)}); err != nil {
				b.Fatal(err)
			}
		}
	}
	_ = st.EndStart()
	if err := st.Close(context.Background()); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkColdStart is the time from exec to "tarsmq started" (store open,
// 10k retained messages restored, listeners bound) with 1k services'
// history on disk, and the memory the broker then holds.
func BenchmarkColdStart(b *testing.B) {
	dir := benchDir(b)
	seed(b, dir, 10000, 1000, 10)
	b.ResetTimer()
	var rss, anon int64
	for range b.N {
		s := startServeIn(b, dir)
		rss, anon = procStat(b, s.cmd.Process.Pid, "status", "VmRSS"), procStat(b, s.cmd.Process.Pid, "status", "RssAnon")
		b.StopTimer()
		s.stop(b, syscall.SIGTERM)
		b.StartTimer()
	}
	b.ReportMetric(float64(rss)/1024, "RSS-MiB")
	b.ReportMetric(float64(anon)/1024, "anon-MiB")
}

// BenchmarkIdleDiskWrites is the disk an idle broker writes while 20
// services send a heartbeat every 5 s, extrapolated to an hour from a window
// of $TARSMQ_BENCH_WINDOW (default 60s): write_bytes is what reached the
// block device, wchar every write call (the log's included).
func BenchmarkIdleDiskWrites(b *testing.B) {
	window := time.Minute
	if w, err := time.ParseDuration(os.Getenv("TARSMQ_BENCH_WINDOW")); err == nil {
		window = w
	}
	for range b.N {
		s := startServeIn(b, benchDir(b))
		pid := s.cmd.Process.Pid
		var clients []*mqtttest.Client
		for i := range 20 {
			name := fmt.Sprintf("svc%02d", i)
			c := mqtttest.Dial(b, "unix", s.socket, mqtttest.V311)
			c.Connect(name, nil)
			c.Publish(envelope.HealthTopic(name), healthMsg(name, 0), 1, true)
			clients = append(clients, c)
		}
		time.Sleep(2 * time.Second)
		w0, c0 := procStat(b, pid, "io", "write_bytes"), procStat(b, pid, "io", "wchar")
		stop := time.Now().Add(window)
		for time.Now().Before(stop) {
			for i, c := range clients {
				hb, _ := json.Marshal(envelope.NewHeartbeat(time.Now()))
				c.Publish(envelope.KeepaliveTopic(fmt.Sprintf("svc%02d", i)), hb, 0, false)
			}
			time.Sleep(5 * time.Second)
		}
		w1, c1 := procStat(b, pid, "io", "write_bytes"), procStat(b, pid, "io", "wchar")
		perHour := float64(time.Hour) / float64(window)
		b.ReportMetric(float64(w1-w0)*perHour/1024, "disk-KiB/hour")
		b.ReportMetric(float64(c1-c0)*perHour/1024, "write-calls-KiB/hour")
		s.stop(b, syscall.SIGTERM)
	}
}
