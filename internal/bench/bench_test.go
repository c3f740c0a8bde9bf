package bench_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/internal/bench"
	"github.com/tarsmq/tarsmq/internal/brokertest"
)

// startBroker starts an in-process broker without the per-client publish
// rate limit, which would throttle (3.1.1) or disconnect (5) a generator.
func startBroker(t *testing.T) *broker.Broker {
	return brokertest.Run(t, func(c *broker.Config) { c.Limits.PublishRate = 0 })
}

func run(t *testing.T, cfg bench.Config) bench.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := bench.Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// checkComplete requires every message delivered once, and sane latencies.
func checkComplete(t *testing.T, res bench.Result) {
	t.Helper()
	if res.Lost != 0 || res.Duplicates != 0 || res.Delivered != res.Expected || res.Stalled || res.Refused != 0 || res.Foreign != 0 {
		t.Fatalf("incomplete: %+v", res)
	}
	if res.Sent == 0 || res.Elapsed <= 0 || res.MsgsPerSec <= 0 {
		t.Fatalf("nothing measured: %+v", res)
	}
	if res.P50 <= 0 || res.P50 > res.P90 || res.P90 > res.P99 || res.P99 > res.P999 || res.P999 > res.Max {
		t.Fatalf("percentiles out of order: %+v", res)
	}
}

func TestScenarios(t *testing.T) {
	b := startBroker(t)
	urls := map[string]string{"unix": "unix://" + b.SocketPath(), "tcp": "tcp://" + b.Addr().String()}
	for _, scenario := range []string{bench.FanIn, bench.FanOut, bench.Many, bench.ReqRep} {
		for _, qos := range []byte{0, 1} {
			for _, version := range []byte{4, 5} {
				for _, network := range []string{"unix", "tcp"} {
					name := fmt.Sprintf("%s/qos%d/v%d/%s", scenario, qos, version, network)
					t.Run(name, func(t *testing.T) {
						cfg := bench.Config{URL: urls[network], Version: version, Scenario: scenario,
							Publishers: 2, Subscribers: 2, QoS: qos, Messages: 500, Inflight: 50}
						if scenario == bench.ReqRep {
							cfg.Subscribers = 1
						}
						res := run(t, cfg)
						checkComplete(t, res)
						want := uint64(2 * 500)
						if res.Sent != want {
							t.Fatalf("sent %d, want %d", res.Sent, want)
						}
						if scenario != bench.ReqRep {
							want *= 2
						}
						if res.Expected != want {
							t.Fatalf("expected %d, want %d", res.Expected, want)
						}
					})
				}
			}
		}
	}
}

func TestDefaults(t *testing.T) {
	b := startBroker(t)
	var calls atomic.Int32
	res := run(t, bench.Config{URL: "unix://" + b.SocketPath(), Duration: 600 * time.Millisecond, Rate: 2000,
		Progress: func(sent, delivered uint64) { calls.Add(1) }})
	checkComplete(t, res)
	if res.Scenario != bench.FanIn || res.Version != 5 || res.Publishers != 4 || res.Subscribers != 1 || res.Size != 200 || res.Inflight != 100 {
		t.Fatalf("defaults: %+v", res)
	}
	// 2000/s for 0.6 s, paced: about 1200 messages
	if res.Sent < 1000 || res.Sent > 1300 {
		t.Fatalf("sent %d at 2000/s for 0.6 s", res.Sent)
	}
	if calls.Load() < 2 {
		t.Fatalf("Progress called %d times", calls.Load())
	}
}

func TestRawAndReceiveMaximum(t *testing.T) {
	b := brokertest.Run(t, func(c *broker.Config) {
		c.Limits.PublishRate = 0
		c.Contract.Exempt = append(c.Contract.Exempt, "raw/#")
	})
	res := run(t, bench.Config{URL: "unix://" + b.SocketPath(), Scenario: bench.FanOut, Subscribers: 3, QoS: 1,
		Messages: 2000, Raw: true, Size: 64, TopicPrefix: "raw", ReceiveMaximum: 10})
	checkComplete(t, res)
	if !res.Raw || res.Size != 64 {
		t.Fatalf("%+v", res)
	}
}

// Messages that break the contract are refused with a reason code in MQTT 5
// and never delivered: the run reports them refused and lost, and stalls
// on nothing.
func TestRefused(t *testing.T) {
	b := startBroker(t)
	res := run(t, bench.Config{URL: "unix://" + b.SocketPath(), QoS: 1, Publishers: 1, Messages: 20, Raw: true,
		Drain: 300 * time.Millisecond})
	if res.Refused != 20 || res.Delivered != 0 || res.Lost != 20 || !res.Stalled {
		t.Fatalf("%+v", res)
	}
	if res.Failed() == "" {
		t.Fatal("a run that lost everything did not fail")
	}
}

func TestErrors(t *testing.T) {
	b := startBroker(t)
	for _, tc := range []struct {
		cfg  bench.Config
		want string
	}{
		{bench.Config{URL: "unix:///nonexistent/mq.sock"}, "client bench-"},
		{bench.Config{URL: "unix://" + b.SocketPath(), Scenario: "ring"}, `scenario "ring"`},
		{bench.Config{URL: "unix://" + b.SocketPath(), Size: 40}, "too small"},
		{bench.Config{URL: "unix://" + b.SocketPath(), QoS: 2}, "QoS 2"},
		{bench.Config{URL: "unix://" + b.SocketPath(), ClientPrefix: "a b"}, "prefixes"},
		{bench.Config{URL: "ftp://x"}, "not supported"},
	} {
		_, err := bench.Run(context.Background(), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one containing %q", tc.cfg, err, tc.want)
		}
	}
}

// A refused CONNACK names the client and the reason.
func TestConnackRefused(t *testing.T) {
	b := brokertest.Run(t, func(c *broker.Config) {
		c.Limits.PublishRate = 0
		c.Limits.MaxClients = 2
	})
	_, err := bench.Run(context.Background(), bench.Config{URL: "unix://" + b.SocketPath(), Publishers: 4, Messages: 10})
	if err == nil || !strings.Contains(err.Error(), "refused the connection") || !strings.Contains(err.Error(), "client bench-") {
		t.Fatalf("error %v", err)
	}
}
