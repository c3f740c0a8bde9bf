package health_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/envelope"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
)

// BenchmarkRecordHealthOverTheWire is one health update end to end, as a
// service sends it: a retained QoS 1 health.status envelope (a Python
// service's, from envelope/testdata/python) on system/health/{source} over
// the Unix socket, and the wait for its PUBACK. Before the PUBACK the broker
// checks the contract, stores the record and its history entry (health
// hook) and the retained message (persist hook), both fsynced when
// store.sync is on. ns/op is per acknowledged health message.
func BenchmarkRecordHealthOverTheWire(b *testing.B) {
	payload, err := os.ReadFile("../../envelope/testdata/python/health_error.json")
	if err != nil {
		b.Fatal(err)
	}
	const source = "tts-worker" // the fixture's source: the client id must match it
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("sync=%v", sync), func(b *testing.B) {
			br := brokertest.Run(b, func(c *broker.Config) {
				c.Limits.PublishRate = 0 // measure the recording, not the rate limit
				c.Store.Sync = sync
			})
			svc := mqtttest.Dial(b, "unix", br.SocketPath(), mqtttest.V5)
			svc.Connect(source, nil)
			topic := envelope.HealthTopic(source)
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				if ack := svc.Publish(topic, payload, 1, true); ack.ReasonCode >= 0x80 {
					b.Fatalf("PUBACK %#x: %s", ack.ReasonCode, ack.Properties.ReasonString)
				}
			}
			b.StopTimer()
			if n := br.Health().WriteErrors(); n > 0 {
				b.Fatalf("%d health writes failed", n)
			}
			if h, err := br.Store().History(source, 1); err != nil || len(h) != 1 {
				b.Fatalf("nothing recorded: %v", err)
			}
		})
	}
}
