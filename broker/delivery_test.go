package broker_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/internal/bench"
	"github.com/tarsmq/tarsmq/internal/brokertest"
)

// deliveryRuns is how many times each scenario runs back to back;
// TARSMQ_STRESS_RUNS raises it.
func deliveryRuns() int {
	if n, err := strconv.Atoi(os.Getenv("TARSMQ_STRESS_RUNS")); err == nil && n > 0 {
		return n
	}
	return 5
}

// The load generator's scenarios against the in-process broker with its
// shipped flow control: at QoS 1 every message reaches every subscriber
// exactly once, fan-in and fan-out, with and without a small Receive
// Maximum, run after run; at QoS 0 a subscriber that keeps up gets all of a
// fan-in. Counts, not times: nothing here is timed.
func TestDeliveryExactlyOnce(t *testing.T) {
	b := brokertest.Run(t, func(c *broker.Config) { c.Limits.PublishRate = 0 })
	cases := []struct {
		name string
		cfg  bench.Config
	}{
		{"fanin-qos1-tcp", bench.Config{URL: "tcp://" + b.Addr().String(), Scenario: bench.FanIn, Publishers: 4, QoS: 1, Messages: 2000}},
		{"fanin-qos1-unix-v311", bench.Config{URL: "unix://" + b.SocketPath(), Version: 4, Scenario: bench.FanIn, Publishers: 4, QoS: 1, Messages: 2000}},
		{"fanout-qos1-tcp", bench.Config{URL: "tcp://" + b.Addr().String(), Scenario: bench.FanOut, Subscribers: 4, QoS: 1, Messages: 4000}},
		{"fanout-qos1-receive-maximum-10", bench.Config{URL: "unix://" + b.SocketPath(), Scenario: bench.FanOut, Subscribers: 4, QoS: 1, Messages: 4000, ReceiveMaximum: 10}},
		{"many-qos1", bench.Config{URL: "unix://" + b.SocketPath(), Scenario: bench.Many, Publishers: 4, Subscribers: 4, QoS: 1, Messages: 1000}},
		// A steady rate the subscriber keeps up with: QoS 0 loses nothing.
		{"fanin-qos0-steady", bench.Config{URL: "unix://" + b.SocketPath(), Scenario: bench.FanIn, Publishers: 4, QoS: 0, Rate: 4000, Messages: 1000}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for run := range deliveryRuns() {
				cfg := tc.cfg
				cfg.Drain = 10 * time.Second
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				res, err := bench.Run(ctx, cfg)
				cancel()
				if err != nil {
					t.Fatalf("run %d: %v", run, err)
				}
				if res.Stalled || res.Lost != 0 || res.Duplicates != 0 || res.Delivered != res.Expected || res.Expected == 0 {
					t.Fatalf("run %d: %s", run, summary(res))
				}
			}
		})
	}
}

func summary(r bench.Result) string {
	return fmt.Sprintf("sent %d, expected %d, delivered %d, lost %d, duplicates %d, refused %d, stalled %v",
		r.Sent, r.Expected, r.Delivered, r.Lost, r.Duplicates, r.Refused, r.Stalled)
}
