package main_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// startBenchServe runs `tarsmq serve` without the per-client publish rate
// limit, which would throttle the load generator.
func startBenchServe(t *testing.T) *server {
	t.Helper()
	dir, err := os.MkdirTemp("", "tqbench")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return startServeWith(t, dir, nil, []string{"TARSMQ_LIMITS_PUBLISH_RATE=0"})
}

func TestBenchJSON(t *testing.T) {
	s := startBenchServe(t)
	for _, url := range []string{"unix://" + s.socket, "tcp://" + s.tcp} {
		stdout, stderr, code := run(t, nil, "bench", "--json", "--messages", "200", "--qos", "1", "--url", url)
		if code != 0 {
			t.Fatalf("%s: exit %d\n%s%s", url, code, stdout, stderr)
		}
		var res struct {
			URL                       string
			Scenario                  string
			Sent, Expected, Delivered uint64
			Lost, Duplicates          uint64
			Stalled                   bool
			P50, P99                  int64
		}
		if err := json.Unmarshal([]byte(stdout), &res); err != nil {
			t.Fatalf("%s: %v\n%s", url, err, stdout)
		}
		var raw map[string]any
		_ = json.Unmarshal([]byte(stdout), &raw)
		if res.Lost != 0 || res.Sent != 4*200 || res.Delivered != res.Expected || res.Stalled || raw["p50_us"] == nil || raw["lost"] == nil {
			t.Fatalf("%s: %s", url, stdout)
		}
	}
}

func TestBenchTableAndRuns(t *testing.T) {
	s := startBenchServe(t)
	stdout, stderr, code := run(t, []string{"MQTT_URL=unix://" + s.socket},
		"bench", "--scenario", "reqrep", "-p", "2", "--messages", "100", "--runs", "2", "--mqtt", "3.1.1")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "msgs/s") || !strings.Contains(lines[1], "reqrep 2→1") {
		t.Fatalf("table:\n%s", stdout)
	}
}

// A run that loses messages at QoS 1 fails: here the broker refuses every
// raw payload.
func TestBenchFailsOnLoss(t *testing.T) {
	s := startBenchServe(t)
	stdout, stderr, code := run(t, nil, "bench", "--raw", "--qos", "1", "--messages", "10", "--drain", "200ms", "--url", "unix://"+s.socket)
	if code != 1 || !strings.Contains(stderr, "refused 40 publishes") || !strings.Contains(stderr, "1 of 1 runs failed") {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
}
